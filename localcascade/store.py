"""The local model store: GGUF models in the Hugging Face cache plus files quantized here.

- Models in the HF cache are found by scanning it (``scan_cache_dir``), so files
  another tool downloaded count too. Any repo holding ``.gguf`` files is listed;
  the shards of a split set are one model.
- Files made by ``localcascade quantize`` live wherever the user put them and
  are registered by name in an index (``<data dir>/store.json``).
- The same index records which files were verified, how, and when (keyed by the
  blob's real path), so a 20 GB file is hashed once, not on every ``pull``.

The index is JSON written to a temporary file and renamed, so a crash never
leaves it half-written, and every read-modify-write of it holds a file lock
(``store.json.lock``), so a pull and a quantize running at once keep each
other's records.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from localcascade import safe_io, settings
from localcascade.errors import InputFileError, LocalCascadeError, ModelNotFoundError, OutputTargetError, UsageError

_INDEX_VERSION = 1
# The index holds a few records per model: far below this, which bounds what a broken one costs.
_INDEX_MAX_BYTES = 64 * safe_io.MIB


@dataclass(frozen=True)
class StoredModel:
    """One model present on this machine."""

    name: str                      # what to type to use it: Q4_K_M, REPO:QUANT, hf://..., or a registered name
    where: str                     # "hf-cache" or "local"
    files: tuple[Path, ...]        # the file(s) llama.cpp opens (first = the one to load)
    size: int
    quant: str | None = None
    repo: str | None = None
    repo_files: tuple[str, ...] = ()  # paths in the repo (hf-cache)
    commit: str | None = None
    variant: str | None = None     # the catalog variant this is, if any
    verified: bool = False
    verified_at: str | None = None
    check: str | None = None       # how it was verified
    source: str | None = None      # quantized from
    blobs: tuple[Path, ...] = field(default=(), repr=False)

    @property
    def path(self) -> Path:
        return self.files[0]

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("blobs")
        data["files"] = [str(p) for p in self.files]
        data["repo_files"] = list(self.repo_files)
        data["path"] = str(self.path)
        return data


# -- the index ------------------------------------------------------------------------------

def index_path() -> Path:
    return settings.data_dir() / "store.json"


def _load_index() -> dict:
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
        raise LocalCascadeError(f"cannot read the store index {path}: {_reason(err)}") from None
    except ValueError as err:
        raise LocalCascadeError(f"the store index {path} is unreadable ({err}); move it away to start afresh") from None
    # An error, not a fresh index: starting afresh would drop every registered model and the next
    # save would overwrite the file, which may hold records worth recovering by hand.
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


# What each entry must hold for the code below to read it: (key, accepted types, required).
_MODEL_FIELDS = (("files", list, True), ("quant", (str, type(None)), False),
                 ("source", (str, type(None)), False), ("created", (str, type(None)), False))
_VERIFIED_FIELDS = (("size", int, True), ("checked_at", str, True), ("verified", bool, False),
                    ("sha256", (str, type(None)), False), ("check", (str, type(None)), False))


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


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


def _cannot_write(path: Path, err: OSError, verb: str = "write") -> LocalCascadeError:
    return LocalCascadeError(
        f"cannot {verb} {path}: {_reason(err)} (the store index lives in {settings.data_dir()}; "
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
        raise _cannot_write(path, err) from None


def index_lock_path() -> Path:
    """The lock every read-modify-write of the index holds (``rm`` holds it across its check and delete)."""
    path = index_path()
    return path.with_name(path.name + ".lock")


def outputs_lock_path() -> Path:
    """The lock held across the last check of an output path, its rename and its registration."""
    return settings.data_dir() / "outputs.lock"


@contextlib.contextmanager
def _locked(lock_path: Path | None = None):
    lock_path = lock_path or index_lock_path()
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _cannot_write(lock_path.parent, err, "create") from None
    try:
        lock = safe_io.exclusive_lock(lock_path)
        lock.__enter__()
    except OSError as err:
        raise _cannot_write(lock_path, err) from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def publishing():
    """Hold the outputs lock: two commands writing the same output file (two ``quantize --out X``)
    take turns between their last check of X and its registration, so the file and the index
    describe the same result."""
    return _locked(outputs_lock_path())


@contextlib.contextmanager
def _updating_index():
    """Load, let the caller change, and save the index while holding its lock across processes."""
    with _locked():
        data = _load_index()
        yield data
        _save_index(data)


def check_writable() -> None:
    """Refuse now, with one line, when the index could not be updated later (a read-only
    LOCALCASCADE_HOME): a quantization must not run for an hour and then fail to register."""
    with _locked():
        _load_index()
        path = index_path()
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            os.unlink(tmp)
        except OSError as err:
            raise _cannot_write(path.parent, err) from None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _key(path: Path) -> str:
    return os.path.realpath(path)


def record_verified(path: Path, *, sha256: str | None, size: int, verified: bool,
                    check: str = "sha256") -> str | None:
    """Remember that ``path`` (a blob or a local file) hashed to ``sha256`` and whether that was checked.

    Best effort: the record only saves hashing the file again, so an index that cannot be
    read or written must not fail a download that succeeded. Returns why it could not be
    recorded, for the command to say, or None.
    """
    try:
        with _updating_index() as data:
            data["verified"][_key(path)] = {
                "sha256": sha256, "size": size, "verified": verified,
                "check": check if verified else "unverified", "checked_at": _now(),
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
        record = _load_index()["verified"].get(_key(path))
    except LocalCascadeError:
        return None
    try:
        if record and record.get("size") == Path(path).stat().st_size:
            return record
    except OSError:
        pass
    return None


def check_new_name(name: str, *, replace: bool = False) -> StoredModel | None:
    """Refuse a name ``register_local`` must not take; returns the model registered under it now, if any.

    Refused: a malformed name; a catalog variant's name (``run``/``ask``/``show Q4_K_M`` must mean the
    catalog's Q4_K_M, not a file made here); a name already registered to a file that is present,
    unless ``replace``.
    """
    if not name or name.strip() != name or "/" in name or ":" in name:
        raise UsageError(f"cannot register a model as {name!r}: use a plain name without '/' or ':'")
    if not safe_io.printable_name(name) or len(name) > _NAME_MAX_CHARS:
        # A tab or newline would break `list`'s NAME<TAB>SIZE<TAB>PATH lines; an escape would reach the terminal.
        raise UsageError(f"cannot register a model as {name!r}: use at most {_NAME_MAX_CHARS} printable "
                         "characters (no tabs, newlines or control characters)")
    if _is_catalog_name(name):
        raise UsageError(f"cannot register a model as {name!r}: it is the name of a catalog variant; "
                         "choose another name (--name)")
    data = _load_index()
    entry = data["models"].get(name)
    current = _registered(name, entry, data["verified"]) if entry else None
    if current is not None and not replace:
        raise UsageError(f"a model named {name!r} is already registered ({current.path}); "
                         "choose another name (--name), or replace it (--force)")
    return current


_NAME_MAX_CHARS = 200


def owner_of(path: Path) -> StoredModel | None:
    """The stored model whose file ``path`` is (through any link), if any."""
    real = _key(path)
    for model in list_models():
        if any(_key(f) == real for f in (*model.files, *model.blobs)):
            return model
    return None


def _is_catalog_name(name: str) -> bool:
    try:
        from localcascade.catalog import find_variant

        return find_variant(name) is not None
    except (ImportError, ModelNotFoundError):
        return False


def register_local(name: str, files: list[Path], *, quant: str | None, source: str | None,
                   check: str, replace: bool = False) -> StoredModel:
    """Register a locally made model under ``name``; an existing name is refused unless ``replace``."""
    files = [Path(f).absolute() for f in files]
    keys = {_key(f) for f in files}
    with _updating_index() as data:
        check_new_name(name, replace=replace)  # again under the lock: two quantizes may race for a name
        for other, entry in list(data["models"].items()):
            # Files just rewritten in place: an older name for them would describe the old content.
            if other != name and keys & {_key(Path(f)) for f in entry.get("files", [])}:
                del data["models"][other]
        data["models"][name] = {
            "files": [str(f) for f in files], "quant": quant, "source": source, "created": _now(),
        }
        for f in files:
            data["verified"][_key(f)] = {"sha256": None, "size": f.stat().st_size, "verified": True,
                                         "check": check, "checked_at": _now()}
    return _registered(name, data["models"][name], data["verified"])


def _registered(name: str, entry: dict, verified: dict) -> StoredModel | None:
    files = tuple(Path(f) for f in entry["files"])
    if not all(f.is_file() for f in files):
        return None
    records = [verified.get(_key(f)) for f in files]
    return StoredModel(
        name=name, where="local", files=files, size=sum(f.stat().st_size for f in files), quant=entry.get("quant"),
        verified=all(r and r.get("verified") for r in records),
        verified_at=min((r["checked_at"] for r in records if r), default=None),
        check=records[0].get("check") if records[0] else None, source=entry.get("source"),
    )


# -- listing -----------------------------------------------------------------------------------

def list_models() -> list[StoredModel]:
    """Every model present: the HF cache's GGUF models, then the registered local files."""
    data = _load_index()
    models = _cached_models(data["verified"])
    for name, entry in sorted(data["models"].items()):
        model = _registered(name, entry, data["verified"])
        if model is not None:
            models.append(model)
    return models


@dataclass(frozen=True)
class PartialDownload:
    """Bytes of an interrupted pull, kept in the HF cache so the next pull continues them."""

    repo: str
    path: Path
    size: int


def partial_downloads() -> list[PartialDownload]:
    """Every ``blobs/*.incomplete`` file in the Hugging Face cache's model repositories."""
    cache = settings.hf_hub_cache()
    if not cache.is_dir():
        return []
    found = []
    for blob in sorted(cache.glob("models--*/blobs/*.incomplete")):
        repo = blob.parent.parent.name[len("models--"):].replace("--", "/", 1)
        try:
            found.append(PartialDownload(repo, blob, blob.stat().st_size))
        except OSError:
            continue  # finished or removed while we looked
    return found


def _cached_models(verified: dict) -> list[StoredModel]:
    cache = settings.hf_hub_cache()
    if not cache.is_dir():
        return []
    from huggingface_hub import scan_cache_dir

    from localcascade.hub import group_model_files, quant_from_name

    catalog = _catalog_by_files()
    found: list[StoredModel] = []
    seen: set[tuple[Path, ...]] = set()
    for repo in sorted(scan_cache_dir(cache).repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        groups = []
        for revision in sorted(repo.revisions, key=lambda r: -r.last_modified):
            by_name = {str(PurePosixPath(*f.file_path.relative_to(revision.snapshot_path).parts)): f
                       for f in revision.files if f.file_name.endswith(".gguf")}
            for names in group_model_files(sorted(by_name)):
                infos = [by_name[n] for n in names]
                blobs = tuple(Path(os.path.realpath(i.blob_path)) for i in infos)
                if blobs in seen:
                    continue
                seen.add(blobs)
                groups.append((names, infos, blobs, revision.commit_hash))
        quants = [quant_from_name(names[0]) for names, *_ in groups]
        for (names, infos, blobs, commit), quant in zip(groups, quants):
            variant = catalog.get((repo.repo_id, names))
            if variant is not None:
                name = variant
            elif quant and quants.count(quant) == 1:
                name = f"{repo.repo_id}:{quant}"
            else:
                name = f"hf://{repo.repo_id}/{names[0]}"
            records = [verified.get(_key(b)) for b in blobs]
            ok = all(r and r.get("verified") and r.get("size") == i.size_on_disk for r, i in zip(records, infos))
            found.append(StoredModel(
                name=name, where="hf-cache", files=tuple(i.file_path for i in infos),
                size=sum(i.size_on_disk for i in infos), quant=quant, repo=repo.repo_id, repo_files=names,
                commit=commit, variant=variant, verified=ok,
                verified_at=min((r["checked_at"] for r in records if r), default=None) if ok else None,
                check=records[0].get("check") if ok else None, blobs=blobs,
            ))
    return found


def _catalog_by_files() -> dict[tuple[str, tuple[str, ...]], str]:
    """(repo, files) -> catalog variant name, for recognising catalog models in the cache."""
    try:
        from localcascade.catalog import load_catalog
    except ImportError:
        return {}
    return {(v.repo, tuple(v.files)): v.quant for v in load_catalog()}


# -- lookups -----------------------------------------------------------------------------------

def find_stored(spec: str) -> StoredModel:
    """The stored model a user named: a registered name, a variant, REPO:QUANT, hf://..., or a file path."""
    text = spec.strip()
    models = list_models()
    for model in models:
        if model.name == text or (model.where == "hf-cache" and model.name.lower() == text.lower()):
            return model
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_file():
            from localcascade.hub import not_a_model_file

            raise ModelNotFoundError(not_a_model_file(path))
        real = _key(path)
        for model in models:
            if any(_key(f) == real for f in model.files):
                return model
        raise ModelNotFoundError(f"{text} is not a model the store knows (see `localcascade list`)")
    from localcascade.hub import parse_model_spec

    ref = parse_model_spec(text)
    for model in models:
        if model.where != "hf-cache" or model.repo != ref.repo:
            continue
        if ref.kind == "variant" and tuple(ref.files) == model.repo_files:
            return model
        if ref.kind == "repo_quant" and model.quant == ref.quant:
            return model
        if ref.kind == "hf_file" and ref.files[0] in model.repo_files:
            return model
    raise ModelNotFoundError(f"{ref.label} is not downloaded: run `localcascade pull {text}`")


def find_local_model(spec: str) -> Path:
    """Return the local GGUF file a user named: a path, or a name the store knows (first shard of a split set)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    return find_stored(spec).path


def best_local_variant(hardware=None, request=None):
    """The best-fitting Nemotron-Cascade-2 catalog variant already present, as (StoredModel, Plan), or None."""
    present = {m.variant: m for m in list_models() if m.variant}
    if not present:
        return None
    from localcascade.candidates import catalog_candidates
    from localcascade.plan import PlanRequest
    from localcascade.policy import recommend

    if hardware is None:
        from localcascade.hardware.resolve import hardware_for

        hardware = hardware_for()  # this machine, unknown bandwidths filled in
    # Planned from the downloaded files' own headers, as loading them will be.
    choice = recommend(hardware, catalog_candidates(pulled_only=True), request or PlanRequest())
    return present[choice.variant.quant], choice.plan


# -- removal -----------------------------------------------------------------------------------

def remove(model: StoredModel) -> list[Path]:
    """Delete a stored model's files (only those); returns what was removed."""
    removed: list[Path] = []
    failed: tuple[Path, OSError] | None = None

    def delete(path: Path) -> bool:
        nonlocal failed
        try:
            path.unlink()
        except FileNotFoundError:
            return True
        except OSError as err:
            failed = (path, err)
            return False
        removed.append(path)
        return True

    # A file that cannot be deleted stops the removal there; the index is still saved, so it
    # matches what is left on disk.
    with _updating_index() as data:
        # Checked again under the lock: two `rm` of one model both found it before either took the lock.
        if not _still_present(model, data):
            raise ModelNotFoundError(f"{model.name} is no longer in the store (another command removed it)")
        if model.where == "local":
            for f in model.files:
                if (f.exists() or f.is_symlink()) and not delete(f):
                    break
                data["verified"].pop(_key(f), None)
            else:
                data["models"].pop(model.name, None)
        else:
            still_linked = _blobs_linked_elsewhere(model)
            for link in model.files:
                if (link.is_symlink() or link.exists()) and not delete(link):
                    break
                _prune_empty_dirs(link.parent, stop=link.parents[len(PurePosixPath(model.repo_files[0]).parts)])
            else:
                for blob in model.blobs:
                    if blob not in still_linked and blob.exists() and not delete(blob):
                        break
                    data["verified"].pop(_key(blob), None)
    if failed is not None:
        path, err = failed
        done = f" ({len(removed)} file(s) were deleted before it)" if removed else ""
        raise LocalCascadeError(f"cannot delete {path}: {_reason(err)}{done}")
    return removed


def _still_present(model: StoredModel, data: dict) -> bool:
    if model.where == "local":
        entry = data["models"].get(model.name)
        return bool(entry) and [str(f) for f in model.files] == entry["files"] and \
            any(f.exists() or f.is_symlink() for f in model.files)
    return any(link.is_symlink() or link.exists() for link in model.files)


def _blobs_linked_elsewhere(model: StoredModel) -> set[Path]:
    """Blobs of ``model`` that another snapshot file still points to (another revision of the repo)."""
    repo_dir = model.files[0]
    while repo_dir.name != "snapshots":
        repo_dir = repo_dir.parent
    mine = {os.path.abspath(f) for f in model.files}
    linked = set()
    for f in repo_dir.rglob("*"):
        if f.is_symlink() and os.path.abspath(f) not in mine:
            linked.add(Path(os.path.realpath(f)))
    return {b for b in model.blobs if b in linked}


def _prune_empty_dirs(directory: Path, stop: Path) -> None:
    """Remove now-empty folders from ``directory`` up to and including the snapshot folder ``stop``."""
    while True:
        try:
            directory.rmdir()
        except OSError:
            return
        if directory == stop:
            return
        directory = directory.parent
