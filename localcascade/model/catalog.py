"""The built-in catalog of Nemotron-Cascade-2-30B-A3B variants (data in profiles/variants/*.json).

Each entry carries what the planner needs without a download or a network: the file(s), their
size and checksum where known, a quality rank, and the header facts (hyperparameters and every
tensor's shape, type and bytes) derived by scripts/derive_catalog.py. Where the published file is
larger than the derived one, the tensor sizes are grown to match it (see _grown_to_published).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib.resources import files

from localcascade.errors import ModelNotFoundError
from localcascade.model.facts import ModelFacts, TensorFact


@dataclass(frozen=True)
class Variant:
    quant: str                   # "Q4_K_M"
    repo: str                    # "bartowski/nvidia_Nemotron-Cascade-2-30B-A3B-GGUF"
    files: tuple[str, ...]       # one file, or every shard of a split set in order
    size_bytes: int              # all files together
    sha256: str | None
    quality_rank: int            # 1 = best
    facts: ModelFacts = field(repr=False, compare=False)
    derived_from: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.quant


def _variant_from(data: dict) -> Variant:
    tensors = [TensorFact(name, tuple(shape), type_name, n_bytes) for name, type_name, shape, n_bytes in data["tensors"]]
    derived = data.get("derived_from", {}).get("derived_file_bytes")
    if derived and int(data["size_bytes"]) > derived:
        tensors = _grown_to_published(tensors, int(data["size_bytes"]) - derived)
    return Variant(
        quant=data["quant"],
        repo=data["repo"],
        files=tuple(data["files"]),
        size_bytes=int(data["size_bytes"]),
        sha256=data.get("sha256"),
        quality_rank=int(data["quality_rank"]),
        facts=ModelFacts.from_dict(data["hparams"], tensors),
        derived_from=data.get("derived_from", {}),
    )


def _grown_to_published(tensors: list[TensorFact], missing: int) -> list[TensorFact]:
    """Spread ``missing`` bytes over the quantized tensors in proportion to their size.

    The published file is larger than llama.cpp's default recipe makes it (an imatrix recipe
    picks some types differently) and we cannot see which tensors differ without the file.
    Planning with the smaller derived sizes would call a fit that the real download misses,
    so every quantized tensor grows by the same fraction and the totals match the real file.
    A published size smaller than the derived one is ignored: then the derived sizes are the
    safer figure.
    """
    quantized = sum(t.n_bytes for t in tensors if t.type_name.upper() not in _UNQUANTIZED)
    factor = 1 + missing / quantized
    return [t if t.type_name.upper() in _UNQUANTIZED else TensorFact(t.name, t.shape, t.type_name, round(t.n_bytes * factor))
            for t in tensors]


_UNQUANTIZED = {"F32", "F16", "BF16"}  # norms, biases, routers: the quantizer keeps their type


@functools.lru_cache(maxsize=1)
def load_catalog() -> tuple[Variant, ...]:
    """Every catalog variant, best quality first."""
    folder = files("localcascade.profiles").joinpath("variants")
    entries = [json.loads(p.read_text()) for p in folder.iterdir() if p.name.endswith(".json")]
    return tuple(sorted((_variant_from(e) for e in entries), key=lambda v: v.quality_rank))


def find_variant(name: str) -> Variant:
    """The catalog variant called ``name`` (case-insensitive: "q4_k_m" finds Q4_K_M)."""
    wanted = name.strip().upper()
    for variant in load_catalog():
        if variant.quant.upper() == wanted:
            return variant
    known = ", ".join(v.quant for v in load_catalog())
    raise ModelNotFoundError(f"no catalog variant {name!r} (known: {known})")
