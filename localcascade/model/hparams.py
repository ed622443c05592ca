"""Typed, checked reads of a GGUF header's hyperparameters.

llama.cpp reads hyperparameters with asserts, not errors: a header whose values disagree
(more experts used than exist, a layer count past its limits) takes the process down with
GGML_ASSERT or SIGFPE, and a value of the wrong type surfaces here as a ValueError deep in
int(). ``check_hparams`` refuses such a header when it is read, as one GGUFHeaderError that
names the file and the key; ``HeaderKeys`` gives the planner's reads the same checks.
"""

from __future__ import annotations

from typing import Any, Mapping

from localcascade.errors import GGUFHeaderError

# llama-hparams.h: llama.cpp aborts (GGML_ASSERT, no exception) beyond these.
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 1024
# llama-model.cpp LLAMA_ROPE_SCALING_TYPES: any other string aborts the load.
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")

# Hyperparameters ``{arch}.SUFFIX`` read as one unsigned integer (by us, or by llama.cpp in a check below).
_SCALAR_KEYS = (
    "context_length", "embedding_length", "block_count", "vocab_size", "nextn_predict_layers",
    "attention.key_length", "attention.value_length",
    "ssm.conv_kernel", "ssm.inner_size", "ssm.state_size", "ssm.group_count", "ssm.time_step_rank",
    "expert_count", "expert_shared_count", "expert_group_count", "expert_group_used_count",
    "expert_shared_feed_forward_length",
)
# Hyperparameters that are one integer or one per layer (llama.cpp's get_key_or_arr).
_PER_LAYER_KEYS = (
    "feed_forward_length", "attention.head_count", "attention.head_count_kv", "expert_used_count",
    "expert_feed_forward_length",
)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


class HeaderKeys:
    """Typed reads of one header's metadata. A value of the wrong type, which would otherwise
    surface as a ValueError deep in int(), is a GGUFHeaderError naming the file and the key."""

    def __init__(self, metadata: Mapping[str, Any], source: str | None):
        self.metadata = metadata
        self.source = source
        arch = metadata.get("general.architecture", "")
        if not isinstance(arch, str):
            raise self.error(f"key general.architecture has type {_type_name(arch)}, expected a string")
        self.arch = arch

    def error(self, problem: str) -> GGUFHeaderError:
        return GGUFHeaderError(f"{self.source}: {problem}" if self.source else problem)

    def refuse(self, problem: str) -> GGUFHeaderError:
        """A header llama.cpp would abort on while loading (a GGML_ASSERT takes the process down)."""
        return self.error(f"{problem}; llama.cpp cannot load this file")

    def key(self, suffix: str) -> str:
        return f"{self.arch}.{suffix}"

    def _check_int(self, key: str, value: Any, expected: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"key {key} has type {_type_name(value)}, expected {expected}")
        if value < 0:
            raise self.error(f"key {key} is {value}, expected a count of zero or more")
        return value

    def int(self, suffix: str, default: int | None = 0) -> int | None:
        """``{arch}.SUFFIX`` as a count; ``default`` when absent."""
        return self.int_key(self.key(suffix), default)

    def int_key(self, key: str, default: int | None = 0) -> int | None:
        value = self.metadata.get(key)
        return default if value is None else self._check_int(key, value, "an integer")

    def per_layer(self, suffix: str, n_layer: int | None, default: tuple[int, ...] | None = None
                  ) -> tuple[int, ...] | None:
        """One value per layer (a scalar is repeated); ``default`` when the key is absent.
        With ``n_layer`` None only the types are checked."""
        key = self.key(suffix)
        value = self.metadata.get(key)
        if value is None:
            return default
        if isinstance(value, (list, tuple)):
            values = tuple(self._check_int(key, v, "an integer or an array of integers") for v in value)
            if n_layer is not None and len(values) != n_layer:
                raise self.error(f"key {key} has {len(values)} entries for {n_layer} layers")
            return values
        one = self._check_int(key, value, "an integer or an array of integers")
        return (one,) * (n_layer or 1)


def check_hparams(metadata: Mapping[str, Any], source: str | None = None) -> None:
    """Refuse a header whose hyperparameters are of the wrong type, or that llama.cpp's
    load_hparams asserts on (llama-model.cpp: GGML_ASSERT aborts the process with a backtrace
    instead of returning an error), as one GGUFHeaderError naming the file.

    Only keys that are present are checked: a missing ``block_count`` or an unknown architecture
    is for facts_from_metadata (and llama.cpp) to report, cleanly.
    """
    keys = HeaderKeys(metadata, source)
    if not keys.arch or keys.arch == "clip":  # llama.cpp reads no hyperparameters for CLIP files
        return
    for suffix in _SCALAR_KEYS:
        keys.int(suffix)
    for suffix in _PER_LAYER_KEYS:
        keys.per_layer(suffix, None)
    keys.int_key("general.file_type")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is not None and not isinstance(tokens, (list, tuple)):
        raise keys.error(f"key tokenizer.ggml.tokens has type {_type_name(tokens)}, expected an array of strings")
    scaling = metadata.get(keys.key("rope.scaling.type"))
    if scaling is not None and scaling not in ROPE_SCALING_TYPES:
        raise keys.refuse(f"key {keys.key('rope.scaling.type')} is {scaling!r}, not one of "
                          f"{', '.join(ROPE_SCALING_TYPES)}")

    n_layer = keys.int("block_count", None)
    if n_layer is None:
        return
    if not 0 < n_layer <= LLAMA_MAX_LAYERS:
        raise keys.refuse(f"key {keys.key('block_count')} is {n_layer}, expected 1 to {LLAMA_MAX_LAYERS}")
    per_layer = {suffix: keys.per_layer(suffix, n_layer, (0,) * n_layer) for suffix in _PER_LAYER_KEYS}
    nextn = keys.int("nextn_predict_layers")
    if nextn > n_layer:
        raise keys.refuse(f"key {keys.key('nextn_predict_layers')} is {nextn}, more than the {n_layer} layers")

    # The expert checks of load_hparams, in its order.
    n_expert = keys.int("expert_count")
    used = max(per_layer["expert_used_count"])
    groups = keys.int("expert_group_count")
    group_used = keys.int("expert_group_used_count")
    count_key, used_key, groups_key = keys.key("expert_count"), keys.key("expert_used_count"), \
        keys.key("expert_group_count")
    if n_expert > LLAMA_MAX_EXPERTS:
        raise keys.refuse(f"key {count_key} is {n_expert}, more than the {LLAMA_MAX_EXPERTS} llama.cpp supports")
    if used and not n_expert:
        raise keys.refuse(f"key {used_key} is {used} but {count_key} is "
                          f"{'0' if count_key in metadata else 'missing'}: there are no experts to route to")
    if used > n_expert:
        raise keys.refuse(f"key {used_key} is {used}, more than the {n_expert} experts of {count_key}")
    if n_expert > 0:
        if used == 0:
            raise keys.refuse(f"key {used_key} is 0 (or missing): a model with {n_expert} experts must route "
                              "tokens to at least one")
        if groups >= n_expert:
            raise keys.refuse(f"key {groups_key} is {groups}, not fewer than the {n_expert} experts")
        if groups > 1:
            if n_expert % groups:
                raise keys.refuse(f"the {n_expert} experts do not divide into {groups_key} {groups} groups")
            if not 0 < group_used < groups:
                raise keys.refuse(f"key {keys.key('expert_group_used_count')} is {group_used}, expected 1 to "
                                  f"{groups - 1} for {groups} expert groups")
    elif groups:
        raise keys.refuse(f"key {groups_key} is {groups} but the model has no experts ({count_key} 0)")

    if keys.arch.startswith("nemotron_h"):
        # llama_model_nemotron_h::load_arch_tensors divides by two header values in the trunk layers
        # (the trailing nextn_predict_layers are checked there): zero is a SIGFPE, not an error.
        ff, kv = per_layer["feed_forward_length"], per_layer["attention.head_count_kv"]
        trunk = range(n_layer - nextn)
        if any(ff[i] == 0 and kv[i] == 0 for i in trunk) and metadata.get(keys.key("ssm.group_count")) == 0:
            raise keys.refuse(f"key {keys.key('ssm.group_count')} is 0 and the Mamba-2 layers divide by it")
        _check_nemotron_h_graph(keys, metadata, per_layer, trunk)
        for i in trunk if n_expert else ():
            # An MoE layer's expert width is n_ff / n_expert_used when expert_feed_forward_length is absent.
            if ff[i] and not per_layer["expert_feed_forward_length"][i] and not per_layer["expert_used_count"][i]:
                raise keys.refuse(f"layer {i} has a feed-forward block but {used_key} 0 and no "
                                  f"{keys.key('expert_feed_forward_length')}")


def _check_nemotron_h_graph(keys: HeaderKeys, metadata: Mapping[str, Any], per_layer: dict, trunk: range) -> None:
    """The GGML_ASSERTs that building nemotron_h(_moe)'s compute graph trips on a header whose tensors
    are consistent with it: the load succeeds, and the first prompt aborts the process (exit 134).

    Derived from the vendored llama.cpp: models/nemotron-h.cpp (key and value head sizes must match),
    models/mamba-base.cpp build_mamba2_layer (``d_inner % n_head``, ``d_inner % n_group``, and
    ``d_inner / n_head`` divides by the head count), ggml.c ggml_can_mul_mat in build_attn (the query
    heads must be a whole multiple of the KV heads they share).
    """
    heads, kv, ff = (per_layer[k] for k in ("attention.head_count", "attention.head_count_kv", "feed_forward_length"))
    attention = [i for i in trunk if kv[i] and not ff[i]]
    mamba = [i for i in trunk if not kv[i] and not ff[i]]
    for i in attention:
        if heads[i] % kv[i]:
            raise keys.refuse(f"layer {i} has {heads[i]} attention heads, not a multiple of its {kv[i]} KV heads "
                              f"({keys.key('attention.head_count')} / {keys.key('attention.head_count_kv')})")
    if attention:
        n_embd, n_head0 = keys.int("embedding_length"), heads[0]
        default = n_embd // n_head0 if n_head0 else 0
        k_len = keys.int("attention.key_length", default)
        v_len = keys.int("attention.value_length", default)
        if k_len != v_len:
            raise keys.refuse(f"key {keys.key('attention.key_length')} is {k_len} but "
                              f"{keys.key('attention.value_length')} is {v_len}: this architecture needs them equal")
    if mamba:
        d_inner = keys.int("ssm.inner_size")
        for suffix, what in (("ssm.time_step_rank", "Mamba-2 heads"), ("ssm.group_count", "groups")):
            count = keys.int(suffix)
            # A header that names no SSM sizes at all is left to the loader (it fails on tensor shapes).
            if (count == 0 and d_inner) or (count and d_inner % count):
                raise keys.refuse(f"key {keys.key('ssm.inner_size')} is {d_inner}, which does not divide into "
                                  f"{keys.key(suffix)} {count} {what}")
