"""Read a GGUF header - metadata and tensor table - without reading the weights.

``read_header(source)`` accepts

* a local file, or any shard of a split set ``name-0000K-of-0000N.gguf`` (all shards
  are found and read, and their ``split.*`` metadata checked);
* a hub file ``hf://owner/repo[@revision]/path/file.gguf`` (split sets too; the address
  grammar is model_spec's), read with HTTP range requests (hub_range): the first 1 MiB,
  then geometrically more only as far as the header goes.

The parser is our own, over the bytes read so far: every count and length is
checked against what the file can still hold before anything is allocated, and the
metadata arrays together are capped at MAX_METADATA_ELEMENTS elements, so a
damaged or hostile file gives one ``GGUFHeaderError`` line naming the file and the
problem - never a crash, a hang or a multi-gigabyte allocation. (gguf.GGUFReader
maps the whole file and trusts the counts; we use the gguf package only for its
type tables.)

Parsed headers are cached in memory per process (local files keyed by path, size
and mtime) and, for hub files, on disk in ``data_dir()/headers/`` keyed by URL,
commit and ETag, so a second look at a hub model costs one HEAD request.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import Any, Callable

from localcascade import settings
from localcascade.hub import ranges as hub_range
from localcascade.errors import GGUFHeaderError, ModelNotFoundError, OfflineError
from localcascade.model.hparams import check_hparams
from localcascade.hub.errors import EntryMissingError, hub_error
from localcascade.model.spec import HF_SCHEME, HubFile, parse_hub_uri, shard_names

__all__ = ["GGUFFile", "ModelHeader", "TensorInfo", "clear_cache", "read_header"]

INITIAL_READ_BYTES = 1 << 20  # one round trip covers small headers
MAX_HEADER_BYTES = 128 << 20  # a real header (131K-token vocab and all) is a few MiB
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4
GGML_MAX_NAME = 64  # llama.cpp refuses tensor names this long or longer
MAX_ARRAY_NESTING = 8
# Array elements in all metadata together. The bounds check alone lets a 128 MiB header hold
# ~128M one-byte elements, a ~1 GiB Python list; a real header (262K-token vocab: tokens,
# scores, types, merges) holds about 1M.
MAX_METADATA_ELEMENTS = 8 << 20
INT64_MAX = (1 << 63) - 1
CACHE_FORMAT = 1

# GGUF value types -> (struct code, size). STRING=8 and ARRAY=9 are handled apart.
_SCALARS = {
    0: ("B", 1), 1: ("b", 1), 2: ("H", 2), 3: ("h", 2), 4: ("I", 4), 5: ("i", 4),
    6: ("f", 4), 7: ("?", 1), 10: ("Q", 8), 11: ("q", 8), 12: ("d", 8),
}
_STRING, _ARRAY = 8, 9
_MIN_VALUE_BYTES = {**{t: size for t, (_, size) in _SCALARS.items()}, _STRING: 8, _ARRAY: 12}
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, a 1-byte key, value type, a 1-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset


# -- results -------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: ne0 (the contiguous dimension) first
    ggml_type: int
    type_name: str  # "Q4_K", "F16", ...
    offset: int  # absolute, in its own file
    n_bytes: int
    shard: int  # index into ModelHeader.files

    @property
    def n_elements(self) -> int:
        return functools.reduce(lambda a, b: a * b, self.shape, 1)


@dataclass
class GGUFFile:
    source: str  # the local path or hf:// URL of this file
    version: int
    alignment: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    data_offset: int
    file_size: int | None
    header_bytes_read: int


@dataclass
class ModelHeader:
    """One model: a single GGUF file or all shards of a split set, in order."""

    files: list[GGUFFile] = field(default_factory=list)

    @property
    def source(self) -> str:
        return self.files[0].source

    @property
    def metadata(self) -> dict[str, Any]:
        return self.files[0].metadata

    @property
    def tensors(self) -> list[TensorInfo]:
        return [t for f in self.files for t in f.tensors]

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def arch_get(self, suffix: str, default: Any = None) -> Any:
        """``"{architecture}.{suffix}"``, e.g. ``arch_get("block_count")``."""
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    @property
    def file_bytes(self) -> int | None:
        sizes = [f.file_size for f in self.files]
        return None if any(s is None for s in sizes) else sum(sizes)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)


# -- ggml type tables (from the gguf package, imported only when a header is parsed) ---


@functools.lru_cache(maxsize=1)
def _ggml_types() -> dict[int, tuple[str, int, int]]:
    """ggml type id -> (name, block size, bytes per block)."""
    from gguf.constants import GGML_QUANT_SIZES

    return {int(t): (t.name, block, size) for t, (block, size) in GGML_QUANT_SIZES.items()}


# -- bytes: a growing prefix of a file ------------------------------------------------


class _Prefix:
    """The first bytes of a file, fetched on demand, growing geometrically."""

    def __init__(self, name: str, size: int | None, fetch: Callable[[int, int], bytes]):
        self.name = name
        self.size = size  # None when the server did not say
        self.fetch = fetch  # fetch(offset, n) -> up to n bytes from offset
        self.data = bytearray()
        self.eof = False

    def remaining_after(self, pos: int) -> int:
        """Bytes a header could still hold past ``pos``."""
        limit = MAX_HEADER_BYTES if self.size is None else min(self.size, MAX_HEADER_BYTES)
        return max(limit - pos, 0)

    def ensure(self, end: int, what: str) -> None:
        if end <= len(self.data):
            return
        if (self.size is not None and end > self.size) or self.eof:
            have = self.size if self.size is not None else len(self.data)
            raise GGUFHeaderError(f"{self.name}: truncated: {what} needs byte {end:,} but the file has {have:,}")
        if end > MAX_HEADER_BYTES:
            raise GGUFHeaderError(
                f"{self.name}: header larger than {MAX_HEADER_BYTES >> 20} MiB ({what} needs byte {end:,}); "
                "refusing to read further"
            )
        target = max(end, 2 * len(self.data), INITIAL_READ_BYTES)
        target = min(target, MAX_HEADER_BYTES, self.size if self.size is not None else MAX_HEADER_BYTES)
        chunk = self.fetch(len(self.data), target - len(self.data))
        if len(chunk) < target - len(self.data):
            self.eof = True  # the file is shorter than we were told (or than we asked)
        self.data += chunk
        if end > len(self.data):
            raise GGUFHeaderError(
                f"{self.name}: truncated: {what} needs byte {end:,} but the file has {len(self.data):,}"
            )


# -- the parser ---------------------------------------------------------------------------


def _show(text: str, limit: int = 60) -> str:
    """A name from the file, safe to put in a one-line message."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


class _Parser:
    def __init__(self, prefix: _Prefix):
        self.buf = prefix
        self.name = prefix.name
        self.pos = 0
        self.endian = "<"
        self.elements = 0  # metadata array elements so far, against MAX_METADATA_ELEMENTS

    def fail(self, problem: str) -> GGUFHeaderError:
        return GGUFHeaderError(f"{self.name}: {problem}")

    def take(self, n: int, what: str) -> int:
        """Make ``n`` bytes at the cursor available; return their start and advance."""
        start = self.pos
        self.buf.ensure(start + n, what)
        self.pos = start + n
        return start

    def scalar(self, code: str, size: int, what: str):
        start = self.take(size, what)
        return struct.unpack_from(self.endian + code, self.buf.data, start)[0]

    def u32(self, what: str) -> int:
        return self.scalar("I", 4, what)

    def u64(self, what: str) -> int:
        return self.scalar("Q", 8, what)

    def check_count(self, n: int, unit_bytes: int, what: str) -> None:
        """Refuse counts the rest of the file could not possibly hold, before allocating."""
        room = self.buf.remaining_after(self.pos)
        if n * unit_bytes > room:
            raise self.fail(f"{what} claims {n:,} entries, more than the {room:,} header bytes left could hold")

    def string(self, what: str) -> str:
        n = self.u64(what)
        self.check_count(n, 1, what)
        start = self.take(n, what)
        try:
            return self.buf.data[start:start + n].decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            code, size = _SCALARS[vtype]
            return self.scalar(code, size, what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            if depth >= MAX_ARRAY_NESTING:
                raise self.fail(f"{what} nests arrays deeper than {MAX_ARRAY_NESTING} levels")
            item_type = self.u32(what)
            if item_type not in _MIN_VALUE_BYTES:
                raise self.fail(f"{what} has an array of unknown value type {item_type}")
            n = self.u64(what)
            self.check_count(n, _MIN_VALUE_BYTES[item_type], what)
            self.elements += n
            if self.elements > MAX_METADATA_ELEMENTS:
                raise self.fail(f"{what} brings the metadata arrays to {self.elements:,} elements, more than the "
                                f"{MAX_METADATA_ELEMENTS:,} this reader accepts")
            if item_type in _SCALARS:  # numbers: one struct call for the whole array
                code, size = _SCALARS[item_type]
                start = self.take(n * size, what)
                return list(struct.unpack_from(f"{self.endian}{n}{code}", self.buf.data, start))
            return [self.value(item_type, what, depth + 1) for _ in range(n)]
        raise self.fail(f"{what} has unknown value type {vtype}")

    def parse(self, source: str) -> GGUFFile:
        magic = bytes(self.buf.data[self.take(4, "the magic number"):self.pos])
        if magic != b"GGUF":
            raise self.fail(f"not a GGUF file (starts with {magic!r}, expected b'GGUF')")
        version = self.u32("the version")
        if version not in SUPPORTED_VERSIONS:
            swapped = struct.unpack("<I", struct.pack(">I", version))[0]
            if swapped in SUPPORTED_VERSIONS:
                self.endian, version = ">", swapped  # a big-endian file (s390x builds write them)
            else:
                raise self.fail(f"unsupported GGUF version {version} (this reader knows versions 2 and 3)")
        n_tensors = self.u64("the tensor count")
        n_kv = self.u64("the metadata count")
        self.check_count(n_kv, _MIN_KV_BYTES, "the metadata count")
        self.check_count(n_tensors, _MIN_TENSOR_INFO_BYTES, "the tensor count")

        metadata: dict[str, Any] = {}
        for i in range(n_kv):
            key = self.string(f"metadata key {i}")
            if not key:
                raise self.fail(f"metadata key {i} is empty")
            if key in metadata:
                raise self.fail(f"duplicate metadata key {_show(key)}")
            vtype = self.u32(f"the type of {_show(key)}")
            metadata[key] = self.value(vtype, f"the value of {_show(key)}")

        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise self.fail(f"general.alignment {alignment!r} is not a power of two")

        types = _ggml_types()
        raw: list[tuple[str, tuple[int, ...], int, int, int]] = []
        seen: set[str] = set()
        for i in range(n_tensors):
            name = self.string(f"the name of tensor {i}")
            what = f"tensor {_show(name)}"
            if name in seen:
                raise self.fail(f"duplicate tensor name {_show(name)}")
            if len(name.encode()) >= GGML_MAX_NAME:
                raise self.fail(f"{what}: name longer than {GGML_MAX_NAME - 1} bytes")
            seen.add(name)
            n_dims = self.u32(what)
            if n_dims > GGML_MAX_DIMS:
                raise self.fail(f"{what} has {n_dims} dimensions (at most {GGML_MAX_DIMS})")
            shape = tuple(self.u64(what) for _ in range(n_dims))
            n_elements = 1
            for dim in shape:
                if dim <= 0 or dim > INT64_MAX:
                    raise self.fail(f"{what} has a non-positive dimension in shape {list(shape)}")
                n_elements *= dim
            if n_elements > INT64_MAX:
                raise self.fail(f"{what} has more elements than fit in 64 bits (shape {list(shape)})")
            ggml_type = self.u32(what)
            if ggml_type not in types:
                raise self.fail(f"{what} has unknown ggml type {ggml_type}")
            type_name, block, block_bytes = types[ggml_type]
            if shape and shape[0] % block:
                raise self.fail(f"{what}: first dimension {shape[0]} is not a multiple of the {type_name} block ({block})")
            offset = self.u64(what)
            raw.append((name, shape, ggml_type, offset, n_elements // block * block_bytes))

        data_offset = -(-self.pos // alignment) * alignment
        size = self.buf.size
        tensors = []
        previous_end, previous_name = data_offset, None
        for name, shape, ggml_type, offset, n_bytes in sorted(raw, key=lambda r: r[3]):
            what = f"tensor {_show(name)}"
            if offset % alignment:
                raise self.fail(f"{what} data offset {offset:,} is not aligned to {alignment}")
            start = data_offset + offset
            if start < previous_end:
                raise self.fail(f"{what} data overlaps tensor {_show(previous_name)}")
            if size is not None and start + n_bytes > size:
                raise self.fail(
                    f"{what} data ends at byte {start + n_bytes:,}, past the end of the file ({size:,} bytes)"
                )
            previous_end, previous_name = start + n_bytes, name
            tensors.append(TensorInfo(name, shape, ggml_type, types[ggml_type][0], start, n_bytes, 0))
        order = {r[0]: i for i, r in enumerate(raw)}
        tensors.sort(key=lambda t: order[t.name])  # keep the file's own order
        return GGUFFile(
            source=source,
            version=version,
            alignment=alignment,
            metadata=metadata,
            tensors=tensors,
            data_offset=data_offset,
            file_size=size,
            header_bytes_read=len(self.buf.data),
        )


# -- split sets ---------------------------------------------------------------------------


def _assemble(files: list[GGUFFile], named_as_split: bool) -> ModelHeader:
    """Check the shards agree with each other and with their names; number them."""
    count = len(files)
    first = files[0]
    declared = first.metadata.get("split.count")
    if count == 1 and not named_as_split and isinstance(declared, int) and declared > 1:
        raise GGUFHeaderError(
            f"{first.source}: is shard 1 of a {declared}-file split set, but its name does not follow "
            "name-00001-of-0000N.gguf, so the other shards cannot be found"
        )
    if named_as_split and count > 1:
        for i, f in enumerate(files):
            if f.metadata.get("split.count") != count:
                raise GGUFHeaderError(
                    f"{f.source}: split.count is {f.metadata.get('split.count')!r}, but its name says {count} shards"
                )
            if f.metadata.get("split.no") != i:
                raise GGUFHeaderError(
                    f"{f.source}: split.no is {f.metadata.get('split.no')!r}, but its name says shard {i + 1} "
                    f"(split.no {i})"
                )
    seen: dict[str, str] = {}
    for i, f in enumerate(files):
        f.tensors = [dataclasses.replace(t, shard=i) for t in f.tensors]
        for t in f.tensors:
            if t.name in seen:
                raise GGUFHeaderError(f"{f.source}: tensor {_show(t.name)} is also in {seen[t.name]}")
            seen[t.name] = f.source
    expected = first.metadata.get("split.tensors.count")
    if count > 1 and isinstance(expected, int) and expected != len(seen):
        raise GGUFHeaderError(
            f"{first.source}: split.tensors.count is {expected} but the {count} shards hold {len(seen)} tensors"
        )
    return ModelHeader(files)


# -- local files --------------------------------------------------------------------------

_memory_cache: dict[tuple, GGUFFile] = {}


def clear_cache() -> None:
    """Forget headers parsed in this process (the on-disk cache of hub headers stays)."""
    _memory_cache.clear()


def _read_local_file(path: Path) -> GGUFFile:
    try:
        stat = path.stat()
    except OSError as err:
        raise GGUFHeaderError(f"{path}: cannot read: {err.strerror}") from None
    if not S_ISREG(stat.st_mode):
        raise GGUFHeaderError(f"{path}: not a regular file")
    key = ("local", str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _memory_cache:
        return _memory_cache[key]
    try:
        with open(path, "rb") as f:
            def fetch(offset: int, n: int) -> bytes:
                f.seek(offset)
                return f.read(n)

            parsed = _Parser(_Prefix(str(path), stat.st_size, fetch)).parse(str(path))
    except OSError as err:
        raise GGUFHeaderError(f"{path}: cannot read: {err.strerror}") from None
    _memory_cache[key] = parsed
    return parsed


def _read_local(path: Path) -> ModelHeader:
    if not path.exists():
        raise ModelNotFoundError(f"{path}: no such file")
    names = shard_names(path.name)
    if names is None:
        return _assemble([_read_local_file(path)], named_as_split=False)
    shards = [path.with_name(n) for n in names]
    for i, shard in enumerate(shards):
        if not shard.is_file():
            raise GGUFHeaderError(f"{shard}: missing shard {i + 1} of {len(shards)} of the split set {path.name}")
    return _assemble([_read_local_file(s) for s in shards], named_as_split=True)


# -- hub files ------------------------------------------------------------------------------


def _cache_path(key: str) -> Path:
    return settings.data_dir() / "headers" / (hashlib.sha256(key.encode()).hexdigest()[:40] + ".json")


def _load_cached(key: str) -> GGUFFile | None:
    path = _cache_path(key)
    try:
        payload = json.loads(path.read_text())
        if payload.get("format") != CACHE_FORMAT or payload.get("key") != key:
            return None
        f = payload["file"]
        tensors = [TensorInfo(**{**t, "shape": tuple(t["shape"])}) for t in f.pop("tensors")]
        return GGUFFile(**f, tensors=tensors)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or unreadable: read the header again


def _store_cached(key: str, parsed: GGUFFile) -> None:
    path = _cache_path(key)
    payload = {"format": CACHE_FORMAT, "key": key, "file": dataclasses.asdict(parsed)}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as out:
            json.dump(payload, out)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written only costs a re-read next time
    finally:
        # Whatever stopped it before the rename (disk full, Ctrl-C): leave no temporary behind.
        if tmp is not None and os.path.exists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _read_hub_file(hub: HubFile) -> GGUFFile:
    try:
        meta = hub_range.head(hub)
    except Exception as err:  # noqa: BLE001 - translated to our errors, or re-raised as is
        raise _hub_failure(hub, err) from None
    key = f"{meta.url}|{meta.commit}|{meta.etag}|{meta.size}"
    if ("hub", key) in _memory_cache:
        return _memory_cache[("hub", key)]
    parsed = _load_cached(key) if meta.etag else None
    if parsed is None:
        try:
            parsed = _Parser(_Prefix(hub.uri, meta.size, hub_range.range_fetcher(meta.url))).parse(hub.uri)
        except GGUFHeaderError:
            raise
        except Exception as err:  # noqa: BLE001
            raise _hub_failure(hub, err) from None
        if meta.etag:
            _store_cached(key, parsed)
    _memory_cache[("hub", key)] = parsed
    return parsed


def _hub_failure(hub: HubFile, err: Exception) -> Exception:
    """Our one-line error for a failed hub read of ``hub``, or ``err`` itself when it is none of the hub's."""
    return hub_error(err, repo=hub.repo_id, path=hub.path, revision=hub.revision, uri=hub.uri) or err


def _read_hub(uri: str) -> ModelHeader:
    if settings.hub_offline():
        raise OfflineError(f"{uri}: HF_HUB_OFFLINE is set, so the hub cannot be asked for the header")
    hub = parse_hub_uri(uri)
    filename = hub.path.rpartition("/")[2]
    names = shard_names(filename)
    if names is None:
        return _assemble([_read_hub_file(hub)], named_as_split=False)
    files = []
    for i, name in enumerate(names):
        shard = hub.sibling(name)
        try:
            files.append(_read_hub_file(shard))
        except EntryMissingError:
            raise GGUFHeaderError(
                f"{shard.uri}: missing shard {i + 1} of {len(names)} of the split set {filename}"
            ) from None
    return _assemble(files, named_as_split=True)


# -- entry point ------------------------------------------------------------------------------


def read_header(source: str | os.PathLike) -> ModelHeader:
    """The header of a local GGUF file or split set, or of a hub file (``hf://...``).

    Hyperparameters of the wrong type, or that llama.cpp would abort on while loading, are refused
    here too (hparams.check_hparams): every command reads the header before it plans, summarizes,
    quantizes or loads, so none of them meets such a file later.
    """
    text = os.fspath(source)
    header = _read_hub(text) if text.startswith(HF_SCHEME) else _read_local(Path(text).expanduser())
    check_hparams(header.metadata, header.source)
    return header
