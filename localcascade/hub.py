"""The edge to the Hugging Face hub: model specs, remote listings, resumable verified downloads.

Every place that takes a model takes the same specs, parsed here into a ModelRef:

    Q4_K_M                                  a catalog variant of Nemotron-Cascade-2
    owner/repo:Q4_K_M                       the GGUF file(s) in a repo whose name carries the quant
    hf://owner/repo/path/file.gguf          one file (a shard names its whole split set)
    ./models/file.gguf                      a local file

Downloads land in the standard Hugging Face cache (HF_HUB_CACHE), laid out as
huggingface_hub lays it out, so `hf`, transformers and other tools share the files.
huggingface_hub 1.33 downloads into a per-process temporary name and deletes it on
failure, so an interrupted download starts from zero next time; this module keeps
the partial blob under a stable name (``blobs/<etag>.incomplete``) and continues it
with a Range request through huggingface_hub's own ``http_get``. A file only gets
its final blob name after its sha256 matched the hub's LFS metadata (and the
catalog); the snapshot link is then made by ``hf_hub_download`` itself.

huggingface_hub is imported inside functions: importing it costs ~0.3 s.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from localcascade import hub_http, settings
from localcascade.errors import (
    AuthError,
    DiskSpaceError,
    DownloadError,
    IntegrityError,
    ModelNotFoundError,
    OfflineError,
    UsageError,
)
from localcascade.units import format_bytes

SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")
_REPO_QUANT_RE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+):(?P<quant>[\w.-]+)$")
_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Projector and imatrix files share repos with the model files but are not models.
_NOT_MODELS = ("mmproj", "imatrix")

# on_bytes(path_in_repo, new_bytes): called as data arrives (tests and front ends).
ByteProgress = Callable[[str, int], None]


# -- specs -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelRef:
    """A model as the user named it, parsed but not yet looked up."""

    kind: str                     # "variant" | "repo_quant" | "hf_file" | "local"
    spec: str                     # as typed
    repo: str | None = None
    quant: str | None = None
    files: tuple[str, ...] = ()   # paths in the repo, when known without a listing
    path: Path | None = None      # kind == "local"
    revision: str = "main"
    variant: object | None = None  # the catalog Variant, kind == "variant"
    sha256: tuple[str | None, ...] = ()  # catalog checksums, parallel to files

    @property
    def label(self) -> str:
        if self.kind == "variant":
            return self.spec
        if self.kind == "repo_quant":
            return f"{self.repo}:{self.quant}"
        if self.kind == "hf_file":
            rev = f"@{self.revision}" if self.revision != "main" else ""
            return f"hf://{self.repo}{rev}/{self.files[0]}"
        return str(self.path)


def parse_model_spec(spec: str) -> ModelRef:
    """Parse what the user typed; raises ModelNotFoundError/UsageError with a one-line reason."""
    text = spec.strip()
    if not text:
        raise UsageError("no model named: give a variant (Q4_K_M), REPO:QUANT, hf://REPO/FILE.gguf or a path")
    if text.startswith("hf://"):
        from localcascade.gguf_header import parse_hub_uri

        check_remote_name(text[len("hf://"):].split("/", 2)[-1])  # before the parser normalises anything
        hub_file = parse_hub_uri(text)
        check_remote_name(hub_file.path)
        return ModelRef(kind="hf_file", spec=text, repo=hub_file.repo_id, files=(hub_file.path,),
                        revision=hub_file.revision or "main", quant=quant_from_name(hub_file.path))
    local = Path(text).expanduser()
    if local.is_file():
        return ModelRef(kind="local", spec=text, path=local.absolute(), quant=quant_from_name(local.name))
    if local.exists():
        raise ModelNotFoundError(not_a_model_file(local))
    repo_quant = _REPO_QUANT_RE.match(text)
    if repo_quant:
        return ModelRef(kind="repo_quant", spec=text, repo=repo_quant.group("repo"),
                        quant=repo_quant.group("quant").upper())
    if is_repo_name(text):
        raise UsageError(f"{text} is a repository: name one of its models, e.g. {text}:Q4_K_M "
                         f"(`localcascade fit {text}` shows them all)")
    if text.endswith(".gguf") or os.sep in text or text.startswith((".", "~")):
        raise ModelNotFoundError(f"model file {text} not found")
    from localcascade.catalog import find_variant

    variant = _find_variant(find_variant, text)
    files = tuple(variant.files)
    for name in files:
        check_remote_name(name)
    return ModelRef(kind="variant", spec=variant.quant, repo=variant.repo, quant=variant.quant, files=files,
                    variant=variant, sha256=_catalog_checksums(variant))


def not_a_model_file(path: Path) -> str:
    """Why an existing path that is not a regular file (a folder, a device, a pipe) is no model."""
    kind = "a folder" if path.is_dir() else "not a regular file"
    return f"{path} is {kind}: give a .gguf model file"


def is_repo_name(text: str) -> bool:
    """"owner/name" that is not a file or folder here: a Hugging Face repository."""
    return bool(_REPO_RE.match(text)) and not text.endswith(".gguf") and not Path(text).expanduser().exists()


def _find_variant(find_variant, name: str):
    try:
        variant = find_variant(name)
    except ModelNotFoundError:
        variant = None
    if variant is None:
        raise ModelNotFoundError(
            f"unknown model {name!r}: give a catalog variant (see `localcascade pull --help`), "
            "REPO:QUANT, hf://REPO/FILE.gguf or a path"
        )
    return variant


def _catalog_checksums(variant) -> tuple[str | None, ...]:
    sha = getattr(variant, "sha256", None)
    files = list(variant.files)
    if isinstance(sha, dict):
        return tuple(sha.get(f) for f in files)
    if isinstance(sha, (list, tuple)):
        return tuple(sha)
    return (sha,) if len(files) == 1 else tuple(None for _ in files)


def check_remote_name(name: str) -> str:
    """Refuse a file name from a spec, the catalog or a repo listing that would land outside the cache."""
    pure = PurePosixPath(name)
    bad = (
        not name
        or name.startswith(("/", "\\"))
        or "\\" in name
        or "\0" in name
        or re.match(r"^[A-Za-z]:", name) is not None
        or any(part in ("..", ".", "") for part in name.split("/"))
        or pure.is_absolute()
    )
    if bad:
        raise UsageError(f"refusing remote file name {name!r}: it would be written outside the download directory")
    return name


def quant_from_name(file_name: str) -> str | None:
    """The quant a GGUF file name carries ("...-Q4_K_M.gguf" -> "Q4_K_M"), if any."""
    stem = SPLIT_RE.sub(r"\g<prefix>", PurePosixPath(file_name).name)
    stem = stem[: -len(".gguf")] if stem.endswith(".gguf") else stem
    found = re.findall(r"(?<![A-Za-z0-9])((?:UD-)?I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32|MXFP4(?:_MOE)?)(?![A-Za-z0-9])",
                       stem, flags=re.IGNORECASE)
    return found[-1].upper() if found else None


def _name_has_quant(path: str, quant: str) -> bool:
    pattern = rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9_])"
    return re.search(pattern, path, flags=re.IGNORECASE) is not None


def group_model_files(paths: list[str]) -> list[tuple[str, ...]]:
    """Group GGUF paths into models: the shards of a split set form one model, in order."""
    models: dict[str, list[tuple[int, str]]] = {}
    for path in paths:
        match = SPLIT_RE.match(path)
        key = f"{match.group('prefix')}#{match.group('count')}" if match else path
        models.setdefault(key, []).append((int(match.group("index")) if match else 1, path))
    return [tuple(p for _, p in sorted(members)) for members in models.values()]


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
    with _hub_errors(ref.repo, None):
        if ref.kind == "repo_quant":
            paths = [f.path for f in _list_files(api, ref.repo, ref.revision)]
            files = _pick_quant_files(ref.repo, paths, ref.quant)
        elif ref.kind == "hf_file" and SPLIT_RE.match(ref.files[0]):
            paths = [f.path for f in _list_files(api, ref.repo, ref.revision)]
            wanted = SPLIT_RE.match(ref.files[0])
            files = next((g for g in group_model_files([p for p in paths if p.endswith(".gguf")])
                          if ref.files[0] in g), (ref.files[0],))
            if len(files) != int(wanted.group("count")):
                raise ModelNotFoundError(
                    f"{ref.repo} does not hold every shard of {wanted.group('prefix')} "
                    f"({len(files)} of {int(wanted.group('count'))})"
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
    with _hub_errors(repo, None):
        ggufs = _model_files([f.path for f in _list_files(_api(), repo, revision)])
    for name in ggufs:
        check_remote_name(name)
    if not ggufs:
        raise ModelNotFoundError(f"{repo} holds no GGUF model files")
    return group_model_files(ggufs)


def _model_files(paths: list[str]) -> list[str]:
    return [p for p in paths if p.endswith(".gguf") and not PurePosixPath(p).name.lower().startswith(_NOT_MODELS)]


def _pick_quant_files(repo: str, paths: list[str], quant: str) -> tuple[str, ...]:
    ggufs = _model_files(paths)
    candidates = [g for g in group_model_files([p for p in ggufs if _name_has_quant(p, quant)])]
    if not candidates:
        known = sorted({q for q in (quant_from_name(p) for p in ggufs) if q})
        hint = f" (it has: {', '.join(known)})" if known else ""
        raise ModelNotFoundError(f"no {quant} GGUF file in {repo}{hint}")
    if len(candidates) > 1:
        names = ", ".join(c[0] for c in candidates)
        raise UsageError(f"{repo} has several {quant} models ({names}); name one with hf://{repo}/FILE.gguf")
    files = candidates[0]
    match = SPLIT_RE.match(files[0])
    if match and len(files) != int(match.group("count")):
        raise ModelNotFoundError(f"{repo} does not hold every shard of {match.group('prefix')}")
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


def pull(model: RemoteModel, *, on_bytes: ByteProgress | None = None, show_progress: bool = True) -> PulledModel:
    """Download (or continue downloading) every file of ``model`` into the HF cache and verify it."""
    from huggingface_hub import constants

    cache = settings.hf_hub_cache()
    metas = [_file_meta(model, f, cache) for f in model.files]
    _check_disk(metas)
    resumed = sum(m.have_bytes() for m in metas if not m.blob.exists())
    downloaded = 0
    files = []
    show = show_progress and not constants.HF_HUB_DISABLE_PROGRESS_BARS
    notes: list[str] = []
    for meta in metas:
        sha = None
        if not meta.blob.exists():
            fetched, sha = _download(meta, on_bytes=on_bytes, show_progress=show)
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
    from huggingface_hub.file_download import repo_folder_name

    check_remote_name(remote.path)
    url = hf_hub_url(model.repo, remote.path, revision=model.revision, endpoint=settings.hf_endpoint())
    with _hub_errors(model.repo, remote.path):
        meta = get_hf_file_metadata(url, token=settings.hf_token(), endpoint=settings.hf_endpoint())
    if not meta.etag or not meta.commit_hash:
        raise DownloadError(f"{settings.hf_endpoint()} did not answer like a Hugging Face hub for {model.repo}/{remote.path}")
    storage = cache / repo_folder_name(repo_id=model.repo, repo_type="model")
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


def _download(meta: _FileMeta, *, on_bytes: ByteProgress | None, show_progress: bool) -> tuple[int, str | None]:
    """Fetch the bytes of one blob not yet on disk, continuing ``<blob>.incomplete``.

    Returns (bytes fetched now, sha256 of the whole file); the file is under its
    blob name only once that sha256 matched. (0, None) when a concurrent pull
    completed the blob while this one waited for the lock.
    """
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    hub_http.configure()
    meta.blob.parent.mkdir(parents=True, exist_ok=True)
    lock = meta.blob.parent.parent / ".localcascade-locks" / f"{meta.etag}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(lock):
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
        headers = build_hf_headers(token=settings.hf_token())
        if _other_host(meta.url):
            headers.pop("authorization", None)  # never send the token to a CDN
        with _hub_errors(None, meta.remote.path), open(meta.partial, "ab") as f:
            writer = _HashingWriter(f, digest)
            http_get(meta.url, writer, resume_size=have, headers=headers, expected_size=meta.size,
                     displayed_filename=PurePosixPath(meta.remote.path).name,
                     tqdm_class=_progress_class(meta.remote.path, on_bytes, show_progress))
        sha = digest.hexdigest() if writer.valid else _sha256_of(meta.partial)
        _verify_or_delete(meta, sha, [meta.partial])
        os.chmod(meta.partial, 0o644 & ~_umask())
        os.replace(meta.partial, meta.blob)
        return writer.written, sha


def _finish(model: RemoteModel, meta: _FileMeta, sha: str | None) -> tuple[LocalFile, str | None]:
    """Make the snapshot link (through huggingface_hub); verify a blob this pull did not just hash.
    Also returns why its check could not be recorded in the store index, if it could not."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.file_download import _cache_commit_hash_for_specific_revision

    from localcascade import store

    if not meta.pointer.exists():
        # The commit the metadata (and so the blob) came from, not the branch: a branch that moved
        # during a long download would put the link under the new commit, not at meta.pointer.
        with _hub_errors(model.repo, meta.remote.path):
            hf_hub_download(model.repo, meta.remote.path, revision=meta.commit, cache_dir=settings.hf_hub_cache(),
                            endpoint=settings.hf_endpoint(), token=settings.hf_token())
    # Asked by commit, hf_hub_download records no branch: write refs/<branch> as it would have,
    # so tools that look a file up by branch in the cache (offline) find this snapshot.
    _cache_commit_hash_for_specific_revision(str(meta.blob.parent.parent), model.revision, meta.commit)
    expected = meta.expected_sha256()
    record = store.verified_record(meta.blob)
    if sha is None:
        # Already here (an earlier pull, or another tool): hash it once, then trust the record.
        sha = (record or {}).get("sha256") or _sha256_of(meta.blob)
    _verify_or_delete(meta, sha, [meta.blob, meta.pointer])
    verified = bool(expected)
    unrecorded = store.record_verified(meta.blob, sha256=sha, size=meta.size, verified=verified)
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


def _progress_class(path: str, on_bytes: ByteProgress | None, show: bool):
    """A tqdm class for http_get: draws on stderr (when shown) and reports bytes to ``on_bytes``."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class _Progress(hf_tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = not show
            kwargs.setdefault("unit", "B")
            kwargs.setdefault("unit_scale", True)
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            if on_bytes is not None and n > 0:
                on_bytes(path, n)
            return super().update(n)

    return _Progress


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
    from urllib.parse import urlsplit

    return urlsplit(url).netloc != urlsplit(settings.hf_endpoint()).netloc


class _hub_errors:
    """Turn huggingface_hub / httpx / OS failures into our one-line errors."""

    def __init__(self, repo: str | None, path: str | None):
        self.repo, self.path = repo, path

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, (KeyboardInterrupt, SystemExit)):
            return False
        from localcascade.errors import LocalCascadeError

        if isinstance(exc, LocalCascadeError):
            return False
        mapped = _map_error(exc, self.repo, self.path)
        if mapped is None:
            return False
        raise mapped from exc


def _map_error(exc: BaseException, repo: str | None, path: str | None) -> Exception | None:
    import httpx
    from huggingface_hub import errors as hf_errors

    where = f"{repo}/{path}" if repo and path else (repo or path or "the file")
    login = "log in with `hf auth login` or set HF_TOKEN"
    if isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return OfflineError(f"HF_HUB_OFFLINE=1 forbids downloading {where}")
    if isinstance(exc, hf_errors.GatedRepoError):
        return AuthError(f"{repo or where} is gated: accept its terms on the hub, then {login}")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        if status == 401 and not _token_in_use():
            return AuthError(f"repository {repo} was not found or is private: {login}")
        return ModelNotFoundError(f"repository {repo} not found on {settings.hf_endpoint()}")
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return ModelNotFoundError(f"revision not found in {repo}")
    if isinstance(exc, hf_errors.RemoteEntryNotFoundError) or (
        isinstance(exc, hf_errors.HfHubHTTPError) and status == 404
    ):
        return ModelNotFoundError(f"{path or 'file'} not found in {repo}" if repo else f"{where} not found")
    if isinstance(exc, hf_errors.HfHubHTTPError) and status in (401, 403):
        return AuthError(f"the hub refused access to {where} (HTTP {status}): {login} with a valid token")
    if isinstance(exc, hf_errors.HfHubHTTPError):
        return DownloadError(f"the hub answered HTTP {status} for {where}")
    if isinstance(exc, httpx.TooManyRedirects):
        return DownloadError(f"the hub at {settings.hf_endpoint()} redirects {where} in a loop")
    if isinstance(exc, httpx.RemoteProtocolError) and "complete message body" in str(exc):
        return DownloadError(f"the hub's answer for {where} was cut off mid-way; try again")
    if isinstance(exc, httpx.TimeoutException):
        return DownloadError(f"the hub at {settings.hf_endpoint()} did not answer in time ({_reason(exc)})")
    if isinstance(exc, ValueError):  # JSON or text that does not parse: the answer is not the hub's
        return DownloadError(f"the hub at {settings.hf_endpoint()} sent an answer for {where} that is not "
                             f"the hub's API ({type(exc).__name__}); is a proxy or wrong HF_ENDPOINT in the way?")
    if isinstance(exc, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return DownloadError(f"cannot reach the hub at {settings.hf_endpoint()}: {_reason(exc)}")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskSpaceError(f"the disk filled up while downloading {where}; the partial file is kept for resuming")
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return DownloadError(f"the transfer of {where} ended early; run the pull again to continue it")
    return None


def _token_in_use() -> bool:
    from huggingface_hub import get_token

    return bool(settings.hf_token() or get_token())


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:120]
