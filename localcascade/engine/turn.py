"""A reply in progress: iterate it for its events, stop it from any thread.

Front ends stop replies for different reasons (Ctrl-C in the REPL, SIGTERM in
``ask``, a server client that went away), often from another thread than the
one iterating. ``stop()`` only sets a flag; the engine checks it before every
token (and between prompt chunks), ends the reply with stop_reason
"interrupted" and still yields its TurnStats, so a stopped reply is accounted
like any other.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterator

from localcascade.engine.events import Event


class Turn:
    """One reply: an iterator of events with a thread-safe ``stop()``."""

    def __init__(self, run: Callable[["Turn"], Iterator[Event]]) -> None:
        self._stop = threading.Event()
        self._events = run(self)

    def stop(self) -> None:
        """End the reply at the next token; safe to call from any thread, any number of times."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def __iter__(self) -> "Turn":
        return self

    def __next__(self) -> Event:
        return next(self._events)

    def close(self) -> None:
        """Abandon the iteration (the engine keeps what was said so far)."""
        self._events.close()
