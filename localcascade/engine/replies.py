"""A reply and the sequence it runs on, as the decode loop (decoder.py) advances them; its channels;
how a prompt relates to what a sequence holds.

A reply is split into thinking and answer by token id (``<think>`` / ``</think>``),
never by text: each side is a Channel with its own UTF-8-safe detokenizer.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Callable

from localcascade.engine.drafts import Acceptance, NgramDrafter
from localcascade.engine.events import AnswerText, Event, ThinkingText, ToolCallText
from localcascade.engine.sampling import Sampler
from localcascade.engine.vocab import StreamDecoder


class Channel:
    """One side of a reply (thinking or answer): its UTF-8-safe detokenizer, text and token count."""

    def __init__(self, event: type[ThinkingText] | type[AnswerText]) -> None:
        self.event = event
        self.decoder = StreamDecoder()
        self.parts: list[str] = []
        self.tokens = 0

    def feed(self, piece: bytes) -> ThinkingText | AnswerText | None:
        self.tokens += 1
        return self._emit(self.decoder.feed(piece))

    def flush(self) -> ThinkingText | AnswerText | None:
        return self._emit(self.decoder.flush())

    def _emit(self, text: str) -> ThinkingText | AnswerText | None:
        if not self.parts:
            text = text.lstrip()   # the template's newline after <think> is not part of the text
        if not text:
            return None
        self.parts.append(text)
        return self.event(text)

    @property
    def text(self) -> str:
        return "".join(self.parts).strip()


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def opens_thinking(prompt: list[int], think_open: int | None, think_close: int | None) -> bool:
    """True when the prompt leaves a <think> open (the thinking-mode generation prompt)."""
    if think_open is None:
        return False
    for token in reversed(prompt):
        if token == think_close:
            return False
        if token == think_open:
            return True
    return False


class Sequence:
    """One llama.cpp sequence: the tokens its state holds, in order, and who uses it."""

    def __init__(self, seq_id: int) -> None:
        self.id = seq_id
        self.tokens: list[int] = []
        self.owner: object | None = None       # the conversation whose tokens these are (a Chat)
        self.lost_reason: str | None = None    # why the state was thrown away outside start()


class Reply:
    """One reply on one sequence, advanced by ``Decoder.step``; its events go to ``sink``."""

    def __init__(self, engine, sequence: Sequence, prompt: list[int], start: int,
                 options, sink: Callable[[Event], None], reset_reason: str | None, *,
                 answer_sampler: Sampler | None = None, stop_after_call: Callable[[], bool] | None = None,
                 stopped: Callable[[], bool] | None = None, grammar_spans_thinking: bool = False,
                 calls: str = "inline", checkpoints: list[tuple[int, bool]] | None = None) -> None:
        self.sequence = sequence
        self.seq = sequence.id
        self.prompt = prompt
        self.options = options
        self.sink = sink
        self.todo: list[int] = prompt[start:]   # to evaluate before the next sample
        self.evaluated = len(prompt) - start    # the prompt tokens it will evaluate
        self.read = 0                           # ... and has evaluated so far
        self.reset_reason = reset_reason
        self.checkpoints = checkpoints or []    # (prompt position, to disk too), ascending, to take
        self.last_periodic: tuple[int, ...] | None = None   # the every-N checkpoint it keeps in RAM
        self.thinking, self.answer, self.call = Channel(ThinkingText), Channel(AnswerText), Channel(ToolCallText)
        self.in_thinking = opens_thinking(prompt, engine.think_open, engine.think_close)
        self.in_call = False
        self.grammar_spans_thinking = grammar_spans_thinking
        self.calls = calls
        if grammar_spans_thinking:
            self.sampler, self._carried = answer_sampler or Sampler(engine.vocab.handle, options), None
        else:
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
        self.finish_after: str | None = None     # end with this reason once ``todo`` is evaluated
        self.error: str | None = None
        self.started = time.perf_counter()
        self.first_logits: float | None = None
        self.drafter: NgramDrafter | None = None   # made at the first draft, from the context then
        self.drafter_base = 0                      # the context position its history starts at
        self.acceptance = Acceptance()             # whether drafting pays for this reply
        self.drafts: list[int] = []                # the draft tokens at the end of ``todo`` this step
        self._stop = threading.Event()
        self._stopped_elsewhere = stopped

    def stop(self) -> None:
        """End the reply before its next token (any thread); its sequence is free after the next step."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set() or (self._stopped_elsewhere is not None and self._stopped_elsewhere())

    @property
    def generated(self) -> int:
        return self.thinking.tokens + self.answer.tokens + self.call.tokens

    def close_samplers(self, *, keep_current: bool = False) -> None:
        """Free the samplers this reply holds; with ``keep_current`` the one sampling now is left to
        whoever takes it over (a reply stopped at a tool call)."""
        if self._carried is not None:
            self._carried.close()
            self._carried = None
        if not keep_current:
            self.sampler.close()

    def _sampling(self, thinking: bool):
        return replace(self.options, grammar=None) if thinking else self.options
