"""The local model store: GGUF models in the Hugging Face cache plus files quantized here.

- Models in the HF cache are found by scanning it (huggingface_hub's ``scan_cache_dir``), so
  files another tool downloaded count too. Any repo holding ``.gguf`` files is listed; the shards
  of a split set are one model. Removing one goes through huggingface_hub's own deletion
  (``HFCacheInfo.delete_files``), which knows which blobs another revision still uses.
- Files made by ``localcascade quantize`` live wherever the user put them and are registered by
  name in the store index (store_index). A record whose file is gone is *stale*: listed as such,
  forgotten by ``rm``, replaced by the next quantize to that path.

The store lists, registers and removes; which model a user means is the resolver's question, and
which one fits is the planner's. huggingface_hub is imported only where the cache is scanned or
changed: importing it costs ~0.3 s.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from localcascade import safe_io, settings
from localcascade.hub import hf_compat
from localcascade.store import index as store_index
from localcascade.model.catalog import find_variant, load_catalog
from localcascade.errors import LocalCascadeError, ModelNotFoundError, NameTakenError, UsageError
from localcascade.model.spec import HubFile, group_model_files, quant_from_name
from localcascade.store.index import file_key

_NAME_MAX_CHARS = 200


@dataclass(frozen=True)
class StoredModel:
    """One model the store knows: present on this machine, or (``missing``) a record whose file is gone."""

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
    missing: bool = False          # a registered model whose file(s) are gone
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


# -- listing -----------------------------------------------------------------------------------

def list_models() -> list[StoredModel]:
    """Every model present: the HF cache's GGUF models, then the registered local files."""
    data = store_index.load_index()
    models = _cached_models(data["verified"])
    for name, entry in sorted(data["models"].items()):
        model = _registered(name, entry, data["verified"])
        if not model.missing:
            models.append(model)
    return models


def stale_models() -> list[StoredModel]:
    """Registered models whose file (or a shard of it) is gone: only their record is left."""
    data = store_index.load_index()
    models = [_registered(name, entry, data["verified"]) for name, entry in sorted(data["models"].items())]
    return [m for m in models if m.missing]


def owner_of(path: Path) -> StoredModel | None:
    """The stored model whose file ``path`` is (through any link), if any."""
    real = file_key(path)
    for model in list_models():
        if any(file_key(f) == real for f in (*model.files, *model.blobs)):
            return model
    return None


def _registered(name: str, entry: dict, verified: dict) -> StoredModel:
    files = tuple(Path(f) for f in entry["files"])
    if not all(f.is_file() for f in files):
        return StoredModel(name=name, where="local", files=files, size=0, quant=entry.get("quant"),
                           source=entry.get("source"), missing=True)
    records = [verified.get(file_key(f)) for f in files]
    return StoredModel(
        name=name, where="local", files=files, size=sum(f.stat().st_size for f in files), quant=entry.get("quant"),
        verified=all(r and r.get("verified") for r in records),
        verified_at=min((r["checked_at"] for r in records if r), default=None),
        check=records[0].get("check") if records[0] else None, source=entry.get("source"),
    )


def _cached_models(verified: dict) -> list[StoredModel]:
    cache = settings.hf_hub_cache()
    if not cache.is_dir():
        return []
    from huggingface_hub import scan_cache_dir  # slow to import: only when there is a cache to scan

    catalog = {(v.repo, tuple(v.files)): v.quant for v in load_catalog()}  # to recognise catalog models
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
                name = HubFile(repo.repo_id, None, names[0]).uri
            records = [verified.get(file_key(b)) for b in blobs]
            ok = all(r and r.get("verified") and r.get("size") == i.size_on_disk for r, i in zip(records, infos))
            found.append(StoredModel(
                name=name, where="hf-cache", files=tuple(i.file_path for i in infos),
                size=sum(i.size_on_disk for i in infos), quant=quant, repo=repo.repo_id, repo_files=names,
                commit=commit, variant=variant, verified=ok,
                verified_at=min((r["checked_at"] for r in records if r), default=None) if ok else None,
                check=records[0].get("check") if ok else None, blobs=blobs,
            ))
    return found


@dataclass(frozen=True)
class PartialDownload:
    """Bytes of an interrupted pull, kept in the HF cache so the next pull continues them."""

    repo: str
    path: Path
    size: int


def partial_downloads() -> list[PartialDownload]:
    """Every ``blobs/*.incomplete`` file of the Hugging Face cache's model repositories."""
    cache = settings.hf_hub_cache()
    if not cache.is_dir():
        return []
    from huggingface_hub import scan_cache_dir

    found = []
    for partial in scan_cache_dir(cache).incomplete_files:
        folder = partial.file_path.parent.parent.name   # models--owner--name
        kind, _, repo = folder.partition("--")
        if kind == "models" and repo:
            found.append(PartialDownload(repo.replace("--", "/"), partial.file_path, partial.size_on_disk))
    return sorted(found, key=lambda p: p.path)


# -- registering -------------------------------------------------------------------------------

def check_new_name(name: str, *, replace: bool = False, files: list[Path] | None = None) -> StoredModel | None:
    """Refuse a name ``register_local`` must not take; returns what is registered under it now, if
    anything (a stale record too: its ``missing`` is set).

    Refused: a malformed name; a catalog variant's name (``run``/``ask``/``show Q4_K_M`` must mean the
    catalog's Q4_K_M, not a file made here); a name registered to a file that is present, unless
    ``replace``, or unless that file is one of ``files`` (the ones being registered, just written).
    A stale record's name is free: its file is gone, so the record only misleads.
    """
    if not name or name.strip() != name or "/" in name or ":" in name:
        raise UsageError(f"cannot register a model as {name!r}: use a plain name without '/' or ':'")
    if not safe_io.printable_name(name) or len(name) > _NAME_MAX_CHARS:
        # A tab or newline would break `list`'s NAME<TAB>SIZE<TAB>PATH lines; an escape would reach the terminal.
        raise UsageError(f"cannot register a model as {name!r}: use at most {_NAME_MAX_CHARS} printable "
                         "characters (no tabs, newlines or control characters)")
    if _is_catalog_name(name):
        raise NameTakenError(name)
    data = store_index.load_index()
    entry = data["models"].get(name)
    current = _registered(name, entry, data["verified"]) if entry else None
    rewritten = files is not None and current is not None and \
        {file_key(f) for f in current.files} <= {file_key(f) for f in files}
    if current is not None and not current.missing and not replace and not rewritten:
        raise NameTakenError(name, str(current.path))
    return current


def _is_catalog_name(name: str) -> bool:
    try:
        return find_variant(name) is not None
    except ModelNotFoundError:
        return False


def register_local(name: str, files: list[Path], *, quant: str | None, source: str | None,
                   check: str, replace: bool = False) -> StoredModel:
    """Register a locally made model under ``name``; a name taken by a present file is refused unless ``replace``."""
    files = [Path(f).absolute() for f in files]
    keys = {file_key(f) for f in files}
    with store_index.updating_index() as data:
        # Again under the lock: two quantizes may race for a name.
        check_new_name(name, replace=replace, files=files)
        for other, entry in list(data["models"].items()):
            # Files just rewritten in place: an older name for them would describe the old content.
            if other != name and keys & {file_key(Path(f)) for f in entry.get("files", [])}:
                del data["models"][other]
        data["models"][name] = {
            "files": [str(f) for f in files], "quant": quant, "source": source, "created": store_index.now(),
        }
        for f in files:
            data["verified"][file_key(f)] = {"sha256": None, "size": f.stat().st_size, "verified": True,
                                             "check": check, "checked_at": store_index.now()}
    return _registered(name, data["models"][name], data["verified"])


# Re-exported for the commands that write outputs: the lock and the up-front check live with the index.
check_writable = store_index.check_writable
publishing = store_index.publishing


# -- removal -----------------------------------------------------------------------------------

def remove(model: StoredModel) -> list[Path]:
    """Delete a stored model's files (only those) and its records; returns what was deleted.

    A stale record (its file already gone) is only forgotten. Raises, in one line, naming the
    first file that could not be deleted; the index still matches what is left on disk.
    """
    # Held across the check and the deletion: two `rm` of one model both found it before either
    # took the lock, and only one may delete it.
    with store_index.updating_index() as data:
        if not _still_present(model, data):
            raise ModelNotFoundError(f"{model.name} is no longer in the store (another command removed it)")
        if model.where == "local":
            removed, failed = _remove_registered(model, data)
        else:
            removed, failed = _remove_cached(model, data)
    if failed is not None:
        path, why = failed
        done = f" ({len(removed)} file(s) were deleted before it)" if removed else ""
        raise LocalCascadeError(f"cannot delete {path}: {why}{done}")
    return removed


def _still_present(model: StoredModel, data: dict) -> bool:
    if model.where == "local":
        entry = data["models"].get(model.name)
        return bool(entry) and [str(f) for f in model.files] == entry["files"] and \
            (model.missing or any(f.exists() or f.is_symlink() for f in model.files))
    return any(link.is_symlink() or link.exists() for link in model.files)


def _remove_registered(model: StoredModel, data: dict) -> tuple[list[Path], tuple[Path, str] | None]:
    removed: list[Path] = []
    for f in model.files:
        if f.exists() or f.is_symlink():
            try:
                f.unlink()
            except FileNotFoundError:
                pass
            except OSError as err:
                return removed, (f, store_index.reason(err))
            else:
                removed.append(f)
        data["verified"].pop(file_key(f), None)
    data["models"].pop(model.name, None)
    return removed, None


def _remove_cached(model: StoredModel, data: dict) -> tuple[list[Path], tuple[Path, str] | None]:
    """Delete the snapshot links and, where no other revision uses them, the blobs, through
    huggingface_hub's ``delete_files``; then say what it could not delete (it only logs that)."""
    from huggingface_hub import scan_cache_dir

    cache_info = scan_cache_dir(settings.hf_hub_cache())
    mine = {os.path.abspath(f) for f in model.files}
    infos = [f for repo in cache_info.repos if repo.repo_id == model.repo and repo.repo_type == "model"
             for revision in repo.revisions for f in revision.files if os.path.abspath(f.file_path) in mine]
    strategy = cache_info.delete_files(*infos)
    targets = sorted(strategy.files) + sorted(strategy.blobs)  # links first: a blob goes only after its link
    failed = None
    with hf_compat.captured_cache_warnings() as warnings:
        try:
            strategy.execute()
        except OSError as err:   # a snapshot link it could not unlink: it stopped before the blobs
            failed = (Path(err.filename) if err.filename else model.path, store_index.reason(err))
    removed = [p for p in targets if not os.path.lexists(p)]
    for blob in strategy.blobs:
        if not os.path.lexists(blob):
            data["verified"].pop(file_key(blob), None)
    for link in model.files:
        if not os.path.lexists(link):
            _prune_empty_dirs(link.parent, stop=link.parents[len(PurePosixPath(model.repo_files[0]).parts)])
    left = [p for p in targets if os.path.lexists(p)]
    if failed is None and left:
        failed = (left[0], _why_not_deleted(left[0], warnings))
    return removed, failed


def _why_not_deleted(path: Path, warnings) -> str:
    """The reason huggingface_hub logged for ``path``, when it logged one."""
    for record in warnings:
        if str(path) in record.getMessage():
            err = record.exc_info[1] if record.exc_info else None
            return store_index.reason(err) if isinstance(err, OSError) else record.getMessage()
    return "it is still there after the deletion"


def _prune_empty_dirs(directory: Path, stop: Path) -> None:
    """Remove now-empty folders from ``directory`` up to and including ``stop`` (``delete_files``
    leaves a snapshot's folders in place, even empty)."""
    while True:
        try:
            directory.rmdir()
        except OSError:
            return
        if directory == stop:
            return
        directory = directory.parent
