"""The edge to the Hugging Face hub: remote listings and resumable, verified downloads.

It takes a ModelRef (model_spec; the resolver makes it from what the user typed) and finds the
file(s) it names on the hub (``resolve_remote``), or every model of a repository
(``list_repo_models``), then downloads them (``pull``).

Downloads land in the standard Hugging Face cache (HF_HUB_CACHE), laid out as
huggingface_hub lays it out, so `hf`, transformers and other tools share the files.
huggingface_hub 1.33 downloads into a per-process temporary name and deletes it on
failure, so an interrupted download starts from zero next time; this module keeps
the partial blob under a stable name (``blobs/<etag>.incomplete``) and continues it
with a Range request through huggingface_hub's own ``http_get``. A file only gets
its final blob name after its sha256 matched the hub's LFS metadata (and the
catalog); the snapshot link is then made by ``hf_hub_download`` itself. Checks are recorded
in the store index (store_index), so a file is hashed once. What is not huggingface_hub's
documented API is reached through hf_compat; failures are mapped to one line by hub_errors.

huggingface_hub is imported inside functions: importing it costs ~0.3 s.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable
from urllib.parse import urlsplit

from localcascade import settings
from localcascade.hub import hf_compat
from localcascade.hub import client as hub_http
from localcascade.store import index as store_index
from localcascade.errors import DiskSpaceError, DownloadError, IntegrityError, ModelNotFoundError, OfflineError, UsageError
from localcascade.hub.errors import hub_errors
from localcascade.model.spec import (
    ModelRef,
    check_remote_name,
    group_model_files,
    model_files,
    name_has_quant,
    quant_from_name,
    shard_of,
)
from localcascade.units import format_bytes

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

# on_bytes(path_in_repo, new_bytes): called as data arrives (tests and front ends).
ByteProgress = Callable[[str, int], None]


# -- remote lookups -------------------------------------------------------------------------

@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int | None
    sha256: str | None            # from the hub's LFS metadata
    catalog_sha256: str | None = None


@dataclass(frozen=True)
class RemoteModel:
    repo: str
    revision: str
    files: tuple[RemoteFile, ...]
    quant: str | None = None

    @property
    def size(self) -> int:
        return sum(f.size or 0 for f in self.files)


def _api():
    from huggingface_hub import HfApi

    hub_http.configure()
    return HfApi(endpoint=settings.hf_endpoint(), token=settings.hf_token())


def resolve_remote(ref: ModelRef) -> RemoteModel:
    """Find the file(s) a ref names on the hub, with their sizes and LFS sha256 (listing requests only)."""
    if ref.kind == "local":
        raise UsageError(f"{ref.spec} is a local file; nothing to download")
    if settings.hub_offline():
        raise OfflineError(f"HF_HUB_OFFLINE=1 forbids looking up {ref.label} on the hub")
    api = _api()
    with hub_errors(ref.repo, revision=ref.revision):
        wanted = shard_of(ref.files[0]) if ref.kind == "hf_file" else None
        if ref.kind == "repo_quant":
            paths = [f.path for f in _list_files(api, ref.repo, ref.revision)]
            files = _pick_quant_files(ref.repo, paths, ref.quant)
        elif wanted is not None:
            paths = [f.path for f in _list_files(api, ref.repo, ref.revision)]
            files = next((g for g in group_model_files([p for p in paths if p.endswith(".gguf")])
                          if ref.files[0] in g), (ref.files[0],))
            if len(files) != wanted.count:
                raise ModelNotFoundError(
                    f"{ref.repo} does not hold every shard of {wanted.prefix} ({len(files)} of {wanted.count})"
                )
        else:
            files = ref.files
        for name in files:
            check_remote_name(name)
        infos = {info.path: info for info in api.get_paths_info(ref.repo, list(files), revision=ref.revision)}
    catalog = dict(zip(ref.files, ref.sha256)) if ref.sha256 else {}
    remote_files = []
    for name in files:
        info = infos.get(name)
        if info is None or not hasattr(info, "size"):
            raise ModelNotFoundError(f"{name} not found in {ref.repo}")
        lfs = getattr(info, "lfs", None)
        remote_files.append(RemoteFile(path=name, size=info.size, sha256=lfs.sha256 if lfs else None,
                                       catalog_sha256=catalog.get(name)))
    return RemoteModel(repo=ref.repo, revision=ref.revision, files=tuple(remote_files),
                       quant=ref.quant or quant_from_name(files[0]))


def _list_files(api, repo: str, revision: str) -> list:
    return [e for e in api.list_repo_tree(repo, recursive=True, revision=revision) if hasattr(e, "size")]


def list_repo_models(repo: str, revision: str = "main") -> list[tuple[str, ...]]:
    """Every model in ``repo`` (one file, or the shards of a split set), from one listing request."""
    if settings.hub_offline():
        raise OfflineError(f"HF_HUB_OFFLINE=1 forbids listing {repo} on the hub")
    with hub_errors(repo, revision=revision):
        ggufs = model_files([f.path for f in _list_files(_api(), repo, revision)])
    for name in ggufs:
        check_remote_name(name)
    if not ggufs:
        raise ModelNotFoundError(f"{repo} holds no GGUF model files")
    return group_model_files(ggufs)


def _pick_quant_files(repo: str, paths: list[str], quant: str) -> tuple[str, ...]:
    ggufs = model_files(paths)
    candidates = group_model_files([p for p in ggufs if name_has_quant(p, quant)])
    if not candidates:
        known = sorted({q for q in (quant_from_name(p) for p in ggufs) if q})
        hint = f" (it has: {', '.join(known)})" if known else ""
        raise ModelNotFoundError(f"no {quant} GGUF file in {repo}{hint}")
    if len(candidates) > 1:
        names = ", ".join(c[0] for c in candidates)
        raise UsageError(f"{repo} has several {quant} models ({names}); name one with hf://{repo}/FILE.gguf")
    files = candidates[0]
    shard = shard_of(files[0])
    if shard and len(files) != shard.count:
        raise ModelNotFoundError(f"{repo} does not hold every shard of {shard.prefix}")
    return files


# -- downloads ---------------------------------------------------------------------------

@dataclass(frozen=True)
class LocalFile:
    path_in_repo: str
    local_path: Path              # the snapshot path (a link into blobs/)
    size: int
    sha256: str | None            # what the file hashed to, when checked
    verified: bool                # sha256 matched a published checksum


@dataclass(frozen=True)
class PulledModel:
    repo: str
    revision: str
    commit: str | None
    quant: str | None
    files: tuple[LocalFile, ...]
    downloaded_bytes: int = 0     # fetched by this pull (0 when it was already here)
    resumed_bytes: int = 0        # already on disk from an interrupted pull
    notes: tuple[str, ...] = field(default=())  # why a check could not be recorded (the files are fine)

    @property
    def path(self) -> Path:
        return self.files[0].local_path

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class _FileMeta:
    remote: RemoteFile
    url: str
    etag: str
    commit: str
    size: int
    blob: Path
    pointer: Path

    @property
    def partial(self) -> Path:
        return self.blob.with_name(self.blob.name + ".incomplete")

    def have_bytes(self) -> int:
        if self.blob.exists():
            return self.size
        return self.partial.stat().st_size if self.partial.exists() else 0

    def expected_sha256(self) -> set[str]:
        known = {self.remote.sha256, self.remote.catalog_sha256}
        if _SHA256_RE.match(self.etag):
            known.add(self.etag)  # LFS files: the hub's ETag is the content's sha256
        return {s.lower() for s in known if s}


def pull(model: RemoteModel, *, on_bytes: ByteProgress | None = None,
         on_start: Callable[[int, int], None] | None = None) -> PulledModel:
    """Download (or continue downloading) every file of ``model`` into the HF cache and verify it.

    The hub draws nothing: ``on_start(total_bytes, bytes_already_here)`` is called once before the
    first byte, and ``on_bytes(path, n)`` for each chunk fetched (the front end's progress shows them).
    """
    cache = settings.hf_hub_cache()
    metas = [_file_meta(model, f, cache) for f in model.files]
    _check_disk(metas)
    resumed = sum(m.have_bytes() for m in metas if not m.blob.exists())
    if on_start is not None:
        on_start(sum(m.size for m in metas), resumed + sum(m.size for m in metas if m.blob.exists()))
    downloaded = 0
    files = []
    notes: list[str] = []
    for meta in metas:
        sha = None
        if not meta.blob.exists():
            fetched, sha = _download(meta, on_bytes=on_bytes)
            downloaded += fetched
        local, unrecorded = _finish(model, meta, sha)
        files.append(local)
        if unrecorded and unrecorded not in notes:
            notes.append(unrecorded)
    commit = metas[0].commit if metas else None
    return PulledModel(repo=model.repo, revision=model.revision, commit=commit, quant=model.quant,
                       files=tuple(files), downloaded_bytes=downloaded, resumed_bytes=resumed, notes=tuple(notes))


def _file_meta(model: RemoteModel, remote: RemoteFile, cache: Path) -> _FileMeta:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    check_remote_name(remote.path)
    url = hf_hub_url(model.repo, remote.path, revision=model.revision, endpoint=settings.hf_endpoint())
    with hub_errors(model.repo, remote.path, revision=model.revision):
        meta = get_hf_file_metadata(url, token=settings.hf_token(), endpoint=settings.hf_endpoint())
    if not meta.etag or not meta.commit_hash:
        raise DownloadError(f"{settings.hf_endpoint()} did not answer like a Hugging Face hub for {model.repo}/{remote.path}")
    storage = cache / hf_compat.repo_folder_name(model.repo)
    blob = storage / "blobs" / meta.etag
    pointer = storage / "snapshots" / meta.commit_hash / remote.path
    # The cache layout must keep both inside the repo folder, whatever the hub answered.
    for path in (blob, pointer):
        if not os.path.abspath(path).startswith(os.path.abspath(storage) + os.sep):
            raise UsageError(f"refusing {remote.path!r}: it would be written outside the download directory")
    size = meta.size if meta.size is not None else (remote.size or 0)
    return _FileMeta(remote=remote, url=meta.location or url, etag=meta.etag, commit=meta.commit_hash,
                     size=size, blob=blob, pointer=pointer)


def _check_disk(metas: list[_FileMeta]) -> None:
    """Refuse to start when the bytes still to fetch do not fit on the cache's disk."""
    remaining = sum(max(m.size - m.have_bytes(), 0) for m in metas)
    if remaining == 0:
        return
    where = metas[0].blob.parent
    probe = where
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < remaining:
        raise DiskSpaceError(
            f"not enough disk space in {where}: the download needs {format_bytes(remaining)} more, "
            f"{format_bytes(free)} free"
        )


class _HashingWriter:
    """The file http_get writes to: hashes bytes as they arrive, so a 20 GB file is not read twice."""

    def __init__(self, f, digest):
        self._f, self._digest, self.valid, self.written = f, digest, True, 0

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        self.written += len(data)
        return self._f.write(data)

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, *args):
        self.valid = False  # the server ignored our Range and http_get rewinds: hash the file at the end
        return self._f.seek(*args)

    def truncate(self, *args):
        self.valid = False
        return self._f.truncate(*args)

    def flush(self) -> None:
        self._f.flush()


def _download(meta: _FileMeta, *, on_bytes: ByteProgress | None) -> tuple[int, str | None]:
    """Fetch the bytes of one blob not yet on disk, continuing ``<blob>.incomplete``.

    Returns (bytes fetched now, sha256 of the whole file); the file is under its
    blob name only once that sha256 matched. (0, None) when a concurrent pull
    completed the blob while this one waited for the lock.
    """
    hub_http.configure()
    meta.blob.parent.mkdir(parents=True, exist_ok=True)
    lock = meta.blob.parent.parent / ".localcascade-locks" / f"{meta.etag}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with hf_compat.weak_file_lock(lock):
        if meta.blob.exists():
            # Another pull of the same file finished while this one waited for the lock:
            # its blob is complete and was verified before it got that name, so fetching
            # it again would only replace it. _finish still checks it (once, then by record).
            return 0, None
        have = meta.partial.stat().st_size if meta.partial.exists() else 0
        if have > meta.size:  # not a prefix of this file: start over
            meta.partial.unlink()
            have = 0
        digest = hashlib.sha256()
        if have:
            _hash_into(meta.partial, digest)
        headers = hf_compat.build_hf_headers(token=settings.hf_token())
        if _other_host(meta.url):
            headers.pop("authorization", None)  # never send the token to a CDN
        with hub_errors(None, meta.remote.path), open(meta.partial, "ab") as f:
            writer = _HashingWriter(f, digest)
            hf_compat.http_get(meta.url, writer, resume_size=have, headers=headers, expected_size=meta.size,
                               displayed_filename=PurePosixPath(meta.remote.path).name,
                               tqdm_class=_byte_counter(meta.remote.path, on_bytes))
        sha = digest.hexdigest() if writer.valid else _sha256_of(meta.partial)
        _verify_or_delete(meta, sha, [meta.partial])
        os.chmod(meta.partial, 0o644 & ~_umask())
        os.replace(meta.partial, meta.blob)
        return writer.written, sha


def _finish(model: RemoteModel, meta: _FileMeta, sha: str | None) -> tuple[LocalFile, str | None]:
    """Make the snapshot link (through huggingface_hub); verify a blob this pull did not just hash.
    Also returns why its check could not be recorded in the store index, if it could not."""
    from huggingface_hub import hf_hub_download

    if not meta.pointer.exists():
        # The commit the metadata (and so the blob) came from, not the branch: a branch that moved
        # during a long download would put the link under the new commit, not at meta.pointer.
        with hub_errors(model.repo, meta.remote.path, revision=meta.commit):
            hf_hub_download(model.repo, meta.remote.path, revision=meta.commit, cache_dir=settings.hf_hub_cache(),
                            endpoint=settings.hf_endpoint(), token=settings.hf_token())
    # Asked by commit, hf_hub_download records no branch: write refs/<branch> as it would have,
    # so tools that look a file up by branch in the cache (offline) find this snapshot.
    hf_compat.cache_ref(str(meta.blob.parent.parent), model.revision, meta.commit)
    expected = meta.expected_sha256()
    record = store_index.verified_record(meta.blob)
    if sha is None:
        # Already here (an earlier pull, or another tool): hash it once, then trust the record.
        sha = (record or {}).get("sha256") or _sha256_of(meta.blob)
    _verify_or_delete(meta, sha, [meta.blob, meta.pointer])
    verified = bool(expected)
    unrecorded = store_index.record_verified(meta.blob, sha256=sha, size=meta.size, verified=verified)
    return LocalFile(path_in_repo=meta.remote.path, local_path=meta.pointer, size=meta.size, sha256=sha,
                     verified=verified), unrecorded


def _verify_or_delete(meta: _FileMeta, sha: str, paths: list[Path]) -> None:
    expected = meta.expected_sha256()
    if expected and sha.lower() not in expected:
        for path in paths:
            if path.is_symlink() or path.exists():
                path.unlink()
        raise IntegrityError(
            f"{meta.remote.path}: sha256 {sha[:12]}... does not match the published {sorted(expected)[0][:12]}...; "
            "the corrupt file was deleted - run the pull again"
        )


def _byte_counter(path: str, on_bytes: ByteProgress | None):
    """The tqdm class http_get takes, drawing nothing: it only reports bytes to ``on_bytes``."""
    class _Counter(hf_compat.tqdm_class()):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            if on_bytes is not None and n > 0:
                on_bytes(path, n)
            return super().update(n)

    return _Counter


def _hash_into(path: Path, digest) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            digest.update(chunk)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    _hash_into(path, digest)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _other_host(url: str) -> bool:
    return urlsplit(url).netloc != urlsplit(settings.hf_endpoint()).netloc
