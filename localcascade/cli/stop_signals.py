"""Signals that stop a streaming reply through its turn, the same way for every front end.

The first signal asks the turn to stop (``turn.stop()``): the engine ends the reply at the
next token, or between chunks of a prompt it is still reading, and still yields its stats,
so what was said is printed whole and accounted. A second signal of the same kind means
"now": ``interrupt(signum)`` raises at once (a prompt chunk on a CPU can take seconds).
"""

from __future__ import annotations

import signal
from typing import Callable


class StopOnSignals:
    """While in the ``with`` block, ``signals`` stop ``turn`` (set it once the reply starts)."""

    def __init__(self, signals: tuple[int, ...], interrupt: Callable[[int], None]) -> None:
        self.signals = signals
        self.interrupt = interrupt
        self.turn = None                     # anything with a thread-safe stop()
        self.received: int | None = None     # the first signal's number, once one came
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopOnSignals":
        for signum in self.signals:
            if signal.getsignal(signum) is signal.SIG_IGN:
                continue     # ignored by the parent (nohup, a background job): it stays ignored
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:   # not the main thread (a test calling in): signals stay as they are
                break
        return self

    def _handle(self, signum, _frame) -> None:
        if self.received is not None:
            self.interrupt(signum)
            return
        self.received = signum
        if self.turn is not None:
            self.turn.stop()

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
