"""Requests to sequences: the queue, conversation reuse, eviction, and the decoding thread.

One worker thread owns the llama.cpp context (the engine's Decoder) and runs every
active reply together. Requests wait in a bounded FIFO queue beyond the N
sequences (``submit`` refuses past it: the server answers 503).

Conversation reuse: each sequence remembers the conversation it holds as
messages (``schema.message_key``: role, content, tool calls; no ids, no
reasoning, since clients resend history without ``reasoning_content``). A
request whose messages extend a held conversation goes to that sequence and
only the new messages are evaluated: the prompt is the sequence's own tokens
(the reasoning the model wrote included) plus the template's rendering of
what follows the held reply. Otherwise the least recently used free sequence
is taken and its conversation evicted: its tokens are parked (the last
``PARKED`` conversations) and its state kept in the state cache within its RAM
and disk budgets (engine/state_cache.py; ~48 MiB of Mamba state plus its KV
cache per conversation on the real model, so the budgets, not the plan, bound
it). A request that extends a parked conversation gets its tokens plus the new
messages as its prompt, and the decoder restores the kept state instead of
reading them again.

A reply that stopped at a tool call the server runs (``serve --tools python``) is held
like a complete one, ending at its ``</tool_call>``; its continuation is a new job
(the conversation plus the call's result) that goes first in the queue, past its cap:
it is the rest of a reply already admitted, not a new request.
"""

from __future__ import annotations

import collections
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable

from localcascade.engine.replies import Reply
from localcascade.engine.events import AnswerText, Event, TurnStats
from localcascade.engine.session import TOOL_CALL_CLOSE, Engine
from localcascade.engine.state_cache import MIN_CHECKPOINT_TOKENS
from localcascade.errors import ContextOverflowError, LocalCascadeError
from localcascade.server.http_errors import error_message
from localcascade.server.schema import Work, reply_key
from localcascade.stderr import say

# Stands in for the held reply when rendering, to find where the new messages start.
_SENTINEL = "\u2063LOCALCASCADE-HELD-REPLY\u2063"


# How long one step of the decoder (a llama_decode of at most a batch of prompt tokens, or the
# template and tokenizer work that starts a reply) may run before /health calls the decoder stuck.
# A 2048-token batch of the 30B model on a slow CPU takes ~3 minutes; past 5, something is wrong.
STUCK_AFTER_S = 300.0


class QueueFull(Exception):
    """Every sequence is busy and the queue holds as many requests as it may."""


class Unavailable(Exception):
    """The scheduler takes no more requests: its decoder has stopped, or the server is stopping."""


@dataclass(frozen=True)
class Failed:
    """The request could not be served; ``status`` is the HTTP status to answer with."""

    status: int
    message: str
    kind: str = "invalid_request_error"
    code: str | None = None


@dataclass(frozen=True)
class Started:
    """The request has a sequence and its prompt is being evaluated."""

    prompt_tokens: int
    evaluated_tokens: int
    reused: bool


class Job:
    """One request's life in the scheduler; ``deliver`` is called on the worker thread."""

    def __init__(self, work: Work, deliver: Callable[[object], None],
                 reply_key_of: Callable[[str], tuple] | None = None, *,
                 stop_after_call: Callable[[str], bool] | None = None, answer_sampler=None) -> None:
        self.work = work
        self.deliver = deliver
        self.reply_key_of = reply_key_of or (lambda text: reply_key(text, []))
        self.stop_after_call = stop_after_call    # given the answer so far, at each </tool_call>
        self.answer_sampler = answer_sampler      # in: the previous round's (see engine.decoder)
        self.kept_sampler = None                  # out: this round's, when it stopped at a tool call
        self._stop = threading.Event()
        self.turn: Reply | None = None
        self.answer: list[str] = []
        self.stats: TurnStats | None = None

    def stop(self) -> None:
        """The client went away or has what it wanted: end generation now (any thread)."""
        self._stop.set()
        turn = self.turn
        if turn is not None:
            turn.stop()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def drop_sampler(self) -> None:
        """The job will not start: free the sampler it was to continue with."""
        sampler, self.answer_sampler = self.answer_sampler, None
        if sampler is not None:
            sampler.close()


# Evicted conversations remembered (their tokens; their states are in the state cache).
PARKED = 64
PARKED_RECORD = "conversations"   # the state cache's record of them, for the next start


def _save_parked(engine: Engine, parked: "collections.OrderedDict[tuple, Parked]") -> None:
    """Write the parked conversations whose states the cache keeps on disk (a shorter one is read
    again anyway) to its record, oldest first."""
    cache = engine.state_cache
    if cache is None or cache.disk_budget <= 0:
        return
    kept = [{"key": p.key, "ended_in_thinking": p.ended_in_thinking, "end_texts": list(p.end_texts),
             "tokens": p.tokens} for p in parked.values() if len(p.tokens) >= MIN_CHECKPOINT_TOKENS]
    cache.put_record(PARKED_RECORD, kept)


def _load_parked(engine: Engine) -> "collections.OrderedDict[tuple, Parked]":
    """The conversations an earlier server parked or held when it stopped; anything malformed in the
    record is left out (noted under --verbose), never trusted: a wrong entry would only fail to match."""
    parked: collections.OrderedDict[tuple, Parked] = collections.OrderedDict()
    cache = engine.state_cache
    record = cache.record(PARKED_RECORD) if cache is not None else None
    if not isinstance(record, list):
        return parked
    vocabulary = engine.vocab.n_tokens
    for item in record[-PARKED:]:
        try:
            key = _tuples(item["key"])
            tokens = [int(t) for t in item["tokens"]]
            if (not isinstance(key, tuple) or not key or any(not 0 <= t < vocabulary for t in tokens)
                    or len(tokens) >= engine.n_ctx_seq):
                raise ValueError("out of range")
            parked[key] = Parked(key, bool(item["ended_in_thinking"]),
                                 tuple(str(t) for t in item["end_texts"]), tokens)
        except (KeyError, TypeError, ValueError):
            cache.note("state cache: an entry of the kept conversations is malformed; left out")
    return parked


def _tuples(value):
    """JSON's lists back to the tuples a conversation key is made of."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


@dataclass
class Parked:
    """An evicted conversation: what its sequence held, to continue it on another."""

    key: tuple
    ended_in_thinking: bool
    end_texts: tuple[str, ...]
    tokens: list[int]


@dataclass
class Slot:
    seq: int
    key: tuple | None = None          # the conversation the sequence holds (tools, messages...)
    ended_in_thinking: bool = False
    end_texts: tuple[str, ...] = ()   # end-of-generation token texts that may follow the held reply
    last_used: float = 0.0
    job: Job | None = None
    evictions: int = field(default=0)


class Scheduler:
    def __init__(self, engine: Engine, *, queue_size: int = 16, stuck_after_s: float = STUCK_AFTER_S) -> None:
        self.engine = engine
        self.stuck_after_s = stuck_after_s
        self.queue_size = queue_size
        self.decoder = engine.decoder
        engine.reset()            # no chat's conversation is in the context now
        self.slots = [Slot(i) for i in range(engine.n_seq)]
        self._waiting: collections.deque[Job] = collections.deque()
        self._parked: collections.OrderedDict[tuple, Parked] = _load_parked(engine)
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="localcascade-decoder", daemon=True)
        self.evaluated_tokens = 0
        self.prompt_tokens = 0
        self._busy_since: float | None = None    # when the worker's current step began; None while it waits
        self._draining: str | None = None        # why no more requests are taken (the server is stopping)
        self._died: str | None = None            # what stopped the worker thread, if anything did
        self._replies: weakref.WeakSet = weakref.WeakSet()   # see follow()

    # -- the HTTP side --------------------------------------------------------------------------

    def start(self) -> "Scheduler":
        self._thread.start()
        return self

    def submit(self, job: Job, *, continuation: bool = False) -> None:
        """Queue ``job``; a ``continuation`` (the next round of a reply) goes first and is never refused."""
        with self._cond:
            refusal = self._draining or self.liveness()
            if refusal is not None:
                raise Unavailable(refusal)
            if continuation:
                self._waiting.appendleft(job)
            else:
                busy = sum(1 for s in self.slots if s.job is not None)
                if busy + len(self._waiting) >= len(self.slots) + self.queue_size:
                    raise QueueFull()
                self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        job.stop()
        with self._cond:
            self._cond.notify()

    def liveness(self) -> str | None:
        """None while the decoder thread serves; else why it does not (dead, or stuck in one step)."""
        if self._thread.ident is not None and not self._thread.is_alive():
            return f"the decoder thread has stopped ({self._died or 'it ended'})"
        since = self._busy_since
        if since is not None and time.monotonic() - since > self.stuck_after_s:
            return f"the decoder has been in one step for {time.monotonic() - since:.0f} s"
        return None

    def follow(self, reply) -> None:
        """``reply.cancel()`` will be called when the server stops: a reply between its rounds, running
        the model's code, has no job here to stop (held weakly: a finished reply is forgotten)."""
        self._replies.add(reply)

    def drain(self, message: str) -> None:
        """Take no more requests and end every reply in flight, each failing with ``message``
        (a 503 on its own, an error event then [DONE] in a stream): the server is stopping."""
        with self._cond:
            self._draining = message
            self._stop_every_job()
        for reply in list(self._replies):
            reply.cancel()

    def _stop_every_job(self) -> None:
        """Stop every queued and running job and wake the decoder thread (the lock is held)."""
        for job in self._waiting:
            job.stop()
        for slot in self.slots:
            if slot.job is not None:
                slot.job.stop()
        self._cond.notify()

    def status(self) -> dict:
        with self._cond:
            return {
                "slots": len(self.slots),
                "busy": sum(1 for s in self.slots if s.job is not None),
                "queued": len(self._waiting),
                "queue_size": self.queue_size,
                "n_ctx_per_slot": self.engine.n_ctx_seq,
                "full_reevaluations": self.decoder.full_reevaluations,
            }

    def close(self) -> None:
        """Stop, keeping every conversation the sequences hold (their states on disk, their tokens in
        the parked record), so a restarted server continues them without reading them again."""
        with self._cond:
            self._closed = True
            self._stop_every_job()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        if not self._thread.is_alive() and self._died is None:
            try:
                for slot in self.slots:
                    if slot.key is not None and self.decoder.sequences[slot.seq].tokens:
                        self._park(slot, save=False)
                _save_parked(self.engine, self._parked)
            except Exception as err:  # noqa: BLE001 - keeping costs a later reading, never the stop
                say(f"could not keep the conversations for the next start: {type(err).__name__}: {err}")
        self.decoder.close()

    # -- the worker -----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._closed and not self._waiting and self.decoder.idle:
                        self._busy_since = None
                        self._cond.wait()
                    if self._closed and self.decoder.idle:
                        return
                    self._busy_since = time.monotonic()
                    admitted = self._admit()
                try:
                    self._advance(admitted)
                except Exception as err:  # noqa: BLE001 - fail the replies in flight, keep serving
                    self._abandon(f"internal error: {type(err).__name__}: {err}")
        except BaseException as err:  # noqa: BLE001 - said in one line and by /health; no traceback
            self._died = f"{type(err).__name__}: {err}"
            say(f"the decoder thread stopped: {self._died}")
        finally:
            self._busy_since = None
            if self._died is not None:
                self._fail_everything(f"the decoder stopped: {self._died}")

    def _advance(self, admitted: list[tuple[Job, "Slot", bool]]) -> None:
        """Start the admitted jobs, run one decoder step, end the replies it finished."""
        for job, slot, reuse in admitted:
            self._begin(job, slot, reuse)
        if self.decoder.idle:
            return
        for turn in self.decoder.step():
            try:
                self._end(turn)
            except Exception as err:  # noqa: BLE001 - one reply's end failed: fail that reply alone
                self._fail_turn(turn, f"internal error: {type(err).__name__}: {err}")

    def _fail_turn(self, turn: Reply, message: str) -> None:
        """The reply on ``turn``'s sequence fails; the sequence is emptied (its state is not a known
        conversation) and the others go on."""
        slot = self.slots[turn.seq]
        self.decoder.forget(slot.seq)
        with self._cond:
            job, slot.job, slot.key = slot.job, None, None
            slot.last_used = time.monotonic()
            self._cond.notify()
        if job is not None:
            job.deliver(Failed(500, message, "server_error"))

    def _fail_everything(self, message: str) -> None:
        """The worker is gone: every request it held or queued fails at once, none waits forever."""
        with self._cond:
            jobs = [slot.job for slot in self.slots if slot.job is not None] + list(self._waiting)
            for slot in self.slots:
                slot.job = None
            self._waiting.clear()
        for job in jobs:
            job.deliver(Failed(503, message, "server_error", "decoder_stopped"))

    def _abandon(self, message: str) -> None:
        """Every active reply fails and every sequence is emptied (their state is unknown)."""
        for turn in self.decoder.turns:
            turn.close_samplers()
        self.decoder.turns = []
        for slot in self.slots:
            self.decoder.forget(slot.seq)
            with self._cond:
                job, slot.job, slot.key = slot.job, None, None
            if job is not None:
                job.deliver(Failed(500, message, "server_error"))

    def _admit(self) -> list[tuple[Job, Slot, bool]]:
        """Waiting jobs that get a free sequence now (under the lock)."""
        admitted = []
        while self._waiting:
            job = self._waiting[0]
            if job.stopped or self._closed:
                self._waiting.popleft()
                job.drop_sampler()
                job.deliver(self._stopping() or Failed(499, "the request was cancelled before it started", "cancelled"))
                continue
            choice = self._choose(job)
            if choice is None:
                break
            self._waiting.popleft()
            slot, reuse = choice
            slot.job = job
            admitted.append((job, slot, reuse))
        return admitted

    def _choose(self, job: Job) -> tuple[Slot, bool] | None:
        free = [s for s in self.slots if s.job is None]
        if not free:
            return None
        key = job.work.key
        held = [s for s in free if s.key is not None and len(s.key) < len(key)
                and key[:len(s.key)] == s.key and s.key[-1][0] == "assistant"]
        if held:
            return max(held, key=lambda s: len(s.key)), True
        empty = [s for s in free if s.key is None and not self.decoder.sequences[s.seq].tokens]
        slot = empty[0] if empty else min(free, key=lambda s: s.last_used)
        parked = [p for k, p in self._parked.items()
                  if len(k) < len(key) and key[:len(k)] == k and k[-1][0] == "assistant"]
        return slot, (max(parked, key=lambda p: len(p.key)) if parked else False)

    def _park(self, slot: Slot, *, save: bool = True) -> None:
        """``slot``'s conversation is evicted: remember its tokens and keep its state (on disk too,
        with the record of parked conversations, for a restarted server)."""
        self.decoder.keep(slot.seq)
        self._parked[slot.key] = Parked(slot.key, slot.ended_in_thinking, slot.end_texts,
                                        list(self.decoder.sequences[slot.seq].tokens))
        self._parked.move_to_end(slot.key)
        while len(self._parked) > PARKED:
            self._parked.popitem(last=False)
        if save:
            _save_parked(self.engine, self._parked)

    def _begin(self, job: Job, slot: Slot, reuse: bool | Parked) -> None:
        engine = self.engine

        def sink(event: Event) -> None:
            if isinstance(event, TurnStats):
                job.stats = event        # delivered by _end, with the outcome
                return
            if isinstance(event, AnswerText):
                job.answer.append(event.text)
            job.deliver(event)

        try:
            work = job.work
            if work.options.grammar:
                from localcascade.engine.sampling import check_grammar

                check_grammar(engine.vocab.handle, work.options.grammar)   # a 400 now, not mid-reply
            if isinstance(reuse, Parked):
                prompt = self._extension(job, self._parked.pop(reuse.key, reuse), reuse.tokens)
            else:
                prompt = self._extension(job, slot, self.decoder.sequences[slot.seq].tokens) if reuse else None
            canonical = None
            if prompt is None or len(prompt) >= engine.n_ctx_seq:
                text = engine.template.render(work.messages, add_generation_prompt=True,
                                              enable_thinking=work.think, tools=work.tools, mark_content=True)
                canonical = engine.tokenize_prompt(text, engine.n_ctx_seq)
                if prompt is None or len(canonical) < engine.n_ctx_seq:
                    prompt = canonical
            if len(prompt) >= engine.n_ctx_seq:
                raise ContextOverflowError(prompt_tokens=len(prompt), context_tokens=engine.n_ctx_seq,
                                           per_conversation=True)
            if slot.key is not None and reuse is not True:
                slot.evictions += 1
                self._park(slot)
            slot.key = None       # until this reply completes, the sequence holds no reusable conversation
            # Asked at each </tool_call> with the answer so far (a tool the server runs).
            stop_after_call = (None if job.stop_after_call is None
                               else lambda: job.stop_after_call("".join(job.answer)))
            job.turn = self.decoder.start(slot.seq, prompt, work.options, sink, answer_sampler=job.answer_sampler,
                                          stop_after_call=stop_after_call)
            job.answer_sampler = None     # the turn owns it now (until then a failure here frees it)
            if job.stopped:
                job.turn.stop()
            self.prompt_tokens += len(prompt)
            self.evaluated_tokens += job.turn.evaluated
            job.deliver(Started(len(prompt), job.turn.evaluated, reuse and canonical is None))
        except ContextOverflowError as err:
            self._release(slot, Failed(400, error_message(err), code="context_length_exceeded"), job)
        except LocalCascadeError as err:
            status = 400 if _is_request_fault(err) else 500
            self._release(slot, Failed(status, error_message(err), "invalid_request_error" if status == 400 else "server_error"),
                          job)
        except Exception as err:  # noqa: BLE001 - a bug must fail one request, not the server
            self._release(slot, Failed(500, f"internal error: {type(err).__name__}: {err}", "server_error"), job)

    def _release(self, slot: Slot, outcome: object, job: Job) -> None:
        job.drop_sampler()
        with self._cond:
            slot.job = None
            slot.last_used = time.monotonic()
        job.deliver(outcome)

    def _extension(self, job: Job, slot: Slot | Parked, held: list[int]) -> list[int] | None:
        """The ``held`` tokens of ``slot``'s conversation plus the template's text for the messages after
        its reply, or None."""
        engine = self.engine
        n_held = len(slot.key) - 1          # key[0] is the tools
        messages = [dict(m) for m in job.work.messages]
        reply = messages[n_held - 1]
        reply["content"] = _SENTINEL
        reply.pop("reasoning_content", None)
        text = engine.template.render(messages, add_generation_prompt=True,
                                      enable_thinking=job.work.think, tools=job.work.tools, mark_content=True)
        if text.count(_SENTINEL) != 1:
            return None
        tail = text.split(_SENTINEL, 1)[1]
        # What follows the reply's text up to its end of turn (tool-call blocks) is already in the
        # context as the model wrote it; the template's end-of-turn marker on is new (the model may
        # have ended with another end-of-generation token, or none at all).
        found = [at for at in (tail.find(marker) for marker in slot.end_texts) if at >= 0]
        if not found:
            return None
        at = min(found)
        extra = [engine.think_close] if slot.ended_in_thinking and engine.think_close is not None else []
        return list(held) + extra + engine.vocab.tokenize_marked(tail[at:])

    def _end(self, turn: Reply) -> None:
        slot = self.slots[turn.seq]
        job = slot.job
        if job is None:
            return
        stats = job.stats
        at_call = turn.stop_reason == "tool_call"
        if at_call:
            job.kept_sampler = turn.sampler     # the next round goes on with it
        complete = turn.stop_reason in ("stop", "length", "tool_call") and not job.stopped and turn.error is None
        vocab = self.engine.vocab
        with self._cond:
            if complete:
                slot.key = job.work.key + (job.reply_key_of("".join(job.answer)),)
                slot.ended_in_thinking = bool(stats and stats.ended_in_thinking)
                # A reply stopped at a call holds everything before its (unevaluated) </tool_call>:
                # the next round's prompt takes the template's text from there on.
                slot.end_texts = (TOOL_CALL_CLOSE,) if at_call else _end_texts(vocab, turn.end_token)
            slot.job = None
            slot.last_used = time.monotonic()
            self._cond.notify()
        if turn.error is not None:
            job.deliver(Failed(500, turn.error, "server_error"))
        elif job.stopped and self._stopping() is not None:
            job.deliver(self._stopping())
        else:
            job.deliver(stats)

    def _stopping(self) -> Failed | None:
        """The outcome of a reply the server's shutdown ended, or None while it is not stopping."""
        if self._draining is None:
            return None
        return Failed(503, self._draining, "server_error", "server_shutdown")


def _end_texts(vocab, ended_with: int | None) -> tuple[str, ...]:
    import llama_cpp

    tokens = (ended_with, llama_cpp.llama_vocab_eot(vocab.handle), vocab.eos)
    return tuple(vocab.text_of(t) for t in tokens if t is not None and t >= 0 and vocab.text_of(t))


def _is_request_fault(err: LocalCascadeError) -> bool:
    from localcascade.errors import ChatTemplateError, UsageError

    return isinstance(err, (UsageError, ChatTemplateError))
