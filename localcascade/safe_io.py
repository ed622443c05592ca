"""The one door for files a user names: reading inputs and writing outputs without surprises.

Inputs (``read_input``, ``read_text_input``, ``read_stream``): a regular file, or a pipe
(``--grammar-file <(cmd)`` is a pipe too, and useful), read up to a size cap that fits its use;
a folder, a device (``/dev/zero``), a socket or a symlink loop is refused by name; opening never
blocks (a FIFO with no writer), and a pipe that says nothing within ``PIPE_WAIT_S`` is given up.

Outputs (``check_output``, ``publish``, ``write_text_atomic``): only a missing path or a regular
file is ever written, even as root; a device node, a folder or a symbolic link is refused before
any work. New files are made with ``link(2)``, which fails if the name exists (the ``O_EXCL`` of a
rename), so two writers never both "succeed"; replacing an existing file re-checks it right before
the rename, under ``exclusive_lock`` when the caller holds one across check and rename.

Errors are ``InputFileError``/``OutputTargetError`` (usage errors, exit 2) with one line each.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from localcascade.errors import InputFileError, OutputTargetError

KIB = 1024
MIB = 1024 * KIB

# A prompt's cap follows the largest context: 1M tokens is ~4 MB of English text; 16 MiB leaves room
# for text that tokenizes densely and still bounds what is held in memory to a few times that.
PROMPT_MAX_BYTES = 16 * MIB
# A saved conversation is at most a context of text plus its JSON and the thinking kept with it.
CONVERSATION_MAX_BYTES = 64 * MIB
# Chat templates and grammars are code written by people: NVIDIA's own template is ~10 KB.
TEMPLATE_MAX_BYTES = 1 * MIB
GRAMMAR_MAX_BYTES = 1 * MIB
# An importance matrix holds a few floats per weight row: ~100 MB for the 30B model.
IMATRIX_MAX_BYTES = 4 * 1024 * MIB
# How long a pipe may stay silent before it is given up (a FIFO nobody writes to).
PIPE_WAIT_S = 10.0


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def _open_error(path: Path, what: str, err: OSError) -> InputFileError:
    if err.errno == errno.ENOENT:
        return InputFileError(f"{what} {path} not found")
    if err.errno == errno.ELOOP:
        return InputFileError(f"{what} {path} is a symbolic link loop")
    if err.errno == errno.ENXIO:
        return InputFileError(f"{what} {path} is a socket or a device with nothing behind it, not a file")
    return InputFileError(f"cannot read {what} {path}: {err.strerror or err}")


def _too_large(path: Path | str, what: str, limit: int) -> InputFileError:
    return InputFileError(f"{what} {path} is larger than {_size(limit)}, the most accepted for it")


def _size(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB and n % MIB == 0 else f"{n // KIB} KiB" if n % KIB == 0 else f"{n} bytes"


def _open_for_reading(path: Path, what: str) -> int:
    """A file descriptor for ``path``, opened without blocking; InputFileError in one line if it cannot be."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer, or a tape or modem device, returns at once.
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise _open_error(path, what, err) from None


def read_input(path: str | os.PathLike, *, what: str, limit: int, allow_pipe: bool = True,
               wait_s: float = PIPE_WAIT_S) -> bytes:
    """The bytes of a user-named input file, at most ``limit`` of them.

    ``what`` names the input in messages ("grammar file", "chat template"). A pipe is read
    (when ``allow_pipe``) until its writer closes it, for at most ``wait_s`` seconds.
    """
    path = Path(path).expanduser()
    fd = _open_for_reading(path, what)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            return _read_regular(fd, path, what, limit)
        if stat.S_ISFIFO(mode) and allow_pipe:
            return _read_pipe(fd, path, what, limit, wait_s)
        raise InputFileError(f"{what} {path} is {_kind(mode)}, not a regular file")
    except OSError as err:
        raise InputFileError(f"cannot read {what} {path}: {err.strerror or err}") from None
    finally:
        os.close(fd)


def check_input(path: str | os.PathLike, *, what: str, limit: int) -> Path:
    """Refuse a user-named input that another reader (llama.cpp, a child process) will open by path
    unless it is a regular file of at most ``limit`` bytes; returns the path, made absolute."""
    path = Path(path).expanduser()
    fd = _open_for_reading(path, what)
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(info.st_mode):
        raise InputFileError(f"{what} {path} is {_kind(info.st_mode)}, not a regular file")
    if info.st_size > limit:
        raise _too_large(path, what, limit)
    return path.absolute()


def read_text_input(path: str | os.PathLike, *, what: str, limit: int, allow_pipe: bool = True) -> str:
    """``read_input`` decoded as UTF-8; text that is not UTF-8 is refused in one line."""
    data = read_input(path, what=what, limit=limit, allow_pipe=allow_pipe)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputFileError(f"{what} {Path(path).expanduser()} is not UTF-8 text (byte {err.start})") from None


def _read_regular(fd: int, path: Path, what: str, limit: int) -> bytes:
    if os.fstat(fd).st_size > limit:
        raise _too_large(path, what, limit)
    chunks, total = [], 0
    while True:  # the size can change while reading (a growing log): the cap holds regardless
        chunk = os.read(fd, min(1 * MIB, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise _too_large(path, what, limit)


def _read_pipe(fd: int, path: Path | str, what: str, limit: int, wait_s: float) -> bytes:
    deadline = time.monotonic() + wait_s
    chunks, total = [], 0
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while True:
        left = deadline - time.monotonic()
        # Linux reports no POLLHUP on a FIFO no writer has opened yet: poll waits for one to come.
        if left <= 0 or not poller.poll(left * 1000):
            raise InputFileError(f"{what} {path} is a pipe that sent nothing for {wait_s:.0f} s; "
                                 "nothing is writing to it")
        try:
            chunk = os.read(fd, min(1 * MIB, limit + 1 - total))
        except BlockingIOError:
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise _too_large(path, what, limit)


def read_stream(stream, *, what: str, limit: int) -> bytes:
    """Up to ``limit`` bytes of an already-open stream (stdin) until its end; more is refused.

    A pipe from a slow command is waited for (the user sees it running and Ctrl-C stops it);
    an endless source (``< /dev/zero``) stops at the cap instead of filling memory.
    """
    raw = getattr(stream, "buffer", stream)
    chunks, total = [], 0
    while True:
        chunk = raw.read1(1 * MIB) if hasattr(raw, "read1") else raw.read(1 * MIB)
        if isinstance(chunk, str):
            chunk = chunk.encode("utf-8", "surrogateescape")
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise InputFileError(f"{what} is longer than {_size(limit)}, the most accepted for it")


# -- outputs ---------------------------------------------------------------------------------------

def check_output(path: str | os.PathLike, *, what: str = "output", overwrite: bool = False) -> Path:
    """Refuse an output path that must not be written: a missing folder, something that is not a
    regular file (a device node, a folder, a symbolic link, a pipe), or an existing file unless
    ``overwrite``. Returns the path, made absolute."""
    path = Path(path).expanduser().absolute()
    folder = path.parent
    if not folder.is_dir():
        raise OutputTargetError(f"cannot write {what} {path}: folder {folder} does not exist")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as err:
        raise OutputTargetError(f"cannot write {what} {path}: {err.strerror or err}") from None
    if not stat.S_ISREG(mode):
        raise OutputTargetError(f"{path} is {_kind(mode)}; {what} is only ever written as a regular file - "
                                "choose another path")
    if not overwrite:
        raise OutputTargetError(f"{path} already exists; choose another path, or replace it explicitly")
    return path


def publish(tmp: str | os.PathLike, final: str | os.PathLike, *, what: str = "output",
            overwrite: bool = False) -> None:
    """Move the finished ``tmp`` (same folder) to ``final`` in one step.

    Without ``overwrite`` the name is taken with ``link(2)``, which fails if anything holds it, so
    a file that appeared since the check is never replaced; with ``overwrite`` the target is
    checked again right before the rename (a device node or folder is still refused).
    """
    tmp, final = Path(tmp), Path(final)
    if overwrite:
        check_output(final, what=what, overwrite=True)
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise OutputTargetError(f"{final} appeared while {what} was being written (another process?); "
                                "it was left as it is and nothing was written there") from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # A filesystem without hard links (FAT, some network mounts): check and rename, the best it allows.
        check_output(final, what=what, overwrite=False)
        os.replace(tmp, final)
        return
    os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str, *, what: str = "output",
                      overwrite: bool = False) -> Path:
    """Write ``text`` to ``path`` through a temporary file beside it, so a crash never leaves half
    a file and a device node or folder at ``path`` is never touched."""
    path = check_output(path, what=what, overwrite=overwrite)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        publish(tmp_name, path, what=what, overwrite=overwrite)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return path


# -- locks -----------------------------------------------------------------------------------------

_held: dict[str, list] = {}        # lock path -> [fd, depth]: re-entered by the same process
_held_guard = threading.Lock()


@contextlib.contextmanager
def exclusive_lock(lock_path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if missing), waiting for it in the kernel.

    Re-entrant within a process (it orders processes, not the threads of one). Waiting in ``flock(2)`` rather than polling means a waiter is
    visible in /proc/locks, and Ctrl-C or SIGTERM still interrupt the wait.
    """
    import fcntl

    key = os.path.realpath(lock_path)
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is not None:
        try:
            yield
        finally:
            with _held_guard:
                entry[1] -= 1
        return
    fd = os.open(key, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    entry = [fd, 1]
    with _held_guard:
        _held[key] = entry
    try:
        yield
    finally:
        with _held_guard:
            entry[1] -= 1
            release = entry[1] == 0
            if release:
                del _held[key]
        if release:
            os.close(fd)  # closing the only descriptor releases the flock


def printable_name(name: str) -> bool:
    """A name safe to print in a tab-separated line and on a terminal: printable characters only
    (no tab, newline or escape sequence)."""
    return bool(name) and name.isprintable()


# How deep JSON may nest: saved conversations and the store index are a few levels deep; Python's
# parser would otherwise recurse until RecursionError, far from the place that reads the file.
JSON_MAX_DEPTH = 64


def load_json(text: str | bytes):
    """``json.loads`` that refuses nesting deeper than ``JSON_MAX_DEPTH`` with a ValueError, the
    error callers already handle for bad JSON, instead of a RecursionError."""
    import json

    if isinstance(text, bytes):
        text = text.decode("utf-8")
    depth = _max_depth(text)
    if depth > JSON_MAX_DEPTH:
        raise ValueError(f"JSON nested {depth} levels deep, more than the {JSON_MAX_DEPTH} accepted")
    return json.loads(text)


def _max_depth(text: str) -> int:
    """The deepest bracket nesting outside strings, in one linear pass."""
    import re

    depth = deepest = 0
    # Strings (with their escapes) are skipped whole; only brackets outside them count.
    for match in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest
