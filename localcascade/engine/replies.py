"""Pieces of a reply: its channels, and how a prompt relates to what a sequence holds.

A reply is split into thinking and answer by token id (``<think>`` / ``</think>``),
never by text: each side is a Channel with its own UTF-8-safe detokenizer.
"""

from __future__ import annotations

from localcascade.engine.events import AnswerText, ThinkingText
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
