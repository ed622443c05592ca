"""How models are named: the grammar of model specs and of GGUF file names. Pure: no I/O.

A spec is what a user types to name a model:

    Q4_K_M                                  a name: a catalog variant or a registered model
    owner/repo                              a repository (fit plans every model in it)
    owner/repo:Q4_K_M                       the GGUF file(s) in a repo whose name carries the quant
    hf://owner/repo[@revision]/path/f.gguf  one hub file (a shard names its whole split set)
    ./models/file.gguf                      a local file

``parse`` says which of these the text is by its form alone; whether a name is a catalog
variant, a registered model or a file on this machine is the resolver's question
(localcascade.resolve.resolver), which asks the catalog, the store and the file system.

File names: a split set is ``PREFIX-0000K-of-0000N.gguf`` (llama.cpp's llama_split_path), matched
by SPLIT_NAME here and nowhere else.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote

from localcascade.errors import ModelNotFoundError, UsageError

HF_SCHEME = "hf://"

# The one pattern for shard names; the prefix may hold folders ("BF16/model-00001-of-00002.gguf").
SPLIT_NAME = re.compile(r"^(?P<prefix>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")

_REPO_QUANT = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+):(?P<quant>[\w.-]+)$")
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_QUANT_IN_NAME = re.compile(r"(?<![A-Za-z0-9])((?:UD-)?I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32|MXFP4(?:_MOE)?)(?![A-Za-z0-9])",
                            flags=re.IGNORECASE)
# Projector and imatrix files share repos with the model files but are not models.
_NOT_MODELS = ("mmproj", "imatrix")
_HUB_URI_FORM = "write hub files as hf://owner/repo[@revision]/path/file.gguf"


# -- split sets -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    """Where a file name sits in its split set: ``prefix-{index:05d}-of-{count:05d}.gguf``."""

    prefix: str
    index: int   # 1-based, as in the name
    count: int


def shard_of(name: str) -> Shard | None:
    """The split-set position ``name`` (a file name or a path in a repo) carries; None if it is no shard."""
    match = SPLIT_NAME.match(name)
    if not match:
        return None
    return Shard(match["prefix"], int(match["index"]), int(match["count"]))


def shard_name(prefix: str, index: int, count: int) -> str:
    """The name of shard ``index`` (1-based) of ``count``, as llama.cpp writes it."""
    return f"{prefix}-{index:05d}-of-{count:05d}.gguf"


def shard_names(name: str) -> list[str] | None:
    """Every shard name of the split set ``name`` belongs to, in order; None if it is no shard
    (or a shard name no split set can have: shard 0, or 3 of 2)."""
    shard = shard_of(name)
    if shard is None or shard.count < 1 or not 1 <= shard.index <= shard.count:
        return None
    return [shard_name(shard.prefix, i, shard.count) for i in range(1, shard.count + 1)]


def model_stem(file_name: str) -> str:
    """A model file's name without ``.gguf`` and without a shard suffix: what names the model."""
    stem = file_name[: -len(".gguf")] if file_name.endswith(".gguf") else file_name
    shard = shard_of(stem + ".gguf")
    return shard.prefix if shard else stem


def group_model_files(paths: list[str]) -> list[tuple[str, ...]]:
    """Group GGUF paths into models: the shards of a split set form one model, in order."""
    models: dict[str, list[tuple[int, str]]] = {}
    for path in paths:
        shard = shard_of(path)
        key = f"{shard.prefix}#{shard.count}" if shard else path
        models.setdefault(key, []).append((shard.index if shard else 1, path))
    return [tuple(p for _, p in sorted(members)) for members in models.values()]


def model_files(paths: list[str]) -> list[str]:
    """The paths that are GGUF models (not the projector or imatrix files beside them)."""
    return [p for p in paths if p.endswith(".gguf") and not PurePosixPath(p).name.lower().startswith(_NOT_MODELS)]


# -- quants in names ---------------------------------------------------------------------------

def quant_from_name(file_name: str) -> str | None:
    """The quant a GGUF file name carries ("...-Q4_K_M.gguf" -> "Q4_K_M"), if any."""
    found = _QUANT_IN_NAME.findall(model_stem(PurePosixPath(file_name).name))
    return found[-1].upper() if found else None


def name_has_quant(path: str, quant: str) -> bool:
    """Whether ``quant`` appears in ``path`` as a word of its own (Q4_K is not in Q4_K_M)."""
    pattern = rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9_])"
    return re.search(pattern, path, flags=re.IGNORECASE) is not None


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


# -- hub URIs ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class HubFile:
    """One file on the hub: ``hf://owner/repo[@revision]/path``."""

    repo_id: str
    revision: str | None
    path: str

    @property
    def uri(self) -> str:
        rev = f"@{quote(self.revision, safe='')}" if self.revision else ""
        return f"{HF_SCHEME}{self.repo_id}{rev}/{self.path}"

    def sibling(self, file_name: str) -> HubFile:
        """The file ``file_name`` in this file's folder (another shard of its split set)."""
        directory = self.path.rpartition("/")[0]
        return HubFile(self.repo_id, self.revision, f"{directory}/{file_name}" if directory else file_name)


def parse_hub_uri(uri: str) -> HubFile:
    """``hf://owner/repo[@revision]/path/file.gguf`` (a revision with ``/`` is written %2F)."""
    parts = uri[len(HF_SCHEME):].split("/")
    if len(parts) < 3 or not all(parts):
        raise ModelNotFoundError(f"{uri}: {_HUB_URI_FORM}")
    owner, name = parts[0], parts[1]
    revision = None
    if "@" in name:
        name, _, revision = name.partition("@")
        revision = unquote(revision)
        if not name or not revision:
            raise ModelNotFoundError(f"{uri}: {_HUB_URI_FORM}")
    return HubFile(f"{owner}/{name}", revision, "/".join(parts[2:]))


# -- specs -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SpecForm:
    """What a spec is by its form alone (the resolver then asks the file system and the catalog)."""

    kind: str                  # "hf_file" | "repo_quant" | "repo" | "path" | "name"
    text: str                  # stripped
    repo: str | None = None
    quant: str | None = None   # upper case (repo_quant), or read from the file name (hf_file)
    hub: HubFile | None = None


def parse(spec: str) -> SpecForm:
    """The form of a spec; raises UsageError/ModelNotFoundError with a one-line reason."""
    text = spec.strip()
    if not text:
        raise UsageError("no model named: give a variant (Q4_K_M), REPO:QUANT, hf://REPO/FILE.gguf or a path")
    if text.startswith(HF_SCHEME):
        check_remote_name(text[len(HF_SCHEME):].split("/", 2)[-1])  # before the parser normalises anything
        hub = parse_hub_uri(text)
        check_remote_name(hub.path)
        return SpecForm("hf_file", text, repo=hub.repo_id, quant=quant_from_name(hub.path), hub=hub)
    repo_quant = _REPO_QUANT.match(text)
    if repo_quant:
        return SpecForm("repo_quant", text, repo=repo_quant["repo"], quant=repo_quant["quant"].upper())
    if is_repo_form(text):
        return SpecForm("repo", text, repo=text)
    if text.endswith(".gguf") or os.sep in text or text.startswith((".", "~")):
        return SpecForm("path", text)
    return SpecForm("name", text)


def is_repo_form(text: str) -> bool:
    """"owner/name" (not a .gguf file name): a Hugging Face repository, unless it is a path here."""
    return bool(_REPO.match(text)) and not text.endswith(".gguf")


@dataclass(frozen=True)
class ModelRef:
    """A model as the user named it, resolved to where it lives but not yet looked up on the hub."""

    kind: str                     # "variant" | "repo_quant" | "hf_file" | "local"
    spec: str                     # as typed (a variant: its catalog name)
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
