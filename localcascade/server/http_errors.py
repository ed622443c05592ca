"""Failures as OpenAI shapes them, ``{"error": {"message", "type", "param", "code"}}``, each logged
as one line on stderr, at most one line a second for each status: a client hammering the server
with refused requests must not fill the disk with its log."""

from __future__ import annotations

import threading
import time

from fastapi.responses import JSONResponse

from localcascade.errors import ContextOverflowError, LocalCascadeError
from localcascade.stderr import say


class RateLimitedLog:
    """Lines to stderr, at most one a second per ``kind``; the ones held back are counted in the next."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def __call__(self, line: str, kind: str = "") -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -self.interval_s) < self.interval_s:
                self._held[kind] = self._held.get(kind, 0) + 1
                return
            self._last[kind] = now
            held = self._held.pop(kind, 0)
        more = f" (and {held} more like it not shown)" if held else ""
        say(f"{line}{more}")


def error_message(err: LocalCascadeError) -> str:
    """A typed error in the server's words: the message a client gets. The lower layers name no
    setting of any front end; where the remedy is the client's, it is said in the request's terms."""
    if isinstance(err, ContextOverflowError) and err.prompt_tokens is not None:
        return f"{err}: shorten the messages"
    return str(err)


log = RateLimitedLog()
LOGGED_MESSAGE_CHARS = 300      # the client gets the whole message; the log, its start


def error_response(status: int, message: str, kind: str = "invalid_request_error", *,
                   param: str | None = None, code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def refused(method: str, path: str, status: int, message: str, kind: str = "invalid_request_error",
            **extra) -> JSONResponse:
    """The error response for a refused request, logged (rate-limited per status)."""
    log(f"{status} {method} {_printable(path)}: {_printable(message, LOGGED_MESSAGE_CHARS)}",
        kind=f"{status}:{extra.get('code') or message[:60]}")
    return error_response(status, message, kind, **extra)


def _printable(text: str, at_most: int = 200) -> str:
    """Client-made text as one harmless line: no escapes for the terminal, no line breaks, and cut
    short (a message may quote what the client sent)."""
    cut = text[:at_most]
    return "".join(c if c.isprintable() else "?" for c in cut) + ("..." if len(text) > at_most else "")
