"""The engine: a loaded model (Engine) and conversations with it (Chat).

Chat.send returns a Turn that yields ThinkingText / AnswerText pieces as they
stream and one TurnStats at the end; ``turn.stop()`` ends it from any thread.
It knows nothing of terminals. Every reply runs as sequence 0 of the engine's Decoder
(decoder.py), the one decode loop that serve's slots share too.

How the context is reused between turns
---------------------------------------
A hybrid Mamba/attention model's recurrent state cannot be rolled back to an
earlier token, so any prompt that differs from what was already evaluated
(even one token early in it) means evaluating everything again. The chat
template re-renders earlier assistant turns as ``<think></think>{answer}``,
dropping the reasoning that IS in the context, so a prompt rebuilt from the
template each turn would diverge at the first reply and cost a full
re-evaluation every turn.

So the tokens actually in the context are the source of truth: turn N's
prompt is those tokens plus only the text the template adds for the new turn
(the end of the previous assistant turn, the user message, the generation
prompt), found as the template's own rendering after the previous answer.
The trade-off: the context keeps earlier reasoning (more tokens used, and the
model sees its old thinking, which the template would hide). ``Chat(...,
reuse_prefix=False)`` chooses the template's exact form instead and pays the
re-evaluation. If the reused context would overflow while the template's form
fits, the template's form is used for that turn. Where the context cannot be cut back, a
checkpoint taken where an earlier prompt ended (state_cache.py) can still spare the reading.

Tool calls
----------
With ``GenerationOptions.tools`` the template lists the tools, and a reply stops
right after a complete ``<tool_call>...</tool_call>`` block (stop_reason
"tool_call"; the block's text streams as ToolCallText). The caller runs the calls
and continues the same reply with ``send_tool_results``: only the template's glue
(end of turn, the ``tool`` messages, the generation prompt) is evaluated after the
call. A thought still open when the model starts a call is closed just before it
(``\n</think>\n`` then ``<tool_call>``): the form the template renders an assistant
turn with a tool call in, the form the model was trained on. Under a grammar the
grammar decides and nothing is inserted.
"""

from __future__ import annotations

import collections
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from localcascade.engine import loader
from localcascade.engine.decoder import Decoder
from localcascade.engine.events import Event, TurnStats
from localcascade.engine.replies import common_prefix as _common_prefix
from localcascade.engine.sampling import Sampler
from localcascade.engine.options import check as check_options
from localcascade.engine.state_cache import StateCache
from localcascade.engine.template import ChatTemplate
from localcascade.engine.tool_calls import parse_tool_calls
from localcascade.engine.turn import Turn
from localcascade.engine.vocab import Vocab
from localcascade.errors import (ContextOverflowError, EngineError, NoChatTemplateError, NoToolCallTokensError,
                                 UsageError)
from localcascade.planning.plan import Plan

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
# Stands in for the previous answer when rendering a turn, to find where the new turn's text starts.
_SENTINEL = "\u2063LOCALCASCADE-PREVIOUS-ANSWER\u2063"
# A prompt is tokenized up to this many times the context it must fit: counts stay exact for a
# near miss, and a huge one is refused after work bounded by the context, not by its length.
PROMPT_TOKENIZE_FACTOR = 4


@dataclass
class GenerationOptions:
    think: bool = True                 # template enable_thinking
    think_budget: int | None = None    # max thinking tokens, then </think> is forced and the answer follows
    temperature: float | None = None   # None = model-card default for the mode (profiles/sampling.json)
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None      # thinking + answer
    seed: int | None = None
    min_p: float | None = None
    grammar: str | None = None         # GBNF constraining the whole reply (thinking included)
    tools: list[dict] | None = None    # tool schemas for the template; the reply stops after each call

    def __post_init__(self) -> None:
        # Every front end builds one of these (and dataclasses.replace builds anew): the one check
        # of the limits, engine/options.py; each front end words its OptionError.
        check_options(self)


class Engine:
    """A model loaded with a Plan: tokens in, logits out, and the evaluated context."""

    def __init__(self, loaded: loader.LoadedModel, plan: Plan, template: ChatTemplate | None,
                 state_cache: StateCache | None = None) -> None:
        self._loaded = loaded
        self.plan = plan
        self.model_path = loaded.path
        self.n_ctx = loaded.n_ctx             # all sequences together
        self.n_seq = max(1, plan.n_seq)       # sequences the context was made for (server --parallel)
        self.n_ctx_seq = loaded.n_ctx_seq     # what one sequence (conversation) can hold
        self.n_ctx_train = loader.n_ctx_train(loaded.model)   # {arch}.context_length; 0 if unknown
        self.vocab = Vocab(loaded.model, loaded.vocab)
        self.template = template
        self.model_name = loader.metadata(loaded.model, "general.name") or loaded.path.stem
        self.load_log = loaded.load_log
        self.think_open = self.vocab.special_id(THINK_OPEN)
        self.think_close = self.vocab.special_id(THINK_CLOSE)
        self.tool_call_open = self.vocab.special_id(TOOL_CALL_OPEN)
        self.tool_call_close = self.vocab.special_id(TOOL_CALL_CLOSE)
        self.vocab.guard_in_text((THINK_OPEN, THINK_CLOSE, TOOL_CALL_OPEN, TOOL_CALL_CLOSE))
        self.state_cache = state_cache        # checkpoints of prompts read (state_cache.py), or None
        self.draft_tokens = loader.draft_depth(loaded, plan)   # drafts a step verifies; 0: none
        self.decoder = Decoder(self)          # every reply on this context; sequence 0 is a chat's

    @classmethod
    def load(
        cls,
        model_path: str | Path,
        plan: Plan,
        *,
        progress: Callable[[float], None] | None = None,
        chat_template: str | None = None,
        verbose: bool = False,
        for_chat: bool = True,
        grammar: str | None = None,
        threads: int | None = None,
        for_tools: bool = False,
    ) -> "Engine":
        """Load ``model_path`` with ``plan``, the planner's (``localcascade.resolve.plans.plan_for_file``).

        ``chat_template`` (Jinja text) replaces the model's own template. ``threads`` sets
        llama.cpp's threads for generation and prompts alike (default: physical cores to
        generate, all cores for prompts). With ``for_chat`` a model without a template, a
        ``grammar`` (GBNF) that does not parse, and with ``for_tools`` a model whose vocabulary has
        no tool-call tokens, are refused before the weights are read: a load can take minutes.
        """
        model_path = Path(model_path)
        if not model_path.is_file():
            from localcascade.errors import ModelNotFoundError

            raise ModelNotFoundError(f"model file not found: {model_path}")
        from localcascade.model.gguf_header import read_header

        metadata = read_header(model_path).metadata
        if metadata.get("tokenizer.ggml.model") == "none":
            # llama.cpp loads such a file, then aborts the process (GGML_ASSERT) at the first
            # tokenization: every command tokenizes, even bench (the special-token ids).
            raise EngineError(f"{model_path.name} has no tokenizer (tokenizer.ggml.model is \"none\"): "
                              "it cannot read or write text; use a GGUF converted with its vocabulary")
        if for_chat and chat_template is None and not metadata.get("tokenizer.chat_template"):
            raise NoChatTemplateError(model_path.name)
        if grammar or for_tools:
            from localcascade.engine.sampling import check_grammar

            with loader.vocab_only(model_path) as vocab:
                if grammar:
                    check_grammar(vocab, grammar)
                if for_tools:
                    _require_tool_call_tokens(Vocab(None, vocab), model_path.name)
        cache = _state_cache(model_path, plan, verbose)   # its settings are checked before a long load
        loaded = loader.load(model_path, plan, progress=progress, verbose=verbose,
                             n_threads=threads, n_threads_batch=threads)
        try:
            template = loader.chat_template_of(loaded, chat_template)
        except Exception:
            loaded.close()
            raise
        if cache is not None and not _restores_exactly(loaded, plan):
            cache.note("state cache off: sliding-window attention with flash attention does not restore "
                       "exactly in this llama.cpp build (load with flash attention off to keep prompt states)")
            cache = None
        return cls(loaded, plan, template, cache)

    # -- public helpers -------------------------------------------------------------------------

    @property
    def context(self) -> int:
        """The llama.cpp context (``llama_context *``)."""
        return self._ctx

    @property
    def n_batch(self) -> int:
        """The most tokens one llama_decode call takes."""
        return self._loaded.n_batch

    def count_tokens(self, text: str) -> int:
        return len(self.vocab.tokenize_bounded(text, special=True))

    def close(self) -> None:
        self.decoder.close()
        self.decoder.reset()
        self._loaded.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the context ----------------------------------------------------------------------------

    @property
    def tokens(self) -> list[int]:
        """What a chat's sequence (0) holds, in order."""
        return self.decoder.sequences[0].tokens

    @property
    def owner(self) -> object | None:
        """The Chat whose conversation sequence 0 holds."""
        return self.decoder.sequences[0].owner

    @property
    def full_reevaluations(self) -> int:
        """Times a non-empty sequence had to be thrown away and its prompt evaluated again."""
        return self.decoder.full_reevaluations

    @property
    def has_context(self) -> bool:
        return bool(self._loaded.ctx)

    def reset(self) -> None:
        """Forget the context entirely."""
        self.decoder.reset()

    def decode(self, tokens: list[int]) -> None:
        """Evaluate ``tokens`` after what sequence 0 holds (no sampling; logits of the last one kept)."""
        self.decoder.evaluate(0, tokens)

    @property
    def _ctx(self) -> int:
        if not self._loaded.ctx:
            raise EngineError("the engine is closed")
        return self._loaded.ctx

    def tokenize_prompt(self, text: str, context: int | None = None) -> list[int]:
        """Tokens of a chat prompt rendered with ``mark_content`` (markup special, content as text),
        with BOS when the model wants one and the template left it out.

        With ``context`` (what the prompt must fit), a prompt many times longer is refused
        (ContextOverflowError) once that is known, not after tokenizing all of it: 8 MiB of text
        can be millions of tokens and seconds of work for a context that takes thousands.
        """
        limit = None if context is None else PROMPT_TOKENIZE_FACTOR * context
        tokens = self.vocab.tokenize_marked(text, stop_after=limit)
        if limit is not None and len(tokens) > limit:
            raise ContextOverflowError(prompt_tokens=limit, context_tokens=context, at_least=True)
        if self.vocab.add_bos and self.vocab.bos >= 0 and (not tokens or tokens[0] != self.vocab.bos):
            tokens.insert(0, self.vocab.bos)
        return tokens


def _state_cache(model_path: Path, plan: Plan, verbose: bool) -> StateCache | None:
    """The prompt-state cache for this model and plan (settings: LOCALCASCADE_STATE_*), or None when
    both budgets are 0. Its problems are one line each on stderr under --verbose."""
    from localcascade import settings
    from localcascade.engine import state_cache

    ram, disk = settings.state_ram(), settings.state_cache_size()
    if not ram and not disk:
        return None

    def note(text: str) -> None:
        if verbose:
            print(f"localcascade: {text}", file=sys.stderr, flush=True)

    try:
        key = state_cache.identity(model_path, plan)
    except OSError as err:
        note(f"state cache off: cannot read {model_path}: {err.strerror or err}")
        return None
    return StateCache(key, folder=settings.state_cache_dir() if disk else None, disk_budget=disk,
                      ram_budget=ram, note=note)


def _restores_exactly(loaded: loader.LoadedModel, plan: Plan) -> bool:
    """Whether a sequence's saved state gives back the logits of an uninterrupted run. Measured
    (tests/test_state_cache.py): exact for the hybrid Mamba/attention model and for attention
    without a sliding window; with a sliding window (Gemma 3) exact without flash attention only."""
    import llama_cpp

    return not (plan.flash_attn and llama_cpp.llama_model_n_swa(loaded.model) > 0)


def _require_tool_call_tokens(vocab: Vocab, name: str) -> None:
    """Tool calls are found by their marker tokens; without them a reply could never call a tool,
    and ``--tools python`` would be silently ignored."""
    missing = [text for text in (TOOL_CALL_OPEN, TOOL_CALL_CLOSE) if vocab.special_id(text) is None]
    if missing:
        raise NoToolCallTokensError(name, tuple(missing))


class Chat:
    """One conversation with an Engine. ``messages`` keeps the answers only (the template's form)."""

    def __init__(self, engine: Engine, *, system: str | None = None, reuse_prefix: bool = True) -> None:
        if engine.template is None:
            raise NoChatTemplateError(engine.model_path.name)
        self.engine = engine
        self.reuse_prefix = reuse_prefix
        self.messages: list[dict] = []
        self.last_reasoning: str | None = None
        self._ended_in_thinking = False   # the last reply stopped before </think>
        self._context_in_sync = False     # engine.tokens hold exactly this conversation
        self._context_tools: list[dict] | None = None   # the tools the context's system turn lists
        self._reply_sampler: Sampler | None = None      # a reply paused at a tool call goes on with it
        self._saved_context: list[int] | None = None    # the context's tokens a loaded conversation was saved with
        self.set_system(system)

    # -- conversation state -----------------------------------------------------------------------

    def set_system(self, text: str | None) -> None:
        rest = [m for m in self.messages if m["role"] != "system"]
        self.messages = ([{"role": "system", "content": text}] if text else []) + rest
        self._context_in_sync = False
        self._saved_context = None

    def clear(self) -> None:
        """A new conversation (same system prompt, same model)."""
        self._end_reply()
        self.messages = [m for m in self.messages if m["role"] == "system"]
        self.last_reasoning = None
        self._ended_in_thinking = False
        self._context_in_sync = False
        self._saved_context = None

    def to_dict(self) -> dict:
        """The conversation to save. With it go the context's tokens (the reasoning the template would
        drop included), and the context's state is kept in the state cache: a chat ``from_dict`` makes,
        in this process or another, continues from there without reading the conversation again."""
        data = {"format": "localcascade-chat", "version": 1, "model": self.engine.model_name,
                "messages": [dict(m) for m in self.messages]}
        if self._owns_context() and self.engine.tokens and self._context_tools is None:
            data["context"] = {"tokens": list(self.engine.tokens), "ended_in_thinking": self._ended_in_thinking}
            self.engine.decoder.keep(0)
        return data

    @classmethod
    def from_dict(cls, engine: Engine, data: dict) -> "Chat":
        messages = data.get("messages") if isinstance(data, dict) else None
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant", "tool")
            and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise UsageError("not a saved conversation: expected {\"messages\": [{\"role\", \"content\"}, ...]}")
        chat = cls(engine)
        chat.messages = [
            {"role": m["role"], "content": m["content"],
             **({"tool_calls": m["tool_calls"]} if isinstance(m.get("tool_calls"), list) else {})}
            for m in messages
        ]
        context = data.get("context")
        if isinstance(context, dict) and chat.messages and chat.messages[-1]["role"] == "assistant":
            tokens = context.get("tokens")
            n_vocab = engine.vocab.n_tokens
            # Only ever a hint: tokens llama.cpp could not take (it aborts on an id outside the
            # vocabulary) or that cannot fit are ignored, and the messages are rendered as usual.
            if (isinstance(tokens, list) and 0 < len(tokens) < engine.n_ctx_seq
                    and all(type(t) is int and 0 <= t < n_vocab for t in tokens)):
                chat._saved_context = tokens
                chat._ended_in_thinking = context.get("ended_in_thinking") is True
        return chat

    @property
    def context_limit(self) -> int:
        return self.engine.n_ctx

    @property
    def context_used(self) -> int:
        if self._owns_context():
            return len(self.engine.tokens)
        return 0

    def _owns_context(self) -> bool:
        return self.engine.owner is self and self._context_in_sync

    # -- a turn -----------------------------------------------------------------------------------

    def send(self, user_text: str, options: GenerationOptions | None = None, *, document: str | None = None) -> Turn:
        """Start a reply to ``user_text``; iterate the Turn for its events, ``stop()`` it from anywhere.

        ``document``: the start of ``user_text`` that later prompts will share (ask's piped stdin):
        the state at its end is kept, so another question about it evaluates only the question.
        Raises ContextOverflowError here (before anything is evaluated) if the
        prompt does not fit the context.
        """
        options = options or GenerationOptions()
        self._end_reply()
        user = {"role": "user", "content": user_text}
        prompt = None
        context = self.engine.tokens if self._owns_context() else self._saved_context
        if (self.reuse_prefix and context and self.messages and self.messages[-1]["role"] == "assistant"
                and self._context_tools == options.tools):
            prompt = self._extend_context_prompt(user, options, context)
        prompt = self._fitting(prompt, self.messages + [user], options)
        keep_at = self._document_end(self.messages + [user], document, options, prompt)
        return Turn(lambda turn: self._turn(prompt, [user], options, turn, keep_at=keep_at))

    def _document_end(self, messages: list[dict], document: str | None, options: GenerationOptions,
                      prompt: list[int]) -> tuple[int, ...]:
        """The prompt position where ``document``, the start of the last message, ends (as a tuple of
        one), or () when it cannot be placed."""
        if not document or not messages[-1]["content"].startswith(document):
            return ()
        probe = messages[:-1] + [{**messages[-1], "content": document + _SENTINEL}]
        text = self._render(probe, options)
        if text.count(_SENTINEL) != 1:
            return ()
        end = _common_prefix(self.engine.tokenize_prompt(text.split(_SENTINEL, 1)[0]), prompt)
        return (end,) if 0 < end < len(prompt) else ()

    def send_tool_results(self, results: list[str], options: GenerationOptions | None = None) -> Turn:
        """Continue the reply that stopped at a tool call (stop_reason "tool_call") with the calls' results.

        ``results`` are the ``tool`` messages' contents, one per call of the last assistant
        message, in order. The reply's sampler (its grammar state) goes on; the events are
        those of ``send``.
        """
        options = options or GenerationOptions()
        last = self.messages[-1] if self.messages else {}
        if last.get("role") != "assistant" or "tool_calls" not in last or self._reply_sampler is None:
            raise UsageError("there is no tool call waiting for its result")
        tool_messages = [{"role": "tool", "content": text} for text in results]
        prompt = None
        if self.reuse_prefix and self._owns_context() and self._context_tools == options.tools:
            prompt = self._tool_results_prompt(tool_messages, options)
        prompt = self._fitting(prompt, self.messages + tool_messages, options)
        sampler, self._reply_sampler = self._reply_sampler, None
        return Turn(lambda turn: self._turn(prompt, tool_messages, options, turn, sampler))

    def _fitting(self, prompt: list[int] | None, messages: list[dict], options: GenerationOptions) -> list[int]:
        """``prompt`` (the reused context) if it fits, else the template's rendering of ``messages``."""
        if prompt is None or len(prompt) >= self.engine.n_ctx:
            canonical = self._template_prompt(messages, options)
            if prompt is None or len(canonical) < self.engine.n_ctx:
                prompt = canonical
                self._context_tools = options.tools   # its system turn lists these
        if len(prompt) >= self.engine.n_ctx:
            raise ContextOverflowError(prompt_tokens=len(prompt), context_tokens=self.engine.n_ctx)
        return prompt

    def _render(self, messages: list[dict], options: GenerationOptions, *, add_generation_prompt: bool = True) -> str:
        return self.engine.template.render(messages, add_generation_prompt=add_generation_prompt,
                                           enable_thinking=options.think, tools=options.tools, mark_content=True)

    def _template_prompt(self, messages: list[dict], options: GenerationOptions) -> list[int]:
        return self.engine.tokenize_prompt(self._render(messages, options), self.engine.n_ctx)

    def _tool_results_prompt(self, tool_messages: list[dict], options: GenerationOptions) -> list[int] | None:
        """The context's tokens (ending with </tool_call>) plus the template's text after the call, or None."""
        before = self._render(self.messages, options, add_generation_prompt=False)
        after = self._render(self.messages + tool_messages, options)
        cut = before.rfind(TOOL_CALL_CLOSE)
        if cut < 0 or not after.startswith(before):
            return None   # the template renders the call differently once results follow: use its full form
        glue = before[cut + len(TOOL_CALL_CLOSE):] + after[len(before):]
        return self.engine.tokens + self.engine.vocab.tokenize_marked(glue)

    def _end_reply(self) -> None:
        """Forget a reply paused at a tool call that will not be continued."""
        if self._reply_sampler is not None:
            self._reply_sampler.close()
            self._reply_sampler = None

    def _extend_context_prompt(self, user: dict, options: GenerationOptions, context: list[int]) -> list[int] | None:
        """The ``context`` tokens plus what the template adds after the previous answer, or None."""
        history = self.messages[:-1] + [{"role": "assistant", "content": _SENTINEL}, user]
        text = self._render(history, options)
        if text.count(_SENTINEL) != 1:
            return None   # the template transformed the answer; fall back to its full rendering
        tail = text.split(_SENTINEL, 1)[1]
        extra = []
        if self._ended_in_thinking and self.engine.think_close is not None:
            extra.append(self.engine.think_close)   # an interrupted thought is closed before the turn ends
        return context + extra + self.engine.vocab.tokenize_marked(tail)

    def _turn(self, prompt: list[int], new_messages: list[dict], options: GenerationOptions, turn: Turn,
              sampler: Sampler | None = None, keep_at: tuple[int, ...] = ()) -> Iterator[Event]:
        """One reply on sequence 0 of the engine's decoder, its events yielded as they come."""
        engine = self.engine
        decoder = engine.decoder
        events: collections.deque[Event] = collections.deque()
        calling = bool(options.tools) and engine.tool_call_open is not None and engine.tool_call_close is not None
        self._context_in_sync = False
        self._saved_context = None
        try:
            reply = decoder.start(0, prompt, options, events.append, answer_sampler=sampler,
                                  stopped=lambda: turn.stopped, owner=self, grammar_spans_thinking=True,
                                  calls="stream" if calling else "none", keep_at=keep_at)
        except BaseException:
            if sampler is not None:
                sampler.close()
            raise
        try:
            while not reply.done and reply.first_logits is None:   # the prompt, chunk by chunk
                decoder.step()
        except BaseException:
            decoder.end(reply)
            raise
        prompt_complete = reply.first_logits is not None   # False when a stop came between prompt chunks
        self.messages.extend(new_messages)
        stats = None
        try:
            while True:
                while events:
                    event = events.popleft()
                    if isinstance(event, TurnStats):
                        stats = event
                        if reply.error is not None:
                            raise EngineError(reply.error)
                    else:
                        yield event
                if reply.done:
                    break
                decoder.step()
        finally:
            decoder.end(reply)   # an abandoned iteration: the context keeps what was shown
            message = {"role": "assistant", "content": reply.answer.text}
            if reply.stop_reason == "tool_call":
                self._reply_sampler = reply.sampler   # send_tool_results goes on with it (grammar state)
                _, calls = parse_tool_calls(f"{TOOL_CALL_OPEN}{reply.call.text}{TOOL_CALL_CLOSE}")
                message["tool_calls"] = [{"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                                         for c in calls]
                if reply.thinking.text:
                    message["reasoning_content"] = reply.thinking.text
            self.messages.append(message)
            self.last_reasoning = reply.thinking.text or None
            self._ended_in_thinking = reply.in_thinking
            self._context_in_sync = engine.owner is self and prompt_complete
        yield stats
