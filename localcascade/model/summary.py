"""What a GGUF header says about a model, in the terms `localcascade show` prints.

Blocks are counted per layer the way llama.cpp's nemotron_h loader decides them:
a layer with KV heads is attention, a layer with expert tensors is MoE, any
other layer is Mamba-2 (recurrent).
"""

from __future__ import annotations

import collections
from dataclasses import asdict, dataclass, field

from localcascade.model.facts import is_expert_tensor, layer_of

_THINK_TOKENS = ("<think>", "</think>")


@dataclass(frozen=True)
class ModelSummary:
    architecture: str | None
    name: str | None
    block_count: int
    blocks: dict[str, int]               # {"mamba": 23, "moe": 23, "attention": 6}
    pattern: str                         # one char per block: M, E, *
    expert_count: int | None
    expert_used_count: int | None
    expert_shared_count: int | None
    context_length: int | None
    chat_template: bool
    thinking_tokens: bool
    file_type: int | None
    tensor_types: dict[str, int] = field(default_factory=dict)  # ggml type -> tensor count
    tensor_bytes: int = 0
    file_bytes: int | None = None
    files: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        data = asdict(self)
        data["files"] = list(self.files)
        return data


def summarize(header) -> ModelSummary:
    """Summarize a ``gguf_header.ModelHeader``."""
    n_layer = int(header.arch_get("block_count") or 0)
    kv_heads = _per_layer(header.arch_get("attention.head_count_kv"), n_layer)
    expert_layers = {layer_of(t.name) for t in header.tensors if is_expert_tensor(t.name) and layer_of(t.name) is not None}
    pattern = "".join(
        "*" if kv_heads[i] > 0 else "E" if i in expert_layers else "M" for i in range(n_layer)
    )
    tokens = header.get("tokenizer.ggml.tokens") or []
    token_set = set(tokens) if len(tokens) < 1_000_000 else set()
    return ModelSummary(
        architecture=header.architecture,
        name=header.get("general.name"),
        block_count=n_layer,
        blocks={"mamba": pattern.count("M"), "moe": pattern.count("E"), "attention": pattern.count("*")},
        pattern=pattern,
        expert_count=_int(header.arch_get("expert_count")),
        expert_used_count=_int(header.arch_get("expert_used_count")),
        expert_shared_count=_int(header.arch_get("expert_shared_count")),
        context_length=_int(header.arch_get("context_length")),
        chat_template=bool(header.get("tokenizer.chat_template")),
        thinking_tokens=all(t in token_set for t in _THINK_TOKENS),
        file_type=_int(header.get("general.file_type")),
        tensor_types=dict(collections.Counter(t.type_name for t in header.tensors).most_common()),
        tensor_bytes=header.tensor_bytes,
        file_bytes=header.file_bytes,
        files=tuple(f.source for f in header.files),
    )


def _per_layer(value, n_layer: int) -> list[int]:
    if isinstance(value, (list, tuple)):
        values = [int(v) for v in value]
        return (values + [0] * n_layer)[:n_layer]
    return [int(value or 0)] * n_layer


def _int(value) -> int | None:
    return None if value is None else int(value)
