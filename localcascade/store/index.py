"""The store index (``<data dir>/store.json``): what localcascade remembers about model files.

Two sections, both read and written only here:

- ``models``: files made by ``localcascade quantize``, registered by name (they live wherever the
  user put them, so nothing but this record finds them);
- ``verified``: which files (keyed by the blob's real path) were checked, how and when, so a
  20 GB file is hashed once, not on every ``pull``.

The index is JSON written to a temporary file and renamed (safe_io), so a crash never leaves it
half-written, and every read-modify-write of it holds a file lock (``store.json.lock``), so a pull
and a quantize running at once keep each other's records. The downloader (hub) records checks
here and the store reads them; neither imports the other.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

from localcascade import safe_io, settings
from localcascade.errors import InputFileError, LocalCascadeError, OutputTargetError

_INDEX_VERSION = 1
# The index holds a few records per model: far below this, which bounds what a broken one costs.
_INDEX_MAX_BYTES = 64 * safe_io.MIB

# What each entry must hold for the code to read it: (key, accepted types, required).
_MODEL_FIELDS = (("files", list, True), ("quant", (str, type(None)), False),
                 ("source", (str, type(None)), False), ("created", (str, type(None)), False))
_VERIFIED_FIELDS = (("size", int, True), ("checked_at", str, True), ("verified", bool, False),
                    ("sha256", (str, type(None)), False), ("check", (str, type(None)), False))


def index_path() -> Path:
    return settings.data_dir() / "store.json"


def index_lock_path() -> Path:
    """The lock every read-modify-write of the index holds (``rm`` holds it across its check and delete)."""
    path = index_path()
    return path.with_name(path.name + ".lock")


def outputs_lock_path() -> Path:
    """The lock held across the last check of an output path, its rename and its registration."""
    return settings.data_dir() / "outputs.lock"


def file_key(path: Path | str) -> str:
    """How the index names a file: its real path, so a snapshot link and its blob are one file."""
    return os.path.realpath(path)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def reason(err: OSError) -> str:
    return err.strerror or str(err)


# -- reading -----------------------------------------------------------------------------------

def load_index() -> dict:
    """The index as ``{"version", "models", "verified"}``; empty when there is none yet.

    A file that is not a readable index is an error, not a fresh index: starting afresh would drop
    every registered model, and the next save would overwrite records worth recovering by hand.
    """
    path = index_path()
    try:
        if not os.path.lexists(path):
            raise FileNotFoundError(path)
        raw = safe_io.read_input(path, what="the store index", limit=_INDEX_MAX_BYTES, allow_pipe=False)
        data = safe_io.load_json(raw)
    except FileNotFoundError:
        data = {}
    except InputFileError as err:
        raise LocalCascadeError(f"{err} (move it away to start afresh)") from None
    except OSError as err:
        raise LocalCascadeError(f"cannot read the store index {path}: {reason(err)}") from None
    except ValueError as err:
        raise LocalCascadeError(f"the store index {path} is unreadable ({err}); move it away to start afresh") from None
    if not isinstance(data, dict):
        _malformed(path, f"a JSON {type(data).__name__}, not an object")
    data.setdefault("version", _INDEX_VERSION)
    data.setdefault("models", {})
    data.setdefault("verified", {})
    for key in ("models", "verified"):
        if not isinstance(data[key], dict):
            _malformed(path, f"its {key!r} is a JSON {type(data[key]).__name__}, not an object")
    _check_entries(path, data)
    return data


def _malformed(path: Path, what: str) -> None:
    raise LocalCascadeError(f"the store index {path} is not a localcascade index ({what}); "
                            "move it away to start afresh")


def _check_entries(path: Path, data: dict) -> None:
    """Refuse an index with an entry the store cannot read, naming that entry.

    Refused rather than skipped: every command goes on reading the file as it is and
    nothing rewrites it, so the other entries (and the bad one) stay for the user to fix.
    """
    for section, fields in (("models", _MODEL_FIELDS), ("verified", _VERIFIED_FIELDS)):
        for key, entry in data[section].items():
            problem = _entry_problem(entry, fields)
            if section == "models" and problem is None:
                files = entry["files"]
                if not files or not all(isinstance(f, str) and f for f in files):
                    problem = "its 'files' must be a list of file paths"
            if problem is not None:
                raise LocalCascadeError(
                    f"the store index {path} has a malformed entry {section}[{key!r}] ({problem}); "
                    "fix or delete that entry by hand (localcascade leaves the file as it is)"
                )


def _entry_problem(entry, fields) -> str | None:
    if not isinstance(entry, dict):
        return f"a JSON {_json_type(entry)}, not an object"
    for name, types, required in fields:
        if name not in entry:
            if required:
                return f"no {name!r}"
            continue
        value = entry[name]
        if types is int:
            # bool is an int in Python, never a size.
            if not isinstance(value, int) or isinstance(value, bool):
                return f"its {name!r} is not a whole number"
        elif not isinstance(value, types):
            return f"its {name!r} is a JSON {_json_type(value)}"
    return None


def _json_type(value) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
             int: "number", float: "number"}
    return names.get(type(value), type(value).__name__)


# -- writing -----------------------------------------------------------------------------------

def cannot_write(path: Path, err: OSError, verb: str = "write") -> LocalCascadeError:
    return LocalCascadeError(
        f"cannot {verb} {path}: {reason(err)} (the store index lives in {settings.data_dir()}; "
        "set LOCALCASCADE_HOME to a writable folder)"
    )


def _save_index(data: dict) -> None:
    path = index_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Through a temporary file and a rename (a crash never leaves half an index), and never
        # over a device node or folder someone put at the index's path.
        safe_io.write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n",
                                  what="the store index", overwrite=True)
    except OutputTargetError as err:
        raise LocalCascadeError(str(err)) from None
    except OSError as err:
        raise cannot_write(path, err) from None


@contextlib.contextmanager
def locked(lock_path: Path | None = None):
    """Hold ``lock_path`` (the index's lock by default) across processes."""
    lock_path = lock_path or index_lock_path()
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise cannot_write(lock_path.parent, err, "create") from None
    try:
        lock = safe_io.exclusive_lock(lock_path)
        lock.__enter__()
    except OSError as err:
        raise cannot_write(lock_path, err) from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def publishing():
    """Hold the outputs lock: two commands writing the same output file (two ``quantize --out X``)
    take turns between their last check of X and its registration, so the file and the index
    describe the same result."""
    return locked(outputs_lock_path())


@contextlib.contextmanager
def updating_index():
    """Load, let the caller change, and save the index while holding its lock across processes."""
    with locked():
        data = load_index()
        yield data
        _save_index(data)


def check_writable() -> None:
    """Refuse now, with one line, when the index could not be updated later (a read-only
    LOCALCASCADE_HOME): a quantization must not run for an hour and then fail to register."""
    with locked():
        load_index()
        path = index_path()
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            os.unlink(tmp)
        except OSError as err:
            raise cannot_write(path.parent, err) from None


# -- verification records ----------------------------------------------------------------------

def record_verified(path: Path, *, sha256: str | None, size: int, verified: bool,
                    check: str = "sha256") -> str | None:
    """Remember that ``path`` (a blob or a local file) hashed to ``sha256`` and whether that was checked.

    Best effort: the record only saves hashing the file again, so an index that cannot be
    read or written must not fail a download that succeeded. Returns why it could not be
    recorded, for the command to say, or None.
    """
    try:
        with updating_index() as data:
            data["verified"][file_key(path)] = {
                "sha256": sha256, "size": size, "verified": verified,
                "check": check if verified else "unverified", "checked_at": now(),
            }
    except LocalCascadeError as err:
        return str(err)
    return None


def verified_record(path: Path) -> dict | None:
    """What was recorded for ``path``, if its size still matches (a changed file needs a new check).

    None too when the index cannot be read: the caller hashes the file again, which is only
    slower, and recording the result then says what is wrong with the index.
    """
    try:
        record = load_index()["verified"].get(file_key(path))
    except LocalCascadeError:
        return None
    try:
        if record and record.get("size") == Path(path).stat().st_size:
            return record
    except OSError:
        pass
    return None
