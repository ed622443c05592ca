"""What the planner knows about one model file: its hyperparameters and tensor table, as plain data.

Built from a GGUF header (``facts_from_header``) or from the catalog's derived data; read by the
memory model, the speed model and the planner. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from localcascade.model.hparams import HeaderKeys, check_hparams

# llama.cpp's --cpu-moe pattern (common/arg.cpp): the one copy of it in the package.
EXPERT_TENSOR_RE = re.compile(r"\.ffn_(up|down|gate|gate_up)_(ch|)exps")
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.")
_RECURRENT_ARCHS = {"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"}


@dataclass(frozen=True)
class TensorFact:
    name: str
    shape: tuple[int, ...]   # ggml order, ne0 first
    type_name: str           # "q4_K", "f32"...
    n_bytes: int


@dataclass(frozen=True)
class ModelFacts:
    """What the memory model needs to know about one model file."""

    architecture: str
    n_layer: int
    n_ctx_train: int
    n_embd: int
    n_vocab: int
    n_head: tuple[int, ...]         # per layer
    n_head_kv: tuple[int, ...]      # per layer; 0 = no attention in that layer
    head_dim_k: int
    head_dim_v: int
    recurrent: tuple[bool, ...]     # per layer
    ssm_d_conv: int = 0
    ssm_d_inner: int = 0
    ssm_d_state: int = 0
    ssm_n_group: int = 0
    ssm_dt_rank: int = 0
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    tensors: tuple[TensorFact, ...] = ()

    # --- derived -------------------------------------------------------------------------
    @property
    def file_tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def attention_layers(self) -> list[int]:
        return [i for i, kv in enumerate(self.n_head_kv) if kv > 0]

    @property
    def recurrent_layers(self) -> list[int]:
        return [i for i, r in enumerate(self.recurrent) if r]

    @property
    def moe_layers(self) -> list[int]:
        return sorted({layer_of(t.name) for t in self.tensors if EXPERT_TENSOR_RE.search(t.name)} - {None})

    @property
    def n_embd_r(self) -> int:
        return max(self.ssm_d_conv - 1, 0) * (self.ssm_d_inner + 2 * self.ssm_n_group * self.ssm_d_state)

    @property
    def n_embd_s(self) -> int:
        return self.ssm_d_state * self.ssm_d_inner

    def to_dict(self) -> dict:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "tensors"}
        for key in ("n_head", "n_head_kv", "recurrent"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, hparams: Mapping[str, Any], tensors: Iterable[TensorFact]) -> "ModelFacts":
        fields = dict(hparams)
        for key in ("n_head", "n_head_kv", "recurrent"):
            fields[key] = tuple(fields[key])
        return cls(**fields, tensors=tuple(tensors))


def layer_of(name: str) -> int | None:
    """The repeating layer a tensor belongs to ("blk.12.attn_q.weight" -> 12), None outside them."""
    match = _BLOCK_RE.match(name)
    return int(match.group(1)) if match else None


def is_expert_tensor(name: str) -> bool:
    """An MoE expert tensor (llama.cpp's --cpu-moe pattern)."""
    return bool(EXPERT_TENSOR_RE.search(name))


def facts_from_metadata(metadata: Mapping[str, Any], tensors: Iterable[TensorFact], source: str | None = None
                        ) -> ModelFacts:
    """Build ModelFacts from GGUF metadata (key -> value) and tensor infos, for any architecture.

    A header that cannot be planned (missing or mistyped hyperparameters, per-layer arrays of
    the wrong length) or that llama.cpp would abort on raises GGUFHeaderError; ``source``, the
    file, starts its message.
    """
    tensors = tuple(tensors)
    check_hparams(metadata, source)
    keys = HeaderKeys(metadata, source)
    arch = keys.arch
    if not arch:
        raise keys.error("the header has no general.architecture: not a llama.cpp model")

    n_layer = keys.int("block_count", 0)
    if n_layer <= 0:
        if not any(k.startswith(f"{arch}.") for k in metadata):
            raise keys.error(f"unknown architecture {arch!r}: the header has no {arch}.* hyperparameters")
        raise keys.error(f"the header has no {arch}.block_count")
    n_expert = keys.int("expert_count")
    if not n_expert:
        # llama.cpp then builds dense layers and fails on the expert tensors; the planner would
        # count them as dense weights.
        expert_tensor = next((t.name for t in tensors if EXPERT_TENSOR_RE.search(t.name)), None)
        if expert_tensor is not None:
            raise keys.error(f"it has expert tensors ({expert_tensor}) but {keys.key('expert_count')} is "
                             f"{'0' if keys.key('expert_count') in metadata else 'missing'}")
    n_embd = keys.int("embedding_length")
    n_head = keys.per_layer("attention.head_count", n_layer, (0,) * n_layer)
    n_head_kv = keys.per_layer("attention.head_count_kv", n_layer, n_head)
    n_ff = keys.per_layer("feed_forward_length", n_layer, (0,) * n_layer)
    head0 = n_head[0] or max(n_head) or 1
    head_dim_k = keys.int("attention.key_length", n_embd // head0 if n_head[0] else 0)
    head_dim_v = keys.int("attention.value_length", n_embd // head0 if n_head[0] else 0)

    has_ssm = metadata.get(keys.key("ssm.state_size")) is not None
    if arch in _RECURRENT_ARCHS:
        recurrent = (True,) * n_layer
        n_head_kv = (0,) * n_layer
    elif has_ssm:
        # Hybrid models: a layer without KV heads (and, for nemotron_h, without an FFN) is recurrent.
        if arch.startswith("nemotron_h"):
            recurrent = tuple(kv == 0 and ff == 0 for kv, ff in zip(n_head_kv, n_ff))
        else:
            recurrent = tuple(kv == 0 for kv in n_head_kv)
    else:
        recurrent = (False,) * n_layer

    n_vocab = keys.int("vocab_size", None)
    if n_vocab is None:
        tokens = metadata.get("tokenizer.ggml.tokens")
        n_vocab = len(tokens) if isinstance(tokens, (list, tuple)) else None
    if n_vocab is None:
        embd = next((t for t in tensors if t.name == "token_embd.weight"), None)
        n_vocab = embd.shape[1] if embd and len(embd.shape) > 1 else 0

    return ModelFacts(
        architecture=arch,
        n_layer=n_layer,
        n_ctx_train=keys.int("context_length"),
        n_embd=n_embd,
        n_vocab=int(n_vocab),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=head_dim_k,
        head_dim_v=head_dim_v,
        recurrent=recurrent,
        ssm_d_conv=keys.int("ssm.conv_kernel"),
        ssm_d_inner=keys.int("ssm.inner_size"),
        ssm_d_state=keys.int("ssm.state_size"),
        ssm_n_group=(keys.int("ssm.group_count") or 1) if has_ssm else 0,
        ssm_dt_rank=keys.int("ssm.time_step_rank"),
        n_expert=n_expert,
        n_expert_used=max(keys.per_layer("expert_used_count", n_layer, (0,))),
        n_ff_exp=max(keys.per_layer("expert_feed_forward_length", n_layer, (0,))),
        tensors=tensors,
    )


def facts_from_header(header: Any) -> ModelFacts:
    """ModelFacts from a parsed header (``.metadata`` dict and ``.tensors`` with name/shape/type_name/n_bytes)."""
    tensors = [
        TensorFact(t.name, tuple(int(d) for d in t.shape), str(t.type_name), int(t.n_bytes)) for t in header.tensors
    ]
    return facts_from_metadata(header.metadata, tensors, getattr(header, "source", None))
