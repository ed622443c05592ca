"""The facts quantization needs from a local GGUF file or split set: tensor types and sizes.

Read with localcascade's header reader (only the header bytes are read); this
module keeps the handful of facts the quantizer checks in one small object.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

from localcascade.errors import GGUFHeaderError, QuantizeError
from localcascade.model.spec import shard_name, shard_of


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
    shard = shard_of(path.name)
    if shard is None:
        return [path]
    return [path.with_name(shard_name(shard.prefix, i, shard.count)) for i in range(1, shard.count + 1)]


def read_facts(path: str | Path) -> GGUFFacts:
    """Read the header(s) of ``path`` (any shard of a split set names the whole set)."""
    from localcascade.model.gguf_header import read_header

    path = Path(path)
    try:
        header = read_header(path)
    except GGUFHeaderError as err:
        raise QuantizeError(f"cannot read the GGUF header: {err}") from None
    if not header.tensors:
        raise QuantizeError(f"{path.name} holds no tensors")
    first = header.files[0]
    return GGUFFacts(
        shards=tuple(Path(f.source) for f in header.files),
        tensor_types={t.name: t.type_name for t in header.tensors},
        tensor_ne={t.name: tuple(t.shape) for t in header.tensors},
        metadata_bytes=first.data_offset,
        alignment=first.alignment,
        file_bytes=sum(Path(f.source).stat().st_size for f in header.files),
    )
