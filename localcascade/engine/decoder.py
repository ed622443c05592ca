"""The one decode loop: every reply of every front end, on the sequences of one llama.cpp context.

A context has ``n_seq`` sequences (1 for ask and run, ``--parallel N`` for serve). Each
``Sequence`` owns the tokens its state holds; nothing else writes them. ``Decoder.step()``
builds one ``llama_batch`` from every active reply (one sampled token each, and as much of
waiting prompts as the batch holds), runs one ``llama_decode``, and samples each reply from
its own row of logits: generation costs one pass over the weights per step however many
conversations share it, which is where batching wins on a memory-bound machine. A single
chat is one sequence of it, as llama.cpp's server runs ``n_parallel=1`` as one slot.
``_run_batch`` is the only place in the package that calls ``llama_decode``.

The context was created with ``n_seq_max = N`` and separate KV streams (not ``kv_unified``):
each sequence owns ``n_ctx / N`` positions of KV cache and its own recurrent-state cell, the
layout the planner's memory model prices.

Replies split thinking from answer by token id. Two front-end choices differ:

- ``grammar_spans_thinking``: a grammar constrains the whole reply (ask, run: the user wrote
  it for the whole text), or only the answer after ``</think>`` (serve: a reasoning model must
  be free to think before it answers in a client's required shape).
- ``calls``: "stream" (ask, run with tools): a call streams as ToolCallText, a thought still
  open when the model starts one is closed just before it (``\\n</think>\\n`` then
  ``<tool_call>``, the template's form; under a grammar the grammar decides), and the reply
  stops right after the evaluated ``</tool_call>``. "inline" (serve): the call's text is part
  of the answer and the reply stops before evaluating ``</tool_call>`` when its
  ``stop_after_call`` says so (the next round's prompt starts with the template's
  ``</tool_call>``). "none": tool-call markers are control tokens, not shown.

Drafts (drafts.py, speculative.py): where the engine drafts (``Engine.draft_tokens`` > 0) and a
reply samples without a grammar, a step evaluates the reply's last token and up to k tokens an
n-gram lookup over its context proposes, with logits for every one; ``_advance_drafted`` takes
the tokens the model agrees with through the same per-token path as a plain step (so stops, tool
calls, budgets and limits act at the same token), then cuts the context back to what was kept:
attention KV by ``llama_memory_seq_rm``, the recurrent state to its per-token snapshot. Under
greedy sampling the reply is the same token for token; sampled, it has the same distribution.

A reply stopped at a tool call hands its sampler (the grammar's state) over in
``Reply.sampler``: the caller continues the same reply as a new one started with it.

Everything here runs on one thread (the one iterating a Chat's turn, or the server's
worker); only ``Reply.stop`` may be called from others.
"""

from __future__ import annotations

import time
from typing import Callable

from localcascade.engine.drafts import DRAFT_WINDOW, MAX_NGRAM, NgramDrafter, StepCost, accept
from localcascade.engine.events import Event, TurnStats
from localcascade.engine.replies import Reply, Sequence, common_prefix
from localcascade.engine.sampling import Sampler, sampling_profile
from localcascade.engine.speculative import cut_back
from localcascade.engine.state_cache import (CHECKPOINT_EVERY, MIN_CHECKPOINT_TOKENS, MIN_RESTORE_GAIN,
                                             restore_state, state_size, take_state)
from localcascade.errors import ChatTemplateError, ContextOverflowError, EngineError

# What closes an open thought before a tool call: the template's "<think>\nR\n</think>\n<tool_call>".
THINK_CLOSE_BEFORE_CALL = "\n</think>\n"


class Decoder:
    """The sequences of one Engine's context and the replies on them, decoded together."""

    def __init__(self, engine) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.engine = engine
        self.sequences = [Sequence(i) for i in range(engine.n_seq)]
        self.turns: list[Reply] = []             # the active replies
        self.full_reevaluations = 0              # times a non-empty sequence had to be thrown away
        self._capacity = engine.n_batch
        self.draft_tokens = getattr(engine, "draft_tokens", 0)   # k, the most drafts a step verifies; 0: none
        # Until measured, what a verified draft token costs: on a CPU a batch row costs a good share
        # of a step (measured per draft token: Gemma 270M 0.5-1.0, the Cascade-2 skeleton 0.3-0.4);
        # on a GPU a few rows more cost little.
        self.step_cost = StepCost(per_token=0.5 if engine.plan.n_gpu_layers == 0 else 0.1)
        self._prefill_chunk = max(1, min(engine.plan.n_ubatch, engine.n_batch))
        self._batch = None
        self._rows: tuple = ()
        vocab = engine.vocab
        self._close_ids = vocab.tokenize(sampling_profile()["think_close_text"], special=True)
        self._close_before_call = vocab.tokenize(THINK_CLOSE_BEFORE_CALL, special=True)
        self._shown_specials = frozenset(i for i in (engine.tool_call_open, engine.tool_call_close) if i is not None)

    def close(self) -> None:
        """End every reply and free the batch (it is made again if the decoder is used after)."""
        for turn in self.turns:
            turn.close_samplers()
        self.turns = []
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None

    @property
    def idle(self) -> bool:
        return not self.turns

    # -- what a sequence holds ------------------------------------------------------------------

    def forget(self, seq: int) -> None:
        """Empty sequence ``seq`` (evicting its conversation)."""
        sequence = self.sequences[seq]
        if self.engine.has_context:
            self._lib.llama_memory_seq_rm(self._memory(), seq, -1, -1)
        sequence.tokens = []
        sequence.owner = None

    def reset(self) -> None:
        """Empty every sequence."""
        for sequence in self.sequences:
            self.forget(sequence.id)

    def evaluate(self, seq: int, tokens: list[int], should_stop: Callable[[], bool] | None = None) -> None:
        """Evaluate ``tokens`` after what sequence ``seq`` holds, in n_batch chunks, no sampling (bench,
        a reply's last sampled token). With ``should_stop``, ends early at a chunk boundary."""
        sequence = self.sequences[seq]
        for start in range(0, len(tokens), self._capacity):
            if should_stop is not None and should_stop():
                return
            chunk = tokens[start:start + self._capacity]
            rc = self._run_batch([(sequence, chunk, None, 1)])
            if rc != 0:
                self.forget(seq)
                raise EngineError(f"llama.cpp failed to evaluate the prompt (llama_decode returned {rc})")

    def _memory(self):
        return self._lib.llama_get_memory(self.engine.context)

    def _held(self, sequence: Sequence) -> int:
        """How many tokens the sequence's state really holds."""
        return self._lib.llama_memory_seq_pos_max(self._memory(), sequence.id) + 1

    def _resync(self, sequence: Sequence, candidate: list[int]) -> None:
        """Make ``sequence.tokens`` what its state really holds, a prefix of ``candidate``.

        Python raises a pending KeyboardInterrupt as soon as llama_decode returns, so the state
        may hold a batch the bookkeeping does not yet. If it holds more than ``candidate`` (it
        cannot be named), the sequence is emptied and its next reply says why.
        """
        held = self._held(sequence)
        if 0 <= held <= len(candidate):
            sequence.tokens = list(candidate[:held])
            return
        lost = len(sequence.tokens)
        self.forget(sequence.id)
        if lost:
            self.full_reevaluations += 1
            sequence.lost_reason = "an interrupted evaluation left the context in an unknown state"

    def _keep_prefix(self, sequence: Sequence, prompt: list[int]) -> tuple[int, str | None]:
        """Make the sequence hold as much of ``prompt`` as it can without evaluating: cut it back to
        what it shares with ``prompt``, or restore a longer checkpoint. Returns (tokens held, why what
        it held was thrown away, or None)."""
        if self._held(sequence) != len(sequence.tokens):
            self._resync(sequence, sequence.tokens)   # an interrupt between cutting the state and our bookkeeping
        reason, sequence.lost_reason = sequence.lost_reason, None
        held = sequence.tokens
        common = common_prefix(held, prompt)
        if common == len(prompt):
            common -= 1   # the last prompt token is evaluated again for its logits
        lost = None
        if common < len(held):
            if common > 0 and self._lib.llama_memory_seq_rm(self._memory(), sequence.id, common, -1):
                del held[common:]
            else:
                self._lib.llama_memory_seq_rm(self._memory(), sequence.id, -1, -1)
                if held:
                    lost = (f"the prompt differs from the cached context at token {common} of "
                            f"{len(held)} and the model's state cannot be cut back there")
                sequence.tokens = []
                common = 0
        restored = self._restore(sequence, prompt, common)
        if restored > common:
            return restored, reason
        if lost is not None:
            self.full_reevaluations += 1
            reason = lost
        return len(sequence.tokens), reason

    def _restore(self, sequence: Sequence, prompt: list[int], held: int) -> int:
        """Restore the longest kept checkpoint that starts ``prompt`` and beats the ``held`` tokens the
        sequence has; returns what the sequence holds after."""
        cache = self.engine.state_cache
        limit = min(len(prompt) - 1, self.engine.n_ctx_seq - 1)
        if cache is None or limit - held < MIN_RESTORE_GAIN:
            return held
        try:
            found = cache.best(prompt, limit, held)
        except Exception as err:  # noqa: BLE001 - a cache problem costs an evaluation, never the reply
            cache.note(f"state cache: lookup failed ({type(err).__name__}: {err}); the prompt is evaluated")
            return held
        if found is None:
            return held
        n, data = found
        if restore_state(self.engine.context, sequence.id, data, n):
            sequence.tokens = list(prompt[:n])
            cache.restored_tokens += n - held
            return n
        cache.note("state cache: llama.cpp refused a kept state; the prompt is evaluated")
        sequence.tokens = []
        return 0

    def _checkpoints(self, prompt: list[int], held: int, keep_at: tuple[int, ...]) -> list[tuple[int, bool]]:
        """Where to take checkpoints while reading ``prompt`` past ``held``: ``keep_at`` (a piped
        document's end) and the prompt's end (its last token is read alone after it, so a repeated
        prompt restores all but that token), both kept on disk too; every CHECKPOINT_EVERY tokens in RAM.
        Only where at least MIN_CHECKPOINT_TOKENS were read since what the sequence held: a short
        question after a restored document is cheaper to read again than to write down."""
        cache = self.engine.state_cache
        if cache is None or not cache.enabled or len(prompt) < MIN_CHECKPOINT_TOKENS:
            return []
        marks = {p: False for p in range(CHECKPOINT_EVERY, len(prompt) - 1, CHECKPOINT_EVERY)}
        for p in (*keep_at, len(prompt) - 1):
            if MIN_CHECKPOINT_TOKENS <= p < len(prompt):
                marks[p] = True
        return sorted((p, disk) for p, disk in marks.items() if p - held >= MIN_CHECKPOINT_TOKENS)

    def keep(self, seq: int) -> None:
        """Keep what sequence ``seq`` holds now, on disk too: a conversation being saved continues from
        it in another process without reading it again."""
        if len(self.sequences[seq].tokens) >= MIN_CHECKPOINT_TOKENS:
            self._checkpoint(self.sequences[seq], to_disk=True)

    def _checkpoint(self, sequence: Sequence, *, to_disk: bool, replaces: tuple[int, ...] | None = None
                    ) -> tuple[int, ...] | None:
        """Keep the state of ``sequence`` as it is now; returns its key, or None if none was kept."""
        cache = self.engine.state_cache
        if cache is None:
            return None
        try:
            # A state no budget can hold is not copied at all (128K tokens of Cascade-2 KV: ~800 MB).
            if state_size(self.engine.context, sequence.id) > max(cache.ram_budget, cache.disk_budget if to_disk else 0):
                return None
            data = take_state(self.engine.context, sequence.id)
            cache.put(sequence.tokens, data, disk=to_disk, replaces=replaces)
            return tuple(sequence.tokens)
        except Exception as err:  # noqa: BLE001 - a cache problem costs a later evaluation, never the reply
            cache.note(f"state cache: checkpoint failed ({type(err).__name__}: {err})")
            return None

    # -- starting a reply -----------------------------------------------------------------------

    def start(self, seq: int, prompt: list[int], options, sink: Callable[[Event], None], *,
              answer_sampler: Sampler | None = None, stop_after_call: Callable[[], bool] | None = None,
              stopped: Callable[[], bool] | None = None, owner: object | None = None,
              grammar_spans_thinking: bool = False, calls: str = "inline", keep_at: tuple[int, ...] = ()) -> Reply:
        """Begin a reply to ``prompt`` on sequence ``seq``, keeping what it already holds of it.

        ``answer_sampler``: the sampler a previous round stopped at a tool call with (the reply
        owns it from here). ``stop_after_call``: asked after each ``</tool_call>`` in the answer
        whether the reply stops there (calls="inline"). ``stopped``: another stop flag to heed.
        ``owner``: the conversation the sequence holds from here. ``keep_at``: prompt positions
        later prompts will share (a piped document's end): checkpoints kept on disk too.
        """
        sequence = self.sequences[seq]
        if any(t.sequence is sequence for t in self.turns):
            raise EngineError(f"sequence {seq} is busy")
        if not prompt:
            # Nothing to evaluate means no logits: llama.cpp's sampler would abort the process.
            raise ChatTemplateError("the chat template rendered an empty prompt for this conversation")
        if len(prompt) >= self.engine.n_ctx_seq:
            raise ContextOverflowError(
                f"the prompt is {len(prompt)} tokens but a conversation holds {self.engine.n_ctx_seq}"
            )
        common, reason = self._keep_prefix(sequence, prompt)
        sequence.owner = owner
        turn = Reply(self.engine, sequence, prompt, common, options, sink, reason, answer_sampler=answer_sampler,
                     stop_after_call=stop_after_call, stopped=stopped,
                     grammar_spans_thinking=grammar_spans_thinking, calls=calls,
                     checkpoints=self._checkpoints(prompt, common, keep_at))
        self.turns.append(turn)
        return turn

    def end(self, turn: Reply) -> None:
        """Take ``turn`` out now (its caller stops iterating, or an exception left it active).

        A token it sampled and showed but did not evaluate yet is evaluated: the context holds
        the reply as it was shown.
        """
        if turn.done:
            return
        self.turns = [t for t in self.turns if t is not turn]
        try:
            if turn.first_logits is not None and turn.todo:
                pending, turn.todo = turn.todo, []
                self.evaluate(turn.seq, pending)
        except EngineError:
            pass
        finally:
            self._finish(turn, turn.finish_after or "interrupted")

    # -- one step -------------------------------------------------------------------------------

    def step(self) -> list[Reply]:
        """One llama_decode over every active reply; returns the replies that ended in it.

        A stopped reply still reading its prompt ends now (its sequence holds the part read); one
        generating gets the token it sampled (and showed) evaluated first.
        """
        ended = [t for t in self.turns if t.stopped and (t.first_logits is None or not t.todo)]
        for turn in ended:
            self._finish(turn, "interrupted")
        plan = self._fill()
        if plan:
            self._decode(plan)
        ended += [t for t in self.turns if t.done and t not in ended]
        self.turns = [t for t in self.turns if not t.done]
        return ended

    def _fill(self) -> list[tuple[Reply, int]]:
        """(reply, tokens) for each reply in this batch."""
        room = self._capacity
        plan = []
        generating = any(t.first_logits is not None for t in self.turns if not t.done)
        # Replies already generating first (one token each); while any is, prompts are read one
        # micro-batch per step, so a long prompt delays their next token by that much only.
        prompt_room = self._prefill_chunk if generating else self._capacity
        for turn in sorted(self.turns, key=lambda t: t.first_logits is None):
            if turn.done or not turn.todo or room <= 0:
                continue
            reading_prompt = turn.first_logits is None
            if reading_prompt and prompt_room <= 0:
                continue
            if not reading_prompt:
                self._add_draft(turn, room)
            take = min(len(turn.todo), room, prompt_room if reading_prompt else room)
            if reading_prompt:
                if turn.checkpoints:   # a chunk ends at the next checkpoint
                    take = min(take, turn.checkpoints[0][0] - len(turn.sequence.tokens))
                prompt_room -= take
            plan.append((turn, take))
            room -= take
        return plan

    def _add_draft(self, turn: Reply, room: int) -> None:
        """Put draft tokens after the reply's last sampled token, where drafting may pay: no grammar
        (its state advances token by token inside llama.cpp), a draft found, and room for it in the
        batch, the context and the reply's max_tokens."""
        if (self.draft_tokens <= 0 or len(turn.todo) != 1 or turn.finish_after is not None
                or turn.sampler.has_grammar or turn.stopped):
            return
        held = len(turn.sequence.tokens)
        limit = min(self.draft_tokens, room - 1, self.engine.n_ctx_seq - 1 - held)
        if turn.options.max_tokens is not None:
            limit = min(limit, turn.options.max_tokens - turn.generated - 1)
        if limit <= 0:
            return
        if turn.drafter is None:
            # Drafts come from the last DRAFT_WINDOW tokens of the context and the reply: the index
            # of a 1M-token context would take seconds to build and ~0.5 GB.
            turn.drafter, turn.drafter_base = NgramDrafter(), max(0, held - DRAFT_WINDOW)
            if turn.acceptance.cost is None:
                turn.acceptance.cost, turn.acceptance.max_tokens = self.step_cost, self.draft_tokens
        known = turn.drafter_base + len(turn.drafter.history)   # the tokens it was given, appended as kept
        if known < held:
            turn.drafter.extend(turn.sequence.tokens[known:])
            known = held
        if known == held:
            turn.drafter.extend(turn.todo)
        draft = turn.drafter.draft(limit)
        if turn.acceptance.probing and turn.drafter.matched < MAX_NGRAM:
            # On a CPU a probe costs a step or more: probe where a whole 4-token run repeats, not
            # where two common words do. (A pause, during which it probes next, counts these steps.)
            return
        draft = draft[:turn.acceptance.draft_length(len(draft))] if draft else draft
        if draft:
            turn.drafts = draft
            turn.todo = turn.todo + draft

    def _run_batch(self, parts: list[tuple[Sequence, list[int], Reply | None, int]]) -> int:
        """Evaluate each part's tokens after its sequence in one llama_decode, keeping logits for the
        last n tokens of each part (n the part's last element: 1 for a reply's next token, 1 + k
        for a verified draft, 0 for a chunk of prompt). Returns llama_decode's status; on success
        the sequences hold the tokens. The one call of llama_decode in the package."""
        lib = self._lib
        if self._batch is None:
            batch = lib.llama_batch_init(self._capacity, 0, 1)
            for i in range(self._capacity):   # every row belongs to one sequence; no logits unless asked
                batch.n_seq_id[i] = 1
                batch.logits[i] = 0
            self._batch = batch
            self._rows = (batch.token, batch.pos, batch.seq_id, batch.logits)   # stable pointers
        batch = self._batch
        token_of, pos_of, seq_of, logits_of = self._rows
        row = 0
        flagged = []
        for sequence, tokens, _, n_logits in parts:
            base, seq_id = len(sequence.tokens), sequence.id
            for i, token in enumerate(tokens, row):
                token_of[i] = token
                pos_of[i] = base + i - row
                seq_of[i][0] = seq_id
            row += len(tokens)
            for i in range(row - min(n_logits, len(tokens)), row):
                logits_of[i] = 1
                flagged.append(i)
        batch.n_tokens = row
        try:
            rc = lib.llama_decode(self.engine.context, batch)
        except BaseException:
            # An interrupt (or an error) as llama_decode returned: ask each sequence what it holds.
            for sequence, tokens, turn, _ in parts:
                before = len(sequence.tokens)
                self._resync(sequence, sequence.tokens + tokens)
                if turn is not None:
                    del turn.todo[:max(0, len(sequence.tokens) - before)]
            raise
        finally:
            for i in flagged:
                logits_of[i] = 0
        if rc == 0:
            for sequence, tokens, _, _ in parts:
                sequence.tokens.extend(tokens)
        return rc

    def _decode(self, plan: list[tuple[Reply, int]]) -> None:
        parts = [(turn.sequence, turn.todo[:take], turn, 1 + len(turn.drafts) if take == len(turn.todo) else 0)
                 for turn, take in plan]
        # A step of one generating reply alone times what verifying drafts costs (StepCost).
        timed = len(plan) == 1 and plan[0][0].first_logits is not None
        started = time.perf_counter()
        drafted = len(plan[0][0].drafts) if timed else 0
        rc = self._run_batch(parts)
        if rc != 0:
            # What each sequence holds is unknown now: empty them so the next prompts start clean.
            for turn, _ in plan:
                turn.drafts = []
                self.forget(turn.seq)
                self._finish(turn, "error", error=f"llama.cpp failed to evaluate the batch (llama_decode returned {rc})")
            return
        row = 0
        for turn, take in plan:
            if turn.first_logits is None:
                turn.read += take
                reached = None
                while turn.checkpoints and turn.checkpoints[0][0] <= len(turn.sequence.tokens):
                    reached = turn.checkpoints.pop(0)
                if reached is not None and reached[0] == len(turn.sequence.tokens):
                    to_disk = reached[1]
                    key = self._checkpoint(turn.sequence, to_disk=to_disk,
                                           replaces=None if to_disk else turn.last_periodic)
                    if not to_disk:
                        turn.last_periodic = key
            del turn.todo[:take]
            row += take
            if not turn.todo:
                try:
                    if turn.drafts:
                        self._advance_drafted(turn, row - 1 - len(turn.drafts))
                    else:
                        self._advance(turn, row - 1)
                except EngineError as err:
                    self._finish(turn, "error", error=str(err))
        if timed:
            self.step_cost.record(drafted, time.perf_counter() - started)

    def _advance(self, turn: Reply, row: int) -> None:
        """The reply has fresh logits at batch ``row``: pick its next token, or end it."""
        self._next(turn, lambda: turn.sampler.sample(self.engine.context, row))

    def _advance_drafted(self, turn: Reply, first_row: int) -> None:
        """The reply's last token and its drafts were evaluated, with logits from batch ``first_row``
        on. drafts.accept picks the tokens (the drafts the sampler keeps, then one of the model's own);
        each goes through ``_next`` as a plain step would have sampled it, so whatever ends or
        redirects the reply (a stop, a tool call, a budget, a new sampler at the end of a thought)
        acts at the same token. The context is cut back to the tokens kept."""
        drafts, turn.drafts = turn.drafts, []
        sequence, sampler, ctx = turn.sequence, turn.sampler, self.engine.context
        evaluated = len(sequence.tokens)
        del sequence.tokens[evaluated - len(drafts):]   # the drafts count as held once taken
        try:
            kept = accept(range(first_row, first_row + len(drafts) + 1), drafts,
                          lambda row, draft: sampler.verify(ctx, row, draft),
                          lambda row: sampler.sample(ctx, row))
            turn.acceptance.record(len(drafts), len(kept) - 1)
            for i, token in enumerate(kept):
                taken: list[int] = []
                self._next(turn, lambda: taken.append(token) or token)
                if (not taken or i == len(kept) - 1 or turn.done or turn.finish_after is not None
                        or turn.todo != [token] or turn.sampler is not sampler):
                    break   # not simply kept: evaluated again (or never), as plain decoding would
                turn.todo = []
                sequence.tokens.append(token)
                turn.drafter.extend(taken)
        finally:
            if len(sequence.tokens) < evaluated:
                try:
                    cut_back(ctx, sequence.id, len(sequence.tokens))
                except EngineError:
                    # The state holds tokens the reply did not keep and cannot drop them: start over.
                    self.forget(sequence.id)
                    raise

    def _next(self, turn: Reply, pick: Callable[[], int]) -> None:
        """The reply may take a token now: end it, or take the token ``pick`` chooses."""
        engine = self.engine
        n_ctx = engine.n_ctx_seq
        held = len(turn.sequence.tokens)
        if turn.first_logits is None:
            turn.first_logits = time.perf_counter()
        if turn.finish_after is not None:
            return self._finish(turn, turn.finish_after)
        if turn.stopped:
            return self._finish(turn, "interrupted")
        if turn.options.max_tokens is not None and turn.generated >= turn.options.max_tokens:
            return self._finish(turn, "length")
        if held >= n_ctx:
            return self._finish(turn, "length")
        if (turn.in_thinking and not turn.in_call and turn.options.think_budget is not None
                and turn.thinking.tokens >= turn.options.think_budget):
            # Budget spent: close the thought ourselves and let the model answer. A grammar may not
            # allow the close yet; then the thought goes on until it does.
            closed = self._close_thought(turn)
            if closed is not None:
                return None if closed else self._finish(turn, "length")
        token = pick()
        if engine.vocab.is_eog(token):
            # A grammar over the answer only means an answer in its shape is wanted (a forced tool call,
            # a JSON schema): a reply that would end inside its thought has the thought closed and answers.
            if (turn.in_thinking and turn.options.grammar and not turn.grammar_spans_thinking
                    and self._close_thought(turn)):
                return None
            turn.end_token = token
            return self._finish(turn, "stop")
        channel = turn.call if turn.in_call else turn.thinking if turn.in_thinking else turn.answer
        if turn.calls == "stream" and token == engine.tool_call_open and not turn.in_call:
            self._emit(turn, channel.flush())
            before: list[int] = []
            if turn.in_thinking and not turn.sampler.has_grammar:
                # The template's form: the thought ends, then the call (see the module doc).
                before = list(self._close_before_call)
                turn.thinking.tokens += len(before)
                self._end_thinking(turn)
            turn.in_call = True
            turn.call.tokens += 1
            turn.todo = before + [token]
            return None
        if turn.in_call and token == engine.tool_call_close:
            turn.call.tokens += 1
            turn.todo = [token]
            turn.finish_after = "tool_call"
            return None
        if turn.in_call:
            event = channel.feed(engine.vocab.piece(token))
        elif token == engine.think_open or token == engine.think_close:
            # A marker ends the current side: the split is by token id, not by text.
            event = channel.flush()
            channel.tokens += 1
            if turn.in_thinking and token == engine.think_close:
                self._end_thinking(turn)
            turn.in_thinking = token == engine.think_open
        else:
            shown = turn.calls == "inline" and token in self._shown_specials
            event = channel.feed(engine.vocab.piece(token, special=shown))
        self._emit(turn, event)
        if (turn.calls == "inline" and token == engine.tool_call_close and not turn.in_thinking
                and turn.stop_after_call is not None):
            self._emit(turn, channel.flush())
            if turn.stop_after_call():
                # Not evaluated: the next round's prompt starts with the template's "</tool_call>".
                return self._finish(turn, "tool_call")
        turn.todo = [token]
        return None

    def _close_thought(self, turn: Reply) -> bool | None:
        """Feed the end of the thought next (as a spent thinking budget does): True if it is fed,
        False if the context has no room for it, None if the grammar does not allow it yet."""
        close = next((ids for ids in (self._close_ids, [self.engine.think_close]) if turn.sampler.allows(ids)), None)
        if close is None:
            return None
        if len(turn.sequence.tokens) + len(close) >= self.engine.n_ctx_seq:
            return False
        for token in close:
            turn.sampler.accept(token)
        self._end_thinking(turn)
        turn.todo = list(close)
        return True

    @staticmethod
    def _emit(turn: Reply, event: Event | None) -> None:
        if event is not None:
            turn.sink(event)

    def _end_thinking(self, turn: Reply) -> None:
        """The answer starts: unless the grammar spans the whole reply, the answer's sampler (with its
        grammar, if any) picks from here."""
        turn.in_thinking = False
        if turn.options.grammar and not turn.grammar_spans_thinking:
            turn.sampler.close()
            turn.sampler, turn._carried = turn._carried or Sampler(self.engine.vocab.handle, turn._sampling(False)), None

    def _finish(self, turn: Reply, reason: str, *, error: str | None = None) -> None:
        if turn.done:
            return
        turn.done = True
        turn.stop_reason = reason
        turn.error = error
        turn.close_samplers(keep_current=reason == "tool_call")   # see the module doc
        for channel in (turn.thinking, turn.answer, turn.call):
            self._emit(turn, channel.flush())
        now = time.perf_counter()
        first = turn.first_logits or now
        turn.sink(TurnStats(
            prompt_tokens=len(turn.prompt),
            evaluated_tokens=turn.read,
            thinking_tokens=turn.thinking.tokens,
            answer_tokens=turn.answer.tokens + turn.call.tokens,
            prompt_seconds=first - turn.started,
            generation_seconds=now - first,
            context_used=len(turn.sequence.tokens),
            context_limit=self.engine.n_ctx_seq,
            stop_reason=reason,
            reset_reason=turn.reset_reason,
            ended_in_thinking=turn.in_thinking,
            drafted_tokens=turn.acceptance.drafted,
            accepted_tokens=turn.acceptance.accepted,
        ))
