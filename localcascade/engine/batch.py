"""Several replies decoded together in one llama.cpp context (the server's ``--parallel N``).

Each llama.cpp sequence id holds one conversation. ``BatchDecoder.step()``
builds one ``llama_batch`` from every active reply (one sampled token each, and
as much of waiting prompts as the batch holds), runs one ``llama_decode``, and
samples each reply from its own row of logits: generation costs one pass over
the weights per step however many conversations share it, which is where
batching wins on a memory-bound machine.

The context was created with ``n_seq_max = N`` and separate KV streams (not
``kv_unified``): each sequence owns ``n_ctx / N`` positions of KV cache and its
own recurrent-state cell, the layout the planner's memory model prices.

Replies split thinking from answer by token id as ``Chat`` does. A grammar here
constrains the answer only (it starts after ``</think>``): a reasoning model
must be free to think before it answers in a required shape; and since the answer
is required, a reply whose model would end it inside the thought gets the thought
closed for it (as a spent thinking budget does) and answers.

A reply may stop right after a ``</tool_call>`` (stop_reason "tool_call") when its
``stop_after_call`` says so, handing its answer sampler (the grammar's state) over
in ``BatchTurn.sampler``: the server runs the call and continues the same reply as a
new turn started with that sampler, so a grammar spans the rounds as it does in ask.

Everything here runs on one thread (the server's worker); only ``BatchTurn.stop``
may be called from others.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Callable

from localcascade.engine.events import AnswerText, Event, ThinkingText, TurnStats
from localcascade.engine.sampling import Sampler, sampling_profile
from localcascade.engine.replies import Channel, common_prefix, opens_thinking
from localcascade.engine.session import Engine, GenerationOptions
from localcascade.errors import ContextOverflowError, EngineError


class BatchTurn:
    """One reply on one sequence, advanced by ``BatchDecoder.step``; its events go to ``sink``."""

    def __init__(self, decoder: "BatchDecoder", seq: int, prompt: list[int], start: int,
                 options: GenerationOptions, sink: Callable[[Event], None], reset_reason: str | None,
                 answer_sampler: Sampler | None = None, stop_after_call: Callable[[], bool] | None = None) -> None:
        engine = decoder.engine
        self.seq = seq
        self.prompt = prompt
        self.options = options
        self.sink = sink
        self.todo: list[int] = prompt[start:]   # to evaluate before the next sample
        self.evaluated = len(prompt) - start
        self.reset_reason = reset_reason
        self.thinking, self.answer = Channel(ThinkingText), Channel(AnswerText)
        self.in_thinking = opens_thinking(prompt, engine.think_open, engine.think_close)
        if answer_sampler is not None and not options.grammar:
            answer_sampler.close()    # no grammar state to carry on: a fresh sampler does the same
            answer_sampler = None
        if answer_sampler is not None and not self.in_thinking:
            self.sampler, self._carried = answer_sampler, None
        else:
            self.sampler = Sampler(engine.vocab.handle, self._sampling(self.in_thinking))
            self._carried = answer_sampler      # the answer's sampler, once the thought ends
        self.stop_after_call = stop_after_call
        self.done = False
        self.stop_reason = "interrupted"
        self.end_token: int | None = None        # the end-of-generation token that ended it, if one did
        self.error: str | None = None
        self.started = time.perf_counter()
        self.first_logits: float | None = None
        self._stop = threading.Event()

    def stop(self) -> None:
        """End the reply before its next token (any thread); its sequence is free after the next step."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def close_samplers(self, *, keep_current: bool = False) -> None:
        """Free the samplers this turn holds; with ``keep_current`` the one sampling now is left to
        whoever takes it over (a reply stopped at a tool call the server runs)."""
        if self._carried is not None:
            self._carried.close()
            self._carried = None
        if not keep_current:
            self.sampler.close()

    def _sampling(self, thinking: bool) -> GenerationOptions:
        return replace(self.options, grammar=None) if thinking else self.options


class BatchDecoder:
    """The sequences of one Engine's context, decoded together. Takes the context over from Chat."""

    def __init__(self, engine: Engine) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.engine = engine
        engine.reset()
        engine.owner = self       # no Chat may use the context now: its tokens are not sequence 0's
        self.held: list[list[int]] = [[] for _ in range(engine.n_seq)]
        self.turns: list[BatchTurn] = []
        self.full_reevaluations = 0
        self._capacity = engine.n_batch
        self._prefill_chunk = max(1, min(engine.plan.n_ubatch, engine.n_batch))
        self._batch = llama_cpp.llama_batch_init(self._capacity, 0, 1)
        self._close_ids = engine.vocab.tokenize(sampling_profile()["think_close_text"], special=True)

    def close(self) -> None:
        for turn in self.turns:
            turn.close_samplers()
        self.turns = []
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None

    # -- starting a reply ---------------------------------------------------------------------

    def start(self, seq: int, prompt: list[int], options: GenerationOptions,
              sink: Callable[[Event], None], *, answer_sampler: Sampler | None = None,
              stop_after_call: Callable[[], bool] | None = None) -> BatchTurn:
        """Begin a reply to ``prompt`` on sequence ``seq``, keeping what it already holds of it.

        ``answer_sampler``: the sampler a previous round stopped at a tool call with (the turn
        owns it from here). ``stop_after_call``: asked after each ``</tool_call>`` in the answer
        whether the reply stops there (stop_reason "tool_call") for the call to be run.
        """
        if any(t.seq == seq for t in self.turns):
            raise EngineError(f"sequence {seq} is busy")
        if not prompt:
            raise EngineError("empty prompt")
        if len(prompt) >= self.engine.n_ctx_seq:
            raise ContextOverflowError(
                f"the prompt is {len(prompt)} tokens but a conversation holds {self.engine.n_ctx_seq}"
            )
        held = self.held[seq]
        common = common_prefix(held, prompt)
        if common == len(prompt):
            common -= 1   # the last prompt token is evaluated again for its logits
        reason = None
        if common < len(held):
            memory = self._lib.llama_get_memory(self.engine.context)
            if common > 0 and self._lib.llama_memory_seq_rm(memory, seq, common, -1):
                del held[common:]
            else:
                self._lib.llama_memory_seq_rm(memory, seq, -1, -1)
                if held:
                    self.full_reevaluations += 1
                    reason = (f"the prompt differs from sequence {seq}'s context at token {common} of "
                              f"{len(held)} and the model's state cannot be cut back there")
                held.clear()
                common = 0
        turn = BatchTurn(self, seq, prompt, common, options, sink, reason, answer_sampler, stop_after_call)
        self.turns.append(turn)
        return turn

    def forget(self, seq: int) -> None:
        """Empty sequence ``seq`` (evicting its conversation)."""
        memory = self._lib.llama_get_memory(self.engine.context)
        self._lib.llama_memory_seq_rm(memory, seq, -1, -1)
        self.held[seq].clear()

    # -- one step -------------------------------------------------------------------------------

    def step(self) -> list[BatchTurn]:
        """One llama_decode over every active reply; returns the replies that ended in it."""
        ended = [t for t in self.turns if t.stopped]
        for turn in ended:
            self._finish(turn, "interrupted")
        plan = self._fill()
        if plan:
            self._decode(plan)
        ended += [t for t in self.turns if t.done]
        self.turns = [t for t in self.turns if not t.done]
        return ended

    def _fill(self) -> list[tuple[BatchTurn, int, int]]:
        """(turn, first batch row, rows) for each turn in this batch, the batch filled in."""
        lib, batch = self._lib, self._batch
        room = self._capacity
        plan = []
        row = 0
        generating = any(t.first_logits is not None for t in self.turns)
        # Replies already generating first (one token each); while any is, prompts are read one
        # micro-batch per step, so a long prompt delays their next token by that much only.
        prompt_room = self._prefill_chunk if generating else self._capacity
        for turn in sorted(self.turns, key=lambda t: t.first_logits is None):
            if not turn.todo or room <= 0:
                continue
            reading_prompt = turn.first_logits is None
            if reading_prompt and prompt_room <= 0:
                continue
            take = min(len(turn.todo), room, prompt_room if reading_prompt else room)
            if reading_prompt:
                prompt_room -= take
            base = len(self.held[turn.seq])
            for i in range(take):
                batch.token[row + i] = turn.todo[i]
                batch.pos[row + i] = base + i
                batch.n_seq_id[row + i] = 1
                batch.seq_id[row + i][0] = turn.seq
                batch.logits[row + i] = 0
            if take == len(turn.todo):
                batch.logits[row + take - 1] = 1
            plan.append((turn, row, take))
            row += take
            room -= take
        batch.n_tokens = row
        return plan

    def _decode(self, plan: list[tuple[BatchTurn, int, int]]) -> None:
        rc = self._lib.llama_decode(self.engine.context, self._batch)
        if rc != 0:
            # What each sequence holds is unknown now: empty them so the next prompts start clean.
            for turn, _, _ in plan:
                self.forget(turn.seq)
                self._finish(turn, "error", error=f"llama.cpp failed to evaluate the batch (llama_decode returned {rc})")
            return
        for turn, row, take in plan:
            self.held[turn.seq].extend(turn.todo[:take])
            del turn.todo[:take]
            if not turn.todo:
                try:
                    self._advance(turn, row + take - 1)
                except EngineError as err:
                    self._finish(turn, "error", error=str(err))

    def _advance(self, turn: BatchTurn, row: int) -> None:
        """The turn has fresh logits at batch ``row``: pick its next token, or end it."""
        engine = self.engine
        if turn.first_logits is None:
            turn.first_logits = time.perf_counter()
        if turn.stopped:
            return self._finish(turn, "interrupted")
        produced = turn.thinking.tokens + turn.answer.tokens
        if turn.options.max_tokens is not None and produced >= turn.options.max_tokens:
            return self._finish(turn, "length")
        if len(self.held[turn.seq]) >= engine.n_ctx_seq:
            return self._finish(turn, "length")
        if (turn.in_thinking and turn.options.think_budget is not None
                and turn.thinking.tokens >= turn.options.think_budget and self._close_thought(turn)):
            return None
        token = turn.sampler.sample(engine.context, row)
        if engine.vocab.is_eog(token):
            # A grammar means an answer in its shape is wanted (a forced tool call, a JSON schema):
            # a reply that would end inside its thought has the thought closed and answers instead.
            if turn.in_thinking and turn.options.grammar and self._close_thought(turn):
                return None
            turn.end_token = token
            return self._finish(turn, "stop")
        channel = turn.thinking if turn.in_thinking else turn.answer
        if token == engine.think_open or token == engine.think_close:
            event = channel.flush()
            channel.tokens += 1
            if turn.in_thinking and token == engine.think_close:
                self._end_thinking(turn)
            turn.in_thinking = token == engine.think_open
        else:
            event = channel.feed(engine.vocab.piece(token, special=token in self._shown_specials))
        if event is not None:
            turn.sink(event)
        if (token == engine.tool_call_close and not turn.in_thinking and turn.stop_after_call is not None):
            event = channel.flush()
            if event is not None:
                turn.sink(event)
            if turn.stop_after_call():
                # Not evaluated: the next round's prompt starts with the template's "</tool_call>".
                return self._finish(turn, "tool_call")
        turn.todo = [token]
        return None

    def _close_thought(self, turn: BatchTurn) -> bool:
        """Feed the end of the thought next (as the thinking budget does) if it fits; False if not."""
        engine = self.engine
        close = next((ids for ids in (self._close_ids, [engine.think_close]) if turn.sampler.allows(ids)), None)
        if close is None or len(self.held[turn.seq]) + len(close) >= engine.n_ctx_seq:
            return False
        self._end_thinking(turn)
        turn.todo = list(close)
        return True

    @property
    def _shown_specials(self) -> frozenset[int]:
        """Special tokens whose text is part of the reply (tool-call markers), not control."""
        cached = getattr(self, "_shown", None)
        if cached is None:
            vocab = self.engine.vocab
            cached = frozenset(i for i in (vocab.special_id("<tool_call>"), vocab.special_id("</tool_call>"))
                               if i is not None)
            self._shown = cached
        return cached

    def _end_thinking(self, turn: BatchTurn) -> None:
        """The answer starts: from here the answer's sampler (with its grammar, if any) picks."""
        turn.in_thinking = False
        if turn.options.grammar:
            turn.sampler.close()
            turn.sampler, turn._carried = turn._carried or Sampler(self.engine.vocab.handle, turn._sampling(False)), None

    def _finish(self, turn: BatchTurn, reason: str, *, error: str | None = None) -> None:
        if turn.done:
            return
        turn.done = True
        turn.stop_reason = reason
        turn.error = error
        turn.close_samplers(keep_current=reason == "tool_call")   # see the module doc
        for channel in (turn.thinking, turn.answer):
            event = channel.flush()
            if event is not None:
                turn.sink(event)
        now = time.perf_counter()
        first = turn.first_logits or now
        turn.sink(TurnStats(
            prompt_tokens=len(turn.prompt),
            evaluated_tokens=turn.evaluated,
            thinking_tokens=turn.thinking.tokens,
            answer_tokens=turn.answer.tokens,
            prompt_seconds=first - turn.started,
            generation_seconds=now - first,
            context_used=len(self.held[turn.seq]),
            context_limit=self.engine.n_ctx_seq,
            stop_reason=reason,
            reset_reason=turn.reset_reason,
            ended_in_thinking=turn.in_thinking,
        ))

    @property
    def idle(self) -> bool:
        return not self.turns
