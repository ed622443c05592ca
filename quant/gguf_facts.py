"""The facts quantization needs from a local GGUF file or split set: tensor types and sizes.

Read with the ``gguf`` package (memory-mapped, so only the header pages are
touched). Kept here rather than borrowed from ``localcascade`` so ``quant`` stays
a self-contained library.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass
from pathlib import Path

from localcascade.errors import QuantizeError

_SHARD = re.compile(r"^(?P<prefix>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")


@dataclass(frozen=True)
class GGUFFacts:
    shards: tuple[Path, ...]
    tensor_types: dict[str, str]           # name -> ggml type name ("F16", "Q4_K")
    tensor_ne: dict[str, tuple[int, ...]]  # name -> ggml shape (row length first)
    metadata_bytes: int                    # header + key/values + tensor infos, padded (first shard)
    alignment: int
    file_bytes: int

    def padded_bytes(self, name: str, type_name: str) -> int:
        """Bytes tensor ``name`` takes stored as ``type_name``, padded to the file's alignment."""
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
        ne = self.tensor_ne[name]
        n_elements = 1
        for n in ne:
            n_elements *= n
        size = n_elements // block * type_size
        return (size + self.alignment - 1) // self.alignment * self.alignment

    def main_weight_type(self) -> str:
        """The type that holds the most bytes among the weight matrices (tensors of 2+ dimensions)."""
        by_type: collections.Counter[str] = collections.Counter()
        for name, type_name in self.tensor_types.items():
            if len(self.tensor_ne[name]) >= 2:
                by_type[type_name] += self.padded_bytes(name, type_name)
        return by_type.most_common(1)[0][0] if by_type else "F32"


def shard_paths(path: Path) -> list[Path]:
    """All files of the split set ``path`` belongs to (just ``[path]`` when it is not split)."""
    match = _SHARD.match(path.name)
    if not match:
        return [path]
    count = int(match.group("count"))
    return [path.with_name(f"{match.group('prefix')}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def read_facts(path: str | Path) -> GGUFFacts:
    """Read the header(s) of ``path`` (any shard of a split set names the whole set)."""
    from gguf import GGUFReader

    path = Path(path)
    shards = shard_paths(path)
    types: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    metadata_bytes = alignment = 0
    for i, shard in enumerate(shards):
        try:
            reader = GGUFReader(shard)
        except (OSError, ValueError, KeyError, IndexError) as err:
            raise QuantizeError(f"{shard.name} is not a readable GGUF file ({err})") from None
        if i == 0:
            metadata_bytes, alignment = reader.data_offset, reader.alignment
        for tensor in reader.tensors:
            types[tensor.name] = tensor.tensor_type.name
            shapes[tensor.name] = tuple(int(n) for n in tensor.shape)
    if not types:
        raise QuantizeError(f"{path.name} holds no tensors")
    return GGUFFacts(
        shards=tuple(shards), tensor_types=types, tensor_ne=shapes, metadata_bytes=metadata_bytes,
        alignment=alignment, file_bytes=sum(s.stat().st_size for s in shards),
    )
