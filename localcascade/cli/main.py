"""The command line's entry point: ``main`` registers every command on ``app`` (by importing its
module), runs it, and turns typed errors into one-line messages and exit codes, here and nowhere
else. It lives apart from the package's ``__init__`` so a command module importing a sibling
(``localcascade.cli.options``) does not import the module that imports it."""

from __future__ import annotations

import errno
import importlib
import os
import signal
import sys

import typer

from localcascade.errors import LocalCascadeError, Terminated
from localcascade.stderr import say

# typer >= 0.29 raises the exceptions of its own bundled copy of click; older typers use click itself.
_click = getattr(typer, "_click", None) or importlib.import_module("click")

from localcascade.cli.app import app  # noqa: E402,F401  (tests drive the registered app from here)

# Importing a command module registers its command(s) on ``app``.
from localcascade.cli import (  # noqa: E402,F401
    ask,
    bench,
    cache,
    doctor,
    fit,
    models,
    quantize,
    run,
    serve,
)


def _fail(message: str, code: int) -> int:
    say(message)
    return code


def _terminate(signum, _frame) -> None:
    raise Terminated(signum)


def _prepare_process() -> str | None:
    """Process-wide set-up before any command; returns a reason to refuse to run, or None."""
    # llama.cpp answers a failed assertion by attaching gdb and printing its backtrace to
    # stdout, which would land in the user's pipe; the one-line abort message is enough.
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    stdout_closed = False
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            # A closed standard stream: the next file opened (a model, the store) would get
            # this number and receive whatever is written to the stream.
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            stdout_closed |= fd == 1
    if sys.stdin is None:
        sys.stdin = open(0, closefd=False)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)
    if not isinstance(sys.stderr, _DiagnosticsStream):
        sys.stderr = _DiagnosticsStream(sys.stderr)
    if _on_main_thread():  # signal handlers can only be set there (tests may call main elsewhere)
        for name in ("SIGTERM", "SIGHUP"):
            # One the parent ignores stays ignored (nohup's SIGHUP): it chose that we outlive it.
            if hasattr(signal, name) and signal.getsignal(getattr(signal, name)) is not signal.SIG_IGN:
                signal.signal(getattr(signal, name), _terminate)
    return "standard output is closed: there is nowhere to write results" if stdout_closed else None


class _DiagnosticsStream:
    """stderr, for diagnostics only: once writing it fails (``2>/dev/full``, a closed terminal), later
    writes are dropped instead of ending the command, whose real output goes to stdout."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._failed = False

    def write(self, text: str) -> int:
        if not self._failed:
            try:
                return self._stream.write(text)
            except (OSError, ValueError):
                self._failed = True
        return len(text)

    def flush(self) -> None:
        if not self._failed:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._failed = True

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _on_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _silence_stdout() -> None:
    """After the reader went away or the disk filled: no more writes, not even Python's at exit."""
    try:
        sys.stdout.flush()
    except OSError:
        pass
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and map every failure to one line and an exit code."""
    original_stderr = sys.stderr
    try:
        code = _run(argv)
    finally:
        sys.stderr = original_stderr
    sys.exit(code)


def _run(argv: list[str] | None) -> int:
    refusal = _prepare_process()
    if refusal:
        return _fail(refusal, 1)
    try:
        result = app(args=argv, prog_name="localcascade", standalone_mode=False)
        code = result if isinstance(result, int) else 0
        if code == 130:
            # typer turns a KeyboardInterrupt it meets into a bare exit status 130.
            code = _fail("interrupted", 130)
    except LocalCascadeError as err:
        from localcascade.cli.wording import error_line

        code = _fail(error_line(err), err.exit_code)
    except typer.Exit as err:
        code = err.exit_code
    except _click.exceptions.NoArgsIsHelpError as err:
        # Bare `localcascade` (or a group without its command): the help is what was asked for.
        typer.echo(err.ctx.get_help())
        code = 0
    except _click.exceptions.UsageError as err:
        hint = f" (see `{err.ctx.command_path} --help`)" if err.ctx is not None else ""
        code = _fail(f"{err.format_message()}{hint}", 2)
    except _click.exceptions.ClickException as err:
        code = _fail(err.format_message(), err.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        code = _fail("interrupted", 130)
    except Terminated as err:
        code = _fail("terminated", 128 + err.signum)
    except BrokenPipeError:
        # The reader went away (`| head -1`): stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        _silence_stdout()
        code = 0
    except SystemExit as err:
        # typer meets a broken pipe first in some commands and exits 1 for it.
        cause = err.__context__
        if not (isinstance(cause, OSError) and cause.errno == errno.EPIPE):
            raise
        _silence_stdout()
        code = 0
    except OSError as err:
        if err.filename:
            code = _fail(f"{err.filename}: {err.strerror or err}", 1)
        else:
            # Writing a stream failed: a full disk behind `> file`, a terminal that went away.
            _silence_stdout()
            code = _fail(f"cannot write the output: {err.strerror or err}", 1)
    return code
