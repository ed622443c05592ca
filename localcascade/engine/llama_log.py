"""llama.cpp's log, captured.

llama.cpp (and ggml) print their load and runtime log through one global
callback. By default that goes to stderr, and llama-cpp-python's own callback
prints it too; a pipe-friendly tool must never let it reach stdout and should
show it only when asked. We install one callback for the process that keeps
the recent lines in memory (tests and ``--verbose`` read them) and echoes them
to stderr only when ``echo`` is on.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections import deque

# Every level is kept (DEBUG included: the tensor placement lines are debug);
# CONT pieces simply continue the current line.
_MAX_LINES = 20000   # a full-size model load logs a few thousand lines at debug level


class LlamaLog:
    """The recent llama.cpp log lines, with a switch to echo them to stderr."""

    def __init__(self) -> None:
        self.lines: deque[str] = deque(maxlen=_MAX_LINES)
        self.echo = False
        self._partial = ""
        self._lock = threading.Lock()
        self._callback = None   # the ctypes callback object; must outlive its registration
        self.total = 0          # lines ever recorded, so readers can take "lines since"

    def write(self, level: int, text: str) -> None:
        if self.echo:
            sys.stderr.write(text)
            sys.stderr.flush()
        with self._lock:
            self._partial += text
            while "\n" in self._partial:
                line, self._partial = self._partial.split("\n", 1)
                self.lines.append(line)
                self.total += 1

    def mark(self) -> int:
        """A position to pass to ``since`` later."""
        return self.total

    def since(self, mark: int) -> list[str]:
        """The lines recorded after ``mark`` (as many as are still kept)."""
        with self._lock:
            count = min(self.total - mark, len(self.lines))
            return list(self.lines)[len(self.lines) - count:] if count > 0 else []


LOG = LlamaLog()


def _send_again(err: BaseException) -> None:
    """A signal's exception (Ctrl-C, SIGTERM) raised inside this callback cannot cross the C
    frames below it: ctypes would print it and drop it, and the load or run would go on as if
    nothing had happened. The signal is sent again a moment later, from another thread, so it is
    delivered once the C code is back in Python (and again, should it land in a callback again)."""
    import os
    import signal

    signum = getattr(err, "signum", None) or (signal.SIGINT if isinstance(err, KeyboardInterrupt) else None)
    if signum:
        timer = threading.Timer(0.05, os.kill, (os.getpid(), signum))
        timer.daemon = True
        timer.start()


def install() -> LlamaLog:
    """Route llama.cpp's log into ``LOG`` (idempotent; also takes the route back from any other
    code that set its own callback since); returns ``LOG``."""
    import llama_cpp

    if LOG._callback is not None:
        llama_cpp.llama_log_set(LOG._callback, ctypes.c_void_p(0))
        return LOG

    @llama_cpp.llama_log_callback
    def _on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        try:
            LOG.write(level, text.decode("utf-8", errors="replace") if text else "")
        except Exception:  # a callback from C must never raise
            pass
        except BaseException as err:  # noqa: BLE001
            _send_again(err)

    LOG._callback = _on_log
    llama_cpp.llama_log_set(_on_log, ctypes.c_void_p(0))
    return LOG
