"""What was read is kept: sequence states (attention KV and recurrent state together) by token prefix.

A hybrid model's recurrent state cannot be cut back to an earlier token, so it can only be
restored where it was taken: the decoder takes checkpoints where later prompts will share the
prefix (the end of a piped document, the end of each prompt, every ``CHECKPOINT_EVERY`` tokens
of a long prompt) with llama.cpp's ``llama_state_seq_get_data_ext``, and restores the longest
one that starts a new prompt with ``llama_state_seq_set_data_ext``.

Checkpoints live in RAM (a byte budget, least recently used dropped first) and, for the ones
later processes will want (a document's end, a prompt's end), on disk in the user's cache
folder: bounded, least recently used evicted first, one folder per *identity* (everything that
changes the bytes: the model file's size, mtime, inode and a hash of its first MiB, the
llama.cpp build, the KV types, flash attention), one file per exact token prefix. Files are
written to a temporary name and renamed, readable by the user only, and checked when read
(magic, format version, identity, tokens, size, SHA-256): a file that fails is removed and the
prompt is evaluated, with one line under ``--verbose``. Nothing here raises to the caller: a
cache that cannot be used is a slower answer, never an error or a wrong state.

Settings (settings.py): LOCALCASCADE_STATE_CACHE (the folder), LOCALCASCADE_STATE_CACHE_SIZE
(disk budget, default 8 GiB; 0 or "off" turns the disk cache off), LOCALCASCADE_STATE_RAM
(RAM budget for checkpoints, default 1 GiB; 0 turns checkpoints off).
"""

from __future__ import annotations

import collections
import ctypes
import hashlib
import json
import os
import stat
import struct
import time
from array import array
from pathlib import Path
from typing import Callable

FORMAT_VERSION = 1
MAGIC = b"LCSTATE\x00"
SUFFIX = ".state"
RECORD_SUFFIX = ".json"
RECORD_LIMIT = 16 * 2**20   # bytes of a record (the server's evicted conversations: their tokens)
# A checkpoint every this many prompt tokens (RAM only; the latest per sequence is kept). Measured
# in docs/performance.md: on the tiny hybrid and Gemma a snapshot costs well under 1% of the time
# the tokens since the last one took to evaluate.
CHECKPOINT_EVERY = 1024
# Prompts shorter than this are not worth a checkpoint (a restore must save more than it costs).
MIN_CHECKPOINT_TOKENS = 256
# A restore is tried only when it saves at least this many tokens over what the sequence keeps.
MIN_RESTORE_GAIN = 32
_HEADER = struct.Struct("<8sII")   # magic, format version, length of the JSON header


def _token_bytes(tokens) -> bytes:
    return array("I", tokens).tobytes()


def prefix_hash(tokens) -> str:
    return hashlib.sha256(_token_bytes(tokens)).hexdigest()[:32]


def identity(model_path: Path, plan) -> str:
    """Everything that changes a state's bytes, hashed: a different file at the same path, another
    llama.cpp build or other KV types never match."""
    import llama_cpp

    st = os.stat(model_path)
    with open(model_path, "rb") as f:
        head = hashlib.sha256(f.read(1 << 20)).hexdigest()
    info = llama_cpp.llama_print_system_info()
    parts = {
        "format": FORMAT_VERSION,
        "file": [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, head],
        "llama_cpp": [llama_cpp.__version__, info.decode(errors="replace") if isinstance(info, bytes) else str(info)],
        "kv": [plan.type_k, plan.type_v, bool(plan.flash_attn)],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


# -- a sequence's state in and out of llama.cpp ----------------------------------------------------


def state_size(ctx, seq: int) -> int:
    """The bytes ``take_state`` would copy (llama.cpp counts them without copying)."""
    import llama_cpp

    return llama_cpp.llama_state_seq_get_size_ext(ctx, seq, 0)


def take_state(ctx, seq: int) -> bytearray:
    """The state of sequence ``seq`` (its attention KV and recurrent state)."""
    import llama_cpp

    size = llama_cpp.llama_state_seq_get_size_ext(ctx, seq, 0)
    data = bytearray(size)
    if size:
        view = (ctypes.c_uint8 * size).from_buffer(data)
        written = llama_cpp.llama_state_seq_get_data_ext(ctx, view, size, seq, 0)
        del view
        del data[written:]
    return data


def restore_state(ctx, seq: int, data: bytearray, n_tokens: int) -> bool:
    """Make sequence ``seq`` hold ``data`` (``n_tokens`` tokens); False (the sequence empty) if
    llama.cpp refuses it."""
    import llama_cpp

    memory = llama_cpp.llama_get_memory(ctx)
    llama_cpp.llama_memory_seq_rm(memory, seq, -1, -1)
    if not data:
        return False
    view = (ctypes.c_uint8 * len(data)).from_buffer(data)
    try:
        ok = llama_cpp.llama_state_seq_set_data_ext(ctx, view, len(data), seq, 0) != 0
    finally:
        del view
    if ok and llama_cpp.llama_memory_seq_pos_max(memory, seq) + 1 == n_tokens:
        return True
    llama_cpp.llama_memory_seq_rm(memory, seq, -1, -1)
    return False


# -- the cache ------------------------------------------------------------------------------------


class StateCache:
    """Checkpoints by exact token prefix: in RAM within ``ram_budget`` bytes, on disk under ``folder``
    within ``disk_budget`` bytes. ``note`` receives one line per problem (shown under --verbose)."""

    def __init__(self, key: str, *, folder: Path | None, disk_budget: int, ram_budget: int,
                 note: Callable[[str], None] | None = None) -> None:
        self.key = key
        self.root = folder
        self.disk_budget = disk_budget if folder is not None else 0
        self.ram_budget = ram_budget
        self._note = note
        self._ram: collections.OrderedDict[tuple[int, ...], bytearray] = collections.OrderedDict()
        self._ram_bytes = 0
        self._noted: set[str] = set()
        self.restored_tokens = 0       # what restores saved, for stats
        self.bytes_written = 0

    @property
    def enabled(self) -> bool:
        return self.ram_budget > 0 or self.disk_budget > 0

    @property
    def folder(self) -> Path | None:
        return self.root / self.key if self.root is not None else None

    def note(self, text: str) -> None:
        if self._note is not None and text not in self._noted:
            self._noted.add(text)
            self._note(text)

    # -- keeping -------------------------------------------------------------------------------

    def put(self, tokens: list[int], data: bytearray, *, disk: bool, replaces: tuple[int, ...] | None = None) -> None:
        """Keep ``data``, the state after ``tokens``: in RAM, and on disk when ``disk``."""
        key = tuple(tokens)
        if replaces is not None and replaces != key:
            self._drop(replaces)
        if 0 < len(data) <= self.ram_budget:
            self._drop(key)
            self._ram[key] = data
            self._ram_bytes += len(data)
            while self._ram_bytes > self.ram_budget:
                _, old = self._ram.popitem(last=False)
                self._ram_bytes -= len(old)
        if disk and self.disk_budget > 0:
            self._write(key, data)

    def _drop(self, key: tuple[int, ...]) -> None:
        old = self._ram.pop(key, None)
        if old is not None:
            self._ram_bytes -= len(old)

    def best(self, prompt: list[int], limit: int, longer_than: int) -> tuple[int, bytearray] | None:
        """The longest kept state (tokens, data) whose tokens start ``prompt`` and number at most
        ``limit`` and more than ``longer_than``; a RAM one before a disk one of the same length."""
        found: tuple[int, bytearray] | None = None
        for key, data in self._ram.items():
            n = len(key)
            if longer_than < n <= limit and (found is None or n > found[0]) and tuple(prompt[:n]) == key:
                found = (n, data)
        if found is not None:
            self._ram.move_to_end(tuple(prompt[:found[0]]))
        for n, path in self._disk_candidates(prompt, limit, max(longer_than, found[0] if found else 0)):
            data = self._read(path, prompt[:n])
            if data is not None:
                return n, data
        return found

    # -- disk ----------------------------------------------------------------------------------

    def _usable_root(self) -> Path | None:
        """The cache folder, made if missing (user-only), or None (with a note) when it cannot be used."""
        if self.root is None or self.disk_budget <= 0:
            return None
        folder = self.folder
        try:
            for path in (self.root, folder):
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    os.makedirs(path, mode=0o700, exist_ok=True)
                    st = os.lstat(path)
                if not stat.S_ISDIR(st.st_mode):
                    self.note(f"state cache off: {path} is not a folder")
                    self.disk_budget = 0
                    return None
        except OSError as err:
            self.note(f"state cache off: cannot make {err.filename or folder}: {err.strerror or err}")
            self.disk_budget = 0
            return None
        return folder

    def _disk_candidates(self, prompt: list[int], limit: int, longer_than: int) -> list[tuple[int, Path]]:
        """Entries whose token count and prefix hash match ``prompt``, longest first."""
        if self.root is None or self.disk_budget <= 0:
            return []
        folder = self.folder
        try:
            names = os.listdir(folder)
        except OSError:
            return []
        matches = []
        hashes: dict[int, str] = {}
        for name in names:
            if not name.endswith(SUFFIX):
                continue
            count, _, digest = name[:-len(SUFFIX)].partition("-")
            if not count.isdigit():
                continue
            n = int(count)
            if not longer_than < n <= limit:
                continue
            if n not in hashes:
                hashes[n] = prefix_hash(prompt[:n])
            if hashes[n] == digest:
                matches.append((n, folder / name))
        return sorted(matches, reverse=True)

    def _read(self, path: Path, tokens: list[int]) -> bytearray | None:
        """The state in ``path`` if every check passes; otherwise the file is removed (noted) and None."""
        problem = None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as err:
            problem = f"cannot open it: {err.strerror or err}"
        else:
            try:
                problem, data = _check(fd, self.key, tokens)
                if problem is None:
                    os.utime(fd if os.utime in os.supports_fd else path)   # recently used: kept longest
                    return data
            except OSError as err:
                problem = f"cannot read it: {err.strerror or err}"
            finally:
                os.close(fd)
        done = "removed" if self._remove(path) else "skipped"
        self.note(f"state cache: {path.name} {done} ({problem}); the prompt is evaluated")
        return None

    @staticmethod
    def _remove(path: Path) -> bool:
        """Remove a bad entry (a file, a link, a FIFO; never a folder): whether it is gone."""
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                return False
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError:
            return False
        return True

    def _write(self, key: tuple[int, ...], data: bytearray) -> None:
        folder = self._usable_root()
        if folder is None:
            return
        tokens = _token_bytes(key)
        header = json.dumps({
            "identity": self.key,
            "n_tokens": len(key),
            "state_bytes": len(data),
            "sha256": hashlib.sha256(tokens + data).hexdigest(),
        }).encode()
        size = _HEADER.size + len(header) + len(tokens) + len(data)
        if size > self.disk_budget:
            return
        final = folder / f"{len(key)}-{prefix_hash(key)}{SUFFIX}"
        try:
            st = os.lstat(final)
        except FileNotFoundError:
            pass
        except OSError:
            return
        else:
            if stat.S_ISREG(st.st_mode):
                os.utime(final, follow_symlinks=False)   # already kept (read back, or another process wrote it)
            return   # something else under that name was noted when it was read; it is left alone
        if self._write_atomically(folder, final, (_HEADER.pack(MAGIC, FORMAT_VERSION, len(header)), header, tokens, data)):
            self.bytes_written += size
        else:
            return
        evict(self.root, self.disk_budget)


    def _write_atomically(self, folder: Path, final: Path, chunks) -> bool:
        """Write ``chunks`` to ``final`` under a temporary name (user-only, never through a link) and
        rename it into place; whether it was written (a failure is noted, a read-only folder ends
        writing for this process)."""
        tmp = folder / f".{final.name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
            try:
                with os.fdopen(fd, "wb", closefd=False) as f:
                    for chunk in chunks:
                        f.write(chunk)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            return True
        except OSError as err:
            self.note(f"state cache: cannot write to {folder}: {err.strerror or err}; continuing without it")
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(err, PermissionError) or err.errno in (30,):   # read-only: stop trying
                self.disk_budget = 0
            return False

    # -- records: small JSON beside the states (the server's evicted conversations) -------------

    def put_record(self, name: str, value) -> None:
        """Keep ``value`` (JSON) as record ``name`` on disk, replacing the last one, when it is at most
        RECORD_LIMIT bytes."""
        if self.disk_budget <= 0:
            return
        folder = self._usable_root()
        if folder is None:
            return
        data = json.dumps(value, separators=(",", ":")).encode()
        if len(data) > RECORD_LIMIT:
            self.note(f"state cache: the {name} record is over {RECORD_LIMIT} bytes; not kept")
            return
        self._write_atomically(folder, folder / f"{name}{RECORD_SUFFIX}", (data,))

    def record(self, name: str):
        """Record ``name`` as kept, or None: none kept, or one that is not a readable JSON file of at
        most RECORD_LIMIT bytes (noted; a folder, a FIFO or a link under its name is not read)."""
        folder = self.folder
        if self.disk_budget <= 0 or folder is None:
            return None
        path = folder / f"{name}{RECORD_SUFFIX}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return None
        except OSError as err:
            self.note(f"state cache: cannot read {path}: {err.strerror or err}; ignored")
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > RECORD_LIMIT:
                self.note(f"state cache: {path} is not a record file; ignored")
                return None
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(RECORD_LIMIT + 1)
            return json.loads(data)
        except (OSError, ValueError) as err:
            self.note(f"state cache: {path} cannot be read ({type(err).__name__}); ignored")
            return None
        finally:
            os.close(fd)


def _check(fd: int, key: str, tokens: list[int]) -> tuple[str | None, bytearray | None]:
    """(None, state) if the file open at ``fd`` holds the state after ``tokens`` for identity ``key``,
    else (what is wrong, None)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file", None
    with os.fdopen(os.dup(fd), "rb") as f:
        head = f.read(_HEADER.size)
        if len(head) != _HEADER.size:
            return "cut short", None
        magic, version, header_len = _HEADER.unpack(head)
        if magic != MAGIC:
            return "not a state file", None
        if version != FORMAT_VERSION:
            return f"format version {version}, not {FORMAT_VERSION}", None
        if header_len > 1 << 16:
            return "a damaged header", None
        try:
            header = json.loads(f.read(header_len))
            n_tokens, state_bytes, digest = int(header["n_tokens"]), int(header["state_bytes"]), str(header["sha256"])
            identity_key = header["identity"]
        except (ValueError, KeyError, TypeError):
            return "a damaged header", None
        if identity_key != key:
            return "another model, build or KV type", None
        if n_tokens != len(tokens):
            return "another prompt", None
        expected = _HEADER.size + header_len + 4 * n_tokens + state_bytes
        if st.st_size != expected:
            return f"{st.st_size} bytes, not {expected}", None
        stored_tokens = f.read(4 * n_tokens)
        data = bytearray(state_bytes)
        if f.readinto(data) != state_bytes:
            return "cut short", None
    if stored_tokens != _token_bytes(tokens):
        return "another prompt", None
    if hashlib.sha256(stored_tokens + data).hexdigest() != digest:
        return "checksum mismatch", None
    return None, data


# -- the whole cache folder (the `cache` command, eviction) ----------------------------------------


def entries(root: Path) -> list[tuple[Path, int, float]]:
    """(path, bytes, last used) of every state file under ``root``, oldest first."""
    found = []
    try:
        folders = [root / name for name in os.listdir(root)]
    except OSError:
        return []
    for folder in folders:
        try:
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                continue
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if not name.endswith(SUFFIX) or name.startswith("."):
                continue
            path = folder / name
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.append((path, st.st_size, st.st_mtime))
    return sorted(found, key=lambda e: e[2])


def evict(root: Path, budget: int) -> int:
    """Remove the least recently used entries until the folder holds at most ``budget`` bytes;
    returns the bytes removed."""
    found = entries(root)
    total = sum(size for _, size, _ in found)
    removed = 0
    for path, size, _ in found:
        if total <= budget:
            break
        try:
            os.unlink(path)
        except OSError:
            continue
        total -= size
        removed += size
    for folder in {path.parent for path, _, _ in found}:
        try:
            os.rmdir(folder)   # only when empty
        except OSError:
            pass
    return removed


def clear(root: Path) -> int:
    """Remove every entry (and left-over temporary files); returns the bytes removed."""
    removed = evict(root, 0)
    try:
        folders = [root / name for name in os.listdir(root)]
    except OSError:
        return removed
    for folder in folders:
        try:
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                continue
            for name in os.listdir(folder):
                if name.startswith(".") and name.endswith(".tmp"):
                    os.unlink(folder / name)
            os.rmdir(folder)
        except OSError:
            pass
    return removed
