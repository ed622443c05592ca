"""The engine: a loaded model (Engine) and conversations with it (Chat).

Chat.send returns a Turn that yields ThinkingText / AnswerText pieces as they
stream and one TurnStats at the end; ``turn.stop()`` ends it from any thread.
It knows nothing of terminals.

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
fits, the template's form is used for that turn.

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

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from localcascade.engine import loader
from localcascade.engine.events import AnswerText, Event, ThinkingText, ToolCallText, TurnStats
from localcascade.engine.sampling import Sampler, sampling_profile
from localcascade.engine.template import ChatTemplate
from localcascade.engine.replies import Channel as _Channel
from localcascade.engine.replies import common_prefix as _common_prefix
from localcascade.engine.replies import opens_thinking as _opens_thinking
from localcascade.engine.tool_calls import parse_tool_calls
from localcascade.engine.turn import Turn
from localcascade.engine.vocab import Vocab
from localcascade.errors import ChatTemplateError, ContextOverflowError, EngineError, UsageError
from localcascade.planning.plan import Plan

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
# What closes an open thought before a tool call: the template's "<think>\nR\n</think>\n<tool_call>".
_THINK_CLOSE_BEFORE_CALL = "\n</think>\n"
# Stands in for the previous answer when rendering a turn, to find where the new turn's text starts.
_NO_TEMPLATE = "{name} has no chat template; give one with --chat-template FILE"
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


class Engine:
    """A model loaded with a Plan: tokens in, logits out, and the evaluated context."""

    def __init__(self, loaded: loader.LoadedModel, plan: Plan, template: ChatTemplate | None) -> None:
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
        self.tokens: list[int] = []           # what the context holds, in order
        self.owner: object | None = None      # the Chat whose conversation the context holds
        self.full_reevaluations = 0           # times a non-empty context had to be thrown away
        self._lost_reason: str | None = None  # why the context was thrown away outside prepare()

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
            raise ChatTemplateError(_NO_TEMPLATE.format(name=model_path.name))
        if grammar or for_tools:
            from localcascade.engine.sampling import check_grammar

            with loader.vocab_only(model_path) as vocab:
                if grammar:
                    check_grammar(vocab, grammar)
                if for_tools:
                    _require_tool_call_tokens(Vocab(None, vocab), model_path.name)
        loaded = loader.load(model_path, plan, progress=progress, verbose=verbose,
                             n_threads=threads, n_threads_batch=threads)
        try:
            template = loader.chat_template_of(loaded, chat_template)
        except Exception:
            loaded.close()
            raise
        return cls(loaded, plan, template)

    # -- public helpers -------------------------------------------------------------------------

    @property
    def context(self) -> int:
        """The llama.cpp context (``llama_context *``) for code that decodes itself (batch.py)."""
        return self._ctx

    @property
    def n_batch(self) -> int:
        """The most tokens one llama_decode call takes."""
        return self._loaded.n_batch

    def count_tokens(self, text: str) -> int:
        return len(self.vocab.tokenize_bounded(text, special=True))

    def close(self) -> None:
        self._loaded.close()
        self.tokens = []
        self.owner = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the context ----------------------------------------------------------------------------

    def prepare(self, prompt: list[int], should_stop: Callable[[], bool] | None = None) -> tuple[int, str | None]:
        """Make the context hold ``prompt``, evaluating as little as possible.

        Returns (tokens evaluated, why the cached context was thrown away or None).
        ``should_stop`` is asked between chunks: a long prompt can take minutes on a CPU, and a
        stop then leaves the context holding the part evaluated so far (``self.tokens``).
        Keeps the common prefix when llama.cpp can cut the context back to it (pure
        attention KV caches can; recurrent state mostly cannot, then everything is
        evaluated again).
        """
        import llama_cpp

        if not prompt:
            # Nothing to evaluate means no logits: llama.cpp's sampler would abort the process.
            raise ChatTemplateError("the chat template rendered an empty prompt for this conversation")
        ctx = self._ctx
        if self._held() != len(self.tokens):
            self._resync(self.tokens)   # an interrupt between cutting the state and our bookkeeping
        reason = self._lost_reason
        self._lost_reason = None
        common = _common_prefix(self.tokens, prompt)
        if common == len(prompt):
            common -= 1   # the last prompt token must be evaluated again to get its logits
        if common < len(self.tokens):
            memory = llama_cpp.llama_get_memory(ctx)
            if common > 0 and llama_cpp.llama_memory_seq_rm(memory, 0, common, -1):
                del self.tokens[common:]
            else:
                llama_cpp.llama_memory_clear(memory, True)
                if self.tokens:
                    self.full_reevaluations += 1
                    reason = (
                        f"the prompt differs from the cached context at token {common} of "
                        f"{len(self.tokens)} and the model's state cannot be cut back there"
                    )
                self.tokens = []
                common = 0
        self.decode(prompt[common:], should_stop)
        return len(self.tokens) - common, reason

    def decode(self, tokens: list[int], should_stop: Callable[[], bool] | None = None) -> None:
        """Evaluate ``tokens`` after the context (in n_batch chunks); logits of the last one are kept.

        With ``should_stop``, evaluation ends early at a chunk boundary once it answers True.
        """
        import llama_cpp

        step = self._loaded.n_batch
        for start in range(0, len(tokens), step):
            if should_stop is not None and should_stop():
                return
            chunk = tokens[start:start + step]
            base = len(self.tokens)
            try:
                array = (llama_cpp.llama_token * len(chunk))(*chunk)
                rc = llama_cpp.llama_decode(self._ctx, llama_cpp.llama_batch_get_one(array, len(chunk)))
                if rc != 0:
                    self.reset()
                    raise EngineError(f"llama.cpp failed to evaluate the prompt (llama_decode returned {rc})")
                self.tokens.extend(chunk)
            except EngineError:
                raise
            except BaseException:
                # Python raises a pending KeyboardInterrupt as soon as the C call returns, so
                # llama.cpp may hold the chunk while self.tokens does not yet: ask it what it holds.
                self._resync(self.tokens[:base] + chunk)
                raise

    def _resync(self, candidate: list[int]) -> None:
        """Make ``self.tokens`` what the context really holds, a prefix of ``candidate``.

        If the state holds more than that (it cannot be named), the context is cleared and
        the next prepare() evaluates its prompt from scratch and says why.
        """
        held = self._held()
        if 0 <= held <= len(candidate):
            self.tokens = list(candidate[:held])
            return
        lost = len(self.tokens)
        self.reset()   # also drops the owner: no conversation's tokens are in the context now
        if lost:
            self.full_reevaluations += 1
            self._lost_reason = "an interrupted evaluation left the context in an unknown state"

    def _held(self) -> int:
        """How many tokens the context's state really holds (sequence 0)."""
        import llama_cpp

        return llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(self._ctx), 0) + 1

    def reset(self) -> None:
        """Forget the context entirely."""
        import llama_cpp

        if self._loaded.ctx:
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._loaded.ctx), True)
        self.tokens = []
        self.owner = None

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
            raise ContextOverflowError(
                f"the prompt is more than {limit:,} tokens but the context holds {context:,} "
                f"(and the reply needs room too): shorten the input"
            )
        if self.vocab.add_bos and self.vocab.bos >= 0 and (not tokens or tokens[0] != self.vocab.bos):
            tokens.insert(0, self.vocab.bos)
        return tokens


def _require_tool_call_tokens(vocab: Vocab, name: str) -> None:
    """Tool calls are found by their marker tokens; without them a reply could never call a tool,
    and ``--tools python`` would be silently ignored."""
    missing = [text for text in (TOOL_CALL_OPEN, TOOL_CALL_CLOSE) if vocab.special_id(text) is None]
    if missing:
        raise UsageError(f"{name} has no {' or '.join(missing)} token, so it cannot call tools: "
                         "--tools python needs a model trained for tool calls")


class Chat:
    """One conversation with an Engine. ``messages`` keeps the answers only (the template's form)."""

    def __init__(self, engine: Engine, *, system: str | None = None, reuse_prefix: bool = True) -> None:
        if engine.template is None:
            raise ChatTemplateError(_NO_TEMPLATE.format(name=engine.model_path.name))
        self.engine = engine
        self.reuse_prefix = reuse_prefix
        self.messages: list[dict] = []
        self.last_reasoning: str | None = None
        self._ended_in_thinking = False   # the last reply stopped before </think>
        self._context_in_sync = False     # engine.tokens hold exactly this conversation
        self._context_tools: list[dict] | None = None   # the tools the context's system turn lists
        self._reply_sampler: Sampler | None = None      # a reply paused at a tool call goes on with it
        self.set_system(system)

    # -- conversation state -----------------------------------------------------------------------

    def set_system(self, text: str | None) -> None:
        rest = [m for m in self.messages if m["role"] != "system"]
        self.messages = ([{"role": "system", "content": text}] if text else []) + rest
        self._context_in_sync = False

    def clear(self) -> None:
        """A new conversation (same system prompt, same model)."""
        self._end_reply()
        self.messages = [m for m in self.messages if m["role"] == "system"]
        self.last_reasoning = None
        self._ended_in_thinking = False
        self._context_in_sync = False

    def to_dict(self) -> dict:
        return {"format": "localcascade-chat", "version": 1, "model": self.engine.model_name,
                "messages": [dict(m) for m in self.messages]}

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

    def send(self, user_text: str, options: GenerationOptions | None = None) -> Turn:
        """Start a reply to ``user_text``; iterate the Turn for its events, ``stop()`` it from anywhere.

        Raises ContextOverflowError here (before anything is evaluated) if the
        prompt does not fit the context.
        """
        options = options or GenerationOptions()
        if options.max_tokens is not None and options.max_tokens <= 0:
            raise UsageError(f"max tokens must be positive, got {options.max_tokens}")
        if options.think_budget is not None and options.think_budget < 0:
            raise UsageError(f"thinking budget must be >= 0, got {options.think_budget}")
        self._end_reply()
        user = {"role": "user", "content": user_text}
        prompt = None
        if (self.reuse_prefix and self._owns_context() and self.messages and self.messages[-1]["role"] == "assistant"
                and self._context_tools == options.tools):
            prompt = self._extend_context_prompt(user, options)
        prompt = self._fitting(prompt, self.messages + [user], options)
        return Turn(lambda turn: self._turn(prompt, [user], options, turn))

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
            raise ContextOverflowError(
                f"the prompt is {len(prompt)} tokens but the context holds {self.engine.n_ctx} "
                f"(and the reply needs room too): shorten the input or load with a larger --ctx"
            )
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

    def _extend_context_prompt(self, user: dict, options: GenerationOptions) -> list[int] | None:
        """The context's tokens plus what the template adds after the previous answer, or None."""
        history = self.messages[:-1] + [{"role": "assistant", "content": _SENTINEL}, user]
        text = self._render(history, options)
        if text.count(_SENTINEL) != 1:
            return None   # the template transformed the answer; fall back to its full rendering
        tail = text.split(_SENTINEL, 1)[1]
        extra = []
        if self._ended_in_thinking and self.engine.think_close is not None:
            extra.append(self.engine.think_close)   # an interrupted thought is closed before the turn ends
        return self.engine.tokens + extra + self.engine.vocab.tokenize_marked(tail)

    def _turn(self, prompt: list[int], new_messages: list[dict], options: GenerationOptions, turn: Turn,
              sampler: Sampler | None = None) -> Iterator[Event]:
        engine = self.engine
        vocab = engine.vocab
        sampler = sampler or Sampler(vocab.handle, options)
        self._context_in_sync = False
        engine.owner = self
        started = time.perf_counter()
        try:
            evaluated, reset_reason = engine.prepare(prompt, should_stop=lambda: turn.stopped)
        except BaseException:
            sampler.close()
            raise
        prompt_done = time.perf_counter()
        prompt_complete = engine.tokens == prompt   # False when a stop came between prompt chunks
        self.messages.extend(new_messages)
        stop_reason = "interrupted"
        thinking, answer, call = _Channel(ThinkingText), _Channel(AnswerText), _Channel(ToolCallText)
        channels = {True: thinking, False: answer}
        in_thinking = _opens_thinking(prompt, engine.think_open, engine.think_close)
        in_call = False
        calling = bool(options.tools) and engine.tool_call_open is not None and engine.tool_call_close is not None
        pending = None   # a sampled token handed out but not yet evaluated
        pending_at = 0   # len(engine.tokens) when it was sampled: more means it was evaluated after all
        try:
            close_ids = vocab.tokenize(sampling_profile()["think_close_text"], special=True)
            close_before_call = vocab.tokenize(_THINK_CLOSE_BEFORE_CALL, special=True)
            while not turn.stopped:
                if options.max_tokens is not None and thinking.tokens + answer.tokens + call.tokens >= options.max_tokens:
                    stop_reason = "length"
                    break
                if len(engine.tokens) >= engine.n_ctx:
                    stop_reason = "length"
                    break
                if (in_thinking and not in_call and options.think_budget is not None
                        and thinking.tokens >= options.think_budget):
                    # Budget spent: close the thought ourselves and let the model answer. A grammar
                    # may not allow the close yet; then the thought goes on until it does.
                    close = next((ids for ids in (close_ids, [engine.think_close]) if sampler.allows(ids)), None)
                    if close is not None:
                        if len(engine.tokens) + len(close) >= engine.n_ctx:
                            stop_reason = "length"
                            break
                        for token in close:
                            sampler.accept(token)
                        engine.decode(close)
                        in_thinking = False
                        continue
                token = sampler.sample(engine.context)
                if vocab.is_eog(token):
                    stop_reason = "stop"
                    break
                pending, pending_at = token, len(engine.tokens)
                channel = call if in_call else channels[in_thinking]
                if calling and token == engine.tool_call_open and not in_call:
                    event = channel.flush()
                    if event is not None:
                        yield event
                    if in_thinking and not sampler.has_grammar:
                        # The template's form: the thought ends, then the call (see the module doc).
                        engine.decode(close_before_call)
                        thinking.tokens += len(close_before_call)
                        in_thinking = False
                    in_call = True
                    call.tokens += 1
                    event = None
                elif in_call and token == engine.tool_call_close:
                    engine.decode([token])
                    pending = None
                    call.tokens += 1
                    stop_reason = "tool_call"
                    break
                elif in_call:
                    event = channel.feed(vocab.piece(token))
                elif token == engine.think_open or token == engine.think_close:
                    # A marker ends the current side: the split is by token id, not by text.
                    event = channel.flush()
                    channel.tokens += 1
                    in_thinking = token == engine.think_open
                else:
                    event = channel.feed(vocab.piece(token))
                if event is not None:
                    yield event
                engine.decode([token])
                pending = None
            for channel in (thinking, answer, call):
                event = channel.flush()
                if event is not None:
                    yield event
        finally:
            message = {"role": "assistant", "content": answer.text}
            if stop_reason == "tool_call":
                self._reply_sampler = sampler   # send_tool_results goes on with it (grammar state)
                _, calls = parse_tool_calls(f"{TOOL_CALL_OPEN}{call.text}{TOOL_CALL_CLOSE}")
                message["tool_calls"] = [{"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                                         for c in calls]
                if thinking.text:
                    message["reasoning_content"] = thinking.text
            else:
                sampler.close()
            self.messages.append(message)
            self.last_reasoning = thinking.text or None
            self._ended_in_thinking = in_thinking
            try:
                # The reply shown includes the pending token: the context must too, once. An
                # interrupt can land after llama.cpp evaluated it but before we recorded it.
                if pending is not None and len(engine.tokens) == pending_at:
                    engine.decode([pending])
            except EngineError:
                pass
            finally:
                self._context_in_sync = engine.owner is self and prompt_complete
        finished = time.perf_counter()
        yield TurnStats(
            prompt_tokens=len(prompt),
            evaluated_tokens=evaluated,
            thinking_tokens=thinking.tokens,
            answer_tokens=answer.tokens + call.tokens,
            prompt_seconds=prompt_done - started,
            generation_seconds=finished - prompt_done,
            context_used=len(engine.tokens),
            context_limit=engine.n_ctx,
            stop_reason=stop_reason,
            reset_reason=reset_reason,
            ended_in_thinking=in_thinking,
        )
