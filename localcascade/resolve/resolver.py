"""The one door from what a user typed to the model it means: every command resolves a model here.

``resolve(spec, need)`` asks the store, the file system, the catalog and, where the need calls
for it, the hub, in one fixed order:

1. a model the store knows by that name (a download, a registered file, a catalog variant pulled;
   for the file need, an existing file at that path comes first: it is what would be opened);
2. a file or folder at that path;
3. the spec's form (model_spec): ``hf://...``, ``REPO:QUANT``, ``REPO``, or a catalog variant's name.

Each need has its own result type (ResolvedFile, ResolvedStored, ResolvedHeader, ResolvedRemote,
ResolvedCandidates):

    file        the local file to load (ask, run, bench, serve, quantize's source); with no spec,
                the catalog variant already pulled that the policy recommends for this machine
    stored      the store's model (rm; a stale record too, so rm can forget it)
    header      where to read the GGUF header from: a local file, or the hub (show)
    remote      the file(s) on the hub with sizes and checksums (pull)
    candidates  the models to plan, with where their facts come from (fit)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

from localcascade import settings
from localcascade.hub import download as hub
from localcascade.resolve import plans as planning
from localcascade.store import models as store
from localcascade.resolve.candidates import Candidate, catalog_candidates, header_candidate
from localcascade.model.catalog import find_variant, load_catalog
from localcascade.errors import DownloadError, LocalCascadeError, ModelNotFoundError, OfflineError, UsageError
from localcascade.hardware.facts import Hardware
from localcascade.hub.download import RemoteModel
from localcascade.model.spec import HF_SCHEME, HubFile, ModelRef, check_remote_name, is_repo_form, parse, quant_from_name
from localcascade.planning.plan import Plan, PlanRequest
from localcascade.store.models import StoredModel
from localcascade.store.index import file_key

Need = Literal["file", "stored", "header", "remote", "candidates"]

_CATALOG_NOTE = "from the built-in catalog (header facts derived offline)"
_LIVE_HEADER_NOTE = "from the live header on the hub"


@dataclass(frozen=True)
class ResolvedFile:
    """need="file": the local file to load (the first shard of a split set)."""

    spec: str | None
    path: Path
    stored: StoredModel | None = None    # the store's model, when the spec names one
    plan: Plan | None = None             # no spec: the plan that picked the variant


@dataclass(frozen=True)
class ResolvedStored:
    """need="stored": the store's model (a stale record too, so rm can forget it)."""

    spec: str
    stored: StoredModel


@dataclass(frozen=True)
class ResolvedHeader:
    """need="header": where to read the GGUF header from, a local path or an hf:// address."""

    spec: str
    header_source: str
    stored: StoredModel | None = None


@dataclass(frozen=True)
class ResolvedRemote:
    """need="remote": the file(s) on the hub with sizes and checksums; ``remote`` is None when
    offline and the model is already here."""

    spec: str
    ref: ModelRef
    stored: StoredModel | None = None
    remote: RemoteModel | None = None


@dataclass(frozen=True)
class ResolvedCandidates:
    """need="candidates": the models to plan, and where their facts came from when not their own header."""

    spec: str | None
    candidates: tuple[Candidate, ...]
    notes: tuple[str, ...] = ()
    stored: StoredModel | None = None
    ref: ModelRef | None = None


class NoDefaultModelError(ModelNotFoundError):
    """No model was named and no catalog variant is pulled to pick by default."""

    def __init__(self, message: str, present: tuple[str, ...] = ()):
        super().__init__(message)
        self.present = present   # the models that are here but are not catalog variants


class StaleRecordError(ModelNotFoundError):
    """The name is registered, but the file it names is gone."""


@overload
def resolve(spec: str | None, need: Literal["file"] = "file", *, hardware: Hardware | None = None,
            request: PlanRequest | None = None) -> ResolvedFile: ...
@overload
def resolve(spec: str, need: Literal["stored"], **_) -> ResolvedStored: ...
@overload
def resolve(spec: str, need: Literal["header"], **_) -> ResolvedHeader: ...
@overload
def resolve(spec: str, need: Literal["remote"], **_) -> ResolvedRemote: ...
@overload
def resolve(spec: str | None, need: Literal["candidates"], **_) -> ResolvedCandidates: ...


def resolve(spec: str | None, need: Need = "file", *, hardware: Hardware | None = None,
            request: PlanRequest | None = None):
    """Resolve ``spec`` for ``need`` (see the module's table); ``hardware`` and ``request`` pick the
    default model when ``need`` is "file" and no spec is given (this machine when None)."""
    if need == "candidates":
        return _candidates(spec)
    if not spec:
        if need != "file":
            raise UsageError("no model named: give a variant (Q4_K_M), REPO:QUANT, hf://REPO/FILE.gguf or a path")
        return _default_file(hardware, request)
    if need == "file":
        path = Path(spec).expanduser()
        if path.is_file():
            return ResolvedFile(spec, path=path)
        stored = _stored(spec)
        return ResolvedFile(spec, path=stored.path, stored=stored)
    if need == "stored":
        return ResolvedStored(spec, _stored(spec, stale_ok=True))
    if need == "header":
        return _header(spec)
    if need == "remote":
        return _remote(spec)
    raise ValueError(f"unknown need {need!r}")


# -- names to ModelRefs ------------------------------------------------------------------------

def parse_model_spec(spec: str) -> ModelRef:
    """What ``spec`` names, without asking the hub: a local file, a hub file, REPO:QUANT or a catalog
    variant. Raises ModelNotFoundError/UsageError with a one-line reason."""
    text = spec.strip()
    if text and not text.startswith(HF_SCHEME):
        local = Path(text).expanduser()
        if local.is_file():
            return ModelRef(kind="local", spec=text, path=local.absolute(), quant=quant_from_name(local.name))
        if local.exists():
            raise ModelNotFoundError(not_a_model_file(local))
    form = parse(text)
    if form.kind == "hf_file":
        return ModelRef(kind="hf_file", spec=text, repo=form.repo, files=(form.hub.path,),
                        revision=form.hub.revision or "main", quant=form.quant)
    if form.kind == "repo_quant":
        return ModelRef(kind="repo_quant", spec=text, repo=form.repo, quant=form.quant)
    if form.kind == "repo":
        raise UsageError(f"{text} is a repository: name one of its models, e.g. {text}:Q4_K_M "
                         f"(`localcascade fit {text}` shows them all)")
    if form.kind == "path":
        raise ModelNotFoundError(f"model file {text} not found")
    try:
        variant = find_variant(text)
    except ModelNotFoundError:
        raise ModelNotFoundError(
            f"unknown model {text!r}: give a catalog variant (see `localcascade pull --help`), "
            "REPO:QUANT, hf://REPO/FILE.gguf or a path"
        ) from None
    for name in variant.files:
        check_remote_name(name)  # the catalog is data: its names are checked like a listing's
    return ModelRef(kind="variant", spec=variant.quant, repo=variant.repo, quant=variant.quant,
                    files=tuple(variant.files), variant=variant, sha256=_catalog_checksums(variant))


def not_a_model_file(path: Path) -> str:
    """Why an existing path that is not a regular file (a folder, a device, a pipe) is no model."""
    kind = "a folder" if path.is_dir() else "not a regular file"
    return f"{path} is {kind}: give a .gguf model file"


def _catalog_checksums(variant) -> tuple[str | None, ...]:
    sha = variant.sha256
    files = list(variant.files)
    if isinstance(sha, dict):
        return tuple(sha.get(f) for f in files)
    if isinstance(sha, (list, tuple)):
        return tuple(sha)
    return (sha,) if len(files) == 1 else tuple(None for _ in files)


# -- the store ---------------------------------------------------------------------------------

def _stored(spec: str, *, stale_ok: bool = False, models: list[StoredModel] | None = None) -> StoredModel:
    """The stored model a user named: a registered name, a variant, REPO:QUANT, hf://..., or a file path.

    A registered name whose file is gone is returned when ``stale_ok`` (rm forgets it), else said."""
    text = spec.strip()
    models = store.list_models() if models is None else models
    for model in models:
        if model.name == text or (model.where == "hf-cache" and model.name.lower() == text.lower()):
            return model
    path = Path(text).expanduser()
    for model in store.stale_models():
        if model.name == text or any(file_key(f) == file_key(path) for f in model.files):
            if stale_ok:
                return model
            raise StaleRecordError(f"{model.name} is registered to {model.path}, which is gone: "
                                   f"`localcascade rm {model.name}` forgets it")
    if path.exists():
        if not path.is_file():
            raise ModelNotFoundError(not_a_model_file(path))
        real = file_key(path)
        for model in models:
            if any(file_key(f) == real for f in model.files):
                return model
        raise ModelNotFoundError(f"{text} is not a model the store knows (see `localcascade list`)")
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


def _stored_or_none(spec: str, models: list[StoredModel] | None = None) -> StoredModel | None:
    """The stored model ``spec`` names, or None; a stale record is still an error (its name is taken)."""
    try:
        return _stored(spec, models=models)
    except StaleRecordError:
        raise
    except ModelNotFoundError:
        return None


def _pulled_variants(models: list[StoredModel]) -> dict[str, Path]:
    """The catalog variants among ``models``, by name, with the file each is planned and loaded from."""
    return {m.variant: m.path for m in models if m.variant}


# -- per need ----------------------------------------------------------------------------------

def _default_file(hardware: Hardware | None, request: PlanRequest | None) -> ResolvedFile:
    """No model named: the pulled catalog variant the policy recommends (only catalog variants are
    picked by default; any other model must be named)."""
    present = store.list_models()
    found = planning.best_local_variant(present, hardware, request)
    if found is None:
        names = tuple(m.name for m in present)
        if names:
            raise NoDefaultModelError("no Nemotron-Cascade-2 catalog variant is pulled, so none is picked by default",
                                      names)
        raise NoDefaultModelError("no model pulled yet")
    stored, plan = found
    return ResolvedFile(None, path=Path(stored.path), stored=stored, plan=plan)


def _header(spec: str) -> ResolvedHeader:
    """Where to read the header of ``spec``: its stored file; a hub file not downloaded (range
    requests); a local file; or, for a catalog variant not pulled yet, its file on the hub."""
    stored = _stored_or_none(spec)
    if stored is not None:
        return ResolvedHeader(spec, str(stored.path), stored)
    text = spec.strip()
    if text.startswith(HF_SCHEME):
        return ResolvedHeader(spec, text)
    path = Path(text).expanduser()
    if path.is_file():
        return ResolvedHeader(spec, str(path))
    if path.exists():
        raise ModelNotFoundError(not_a_model_file(path))
    try:
        variant = find_variant(text)
    except LocalCascadeError:
        raise ModelNotFoundError(f"no model file or known model named {text!r} (see `localcascade list`)") from None
    return ResolvedHeader(spec, HubFile(variant.repo, None, variant.files[0]).uri)


def _remote(spec: str) -> ResolvedRemote:
    """The file(s) on the hub ``spec`` names; offline, the copy already here (``remote`` None)."""
    stored = _stored_or_none(spec)
    if stored is not None and stored.where == "local":
        raise UsageError(f"{spec} is a model on this machine ({stored.path}); nothing to pull")
    ref = parse_model_spec(spec)
    if ref.kind == "local":
        raise UsageError(f"{spec} is a local file already; nothing to pull")
    if settings.hub_offline():
        if stored is None:
            raise OfflineError(f"HF_HUB_OFFLINE=1 and {ref.label} is not in the cache")
        return ResolvedRemote(spec, ref, stored)
    return ResolvedRemote(spec, ref, stored, hub.resolve_remote(ref))


def _candidates(spec: str | None) -> ResolvedCandidates:
    """The models ``spec`` names, to plan, each with its facts, and notes on where they came from."""
    if not spec:
        models = catalog_candidates(pulled=_pulled_variants(store.list_models()))
        return ResolvedCandidates(spec, candidates=tuple(models), notes=tuple(_notes_for(models)))
    if is_repo_form(spec) and not Path(spec).expanduser().exists():
        models = [header_candidate(HubFile(spec, None, files[0]).uri, files[0], quant_from_name(files[0]))
                  for files in hub.list_repo_models(spec)]
        return ResolvedCandidates(spec, candidates=tuple(models), notes=("from the live headers on the hub",))
    present = store.list_models()   # scanned once: the HF cache may hold many repositories
    stored = _stored_or_none(spec, present)  # a registered name, a download, or a known file
    if stored is not None:
        model = header_candidate(str(stored.path), stored.name, stored.quant or stored.variant)
        return ResolvedCandidates(spec, stored=stored, candidates=(model,))
    ref = parse_model_spec(spec)
    if ref.kind == "local":
        return ResolvedCandidates(spec, ref=ref, candidates=(header_candidate(str(ref.path), ref.path.name, ref.quant),))
    if ref.kind == "variant":
        models = catalog_candidates(ref.spec, pulled=_pulled_variants(present))
        return ResolvedCandidates(spec, ref=ref, candidates=tuple(models), notes=tuple(_notes_for(models)))
    try:
        if ref.kind == "hf_file":
            model = header_candidate(ref.spec, ref.files[0], ref.quant)
        else:
            remote = hub.resolve_remote(ref)
            model = header_candidate(HubFile(remote.repo, None, remote.files[0].path).uri, ref.label, ref.quant)
        return ResolvedCandidates(spec, ref=ref, candidates=(model,), notes=(_LIVE_HEADER_NOTE,))
    except (DownloadError, OSError) as err:
        fallback = _catalog_stand_in(ref, present)
        if fallback is None:
            raise
        return ResolvedCandidates(spec, ref=ref, candidates=tuple(fallback),
                        notes=(f"hub not reachable ({err}); answered from the built-in catalog",))


def _notes_for(models: list[Candidate]) -> list[str]:
    """Where the facts came from, when it is not simply the file's own header."""
    from_catalog = [m.quant for m in models if m.source == "catalog"]
    if not from_catalog:
        return []
    if len(from_catalog) == len(models):
        return [_CATALOG_NOTE]
    return [f"{', '.join(from_catalog)} {_CATALOG_NOTE}; the rest from the downloaded files' headers"]


def _catalog_stand_in(ref: ModelRef, present: list[StoredModel]) -> list[Candidate] | None:
    """The catalog's facts for a hub file, when it is the catalog's own file: never another model's."""
    for v in load_catalog():
        if v.repo.lower() != (ref.repo or "").lower():
            continue
        if (ref.kind == "repo_quant" and v.quant.upper() == (ref.quant or "").upper()) or (
                ref.kind == "hf_file" and ref.files[0] in v.files):
            return catalog_candidates(v.quant, pulled=_pulled_variants(present))
    return None
