"""Progress on stderr for the long steps (downloading, loading a model, quantizing), the same way for each.

On a terminal that can redraw (``console.can_redraw``) it is a rich progress bar. Everywhere else,
in a pipe, a log file, under NO_COLOR or TERM=dumb, it is plain lines with no escape codes and
no carriage returns, so a log read later still shows that the step was alive and how far it got.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from localcascade.cli.console import can_redraw, make_console

# Plain load lines at most this often: a load of a few seconds (every test model, a cached small
# model) adds nothing to a script's stderr, and a minute-long load of a 20 GB file shows ~a dozen.
LOAD_LINE_EVERY_S = 5.0


class _StderrProgress:
    """A rich bar where the console can redraw; ``self.live`` False means the subclass prints plain lines."""

    def __init__(self, *columns, console=None, transient: bool = False) -> None:
        from rich.progress import Progress

        self.console = console if console is not None else make_console(stderr=True)
        self.live = can_redraw(self.console)
        self.bar = Progress(*columns, console=self.console, disable=not self.live, transient=transient)
        self.task = None

    def _advance(self, completed: float, total: float, description: str = "") -> None:
        if self.task is None:
            self.task = self.bar.add_task(description, total=total)
        self.bar.update(self.task, completed=completed, description=description)

    def _plain(self, line: str) -> None:
        self.console.file.write(line + "\n")
        self.console.file.flush()

    def __enter__(self):
        self.bar.__enter__()
        return self.update

    def update(self, *args) -> None:  # pragma: no cover - each subclass says what it counts
        raise NotImplementedError

    def __exit__(self, *exc) -> bool:
        self.bar.__exit__(*exc)
        return False


class LoadProgress(_StderrProgress):
    """Loading a model: a bar that disappears once loaded, or a plain line at most every few seconds.

    ``with LoadProgress("model.gguf") as report:`` gives the ``report(fraction)`` callback the engine
    calls while it reads the weights.
    """

    def __init__(self, label: str, *, console=None, clock: Callable[[], float] = time.monotonic) -> None:
        from rich.progress import BarColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn

        super().__init__(TextColumn(f"loading {label}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                         console=console, transient=True)
        self.label = label
        self.clock = clock
        self.last_line_at = clock()
        self.last_percent = -1
        self.lines = 0

    def update(self, fraction: float) -> None:
        percent = max(0, min(100, int(fraction * 100)))
        if self.live:
            self._advance(percent, 100)
            return
        if percent == self.last_percent:
            return
        now = self.clock()
        # The last line closes what earlier lines opened; a load too quick for any line ends silent.
        finished = percent >= 100 and self.lines > 0
        if finished or (percent < 100 and now - self.last_line_at >= LOAD_LINE_EVERY_S):
            self._plain(f"loading {self.label}: {percent}%")
            self.last_line_at, self.last_percent = now, percent
            self.lines += 1


class QuantizeProgress(_StderrProgress):
    """Quantizing: a bar with the tensor being written, or a plain line per 10 % of the tensors."""

    def __init__(self, target: str, *, console=None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

        super().__init__(TextColumn(f"quantizing to {target}"), BarColumn(), MofNCompleteColumn(),
                         TimeElapsedColumn(), TextColumn("{task.description}"), console=console)
        self.target = target
        self.last_tenth = -1

    def update(self, done: int, total: int, tensor: str) -> None:
        self._advance(done, total, tensor)
        if not self.live:
            tenth = done * 10 // max(total, 1)
            if tenth != self.last_tenth:
                self.last_tenth = tenth
                self._plain(f"quantizing to {self.target}: {done}/{total} tensors")


class DownloadProgress(_StderrProgress):
    """Downloading: a bar with bytes, speed and time left, or a plain line at most every few seconds.

    The hub draws nothing itself: ``pull(..., on_start=progress.start, on_bytes=progress.advance)``.
    """

    def __init__(self, label: str, *, console=None, clock: Callable[[], float] = time.monotonic) -> None:
        from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn, TransferSpeedColumn

        super().__init__(TextColumn(f"downloading {label}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                         TimeRemainingColumn(), console=console, transient=True)
        self.label = label
        self.clock = clock
        self.total = 0
        self.done = 0
        self.last_line_at = clock()

    def start(self, total: int, already_here: int) -> None:
        self.total, self.done = total, already_here
        self._advance(self.done, self.total)

    def advance(self, path: str, n: int) -> None:
        self.done += n
        if self.live:
            self._advance(self.done, self.total)
            return
        now = self.clock()
        if now - self.last_line_at >= LOAD_LINE_EVERY_S:
            from localcascade.units import format_bytes

            percent = int(100 * self.done / self.total) if self.total else 0
            self._plain(f"downloading {self.label}: {format_bytes(self.done)} of {format_bytes(self.total)} "
                        f"({percent}%)")
            self.last_line_at = now

    update = advance


@contextmanager
def load_progress(label: str, *, show: bool = True) -> Iterator[Optional[Callable[[float], None]]]:
    """The engine's load callback for ``label`` on stderr while the block runs (None when not ``show``)."""
    if not show:
        yield None
        return
    with LoadProgress(label) as report:
        yield report
