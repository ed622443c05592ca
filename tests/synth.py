"""Synthetic ``nemotron_h_moe`` GGUF files that llama.cpp loads like a real Nemotron-Cascade-2 file.

The layout follows the vendored llama.cpp loader (``llama_model_nemotron_h::load_arch_hparams`` /
``load_arch_tensors``) and its converter (``conversion/nemotron.py``):

* one block per pattern character: ``M`` Mamba-2, ``E`` MoE FFN, ``*`` attention;
* per-layer arrays ``feed_forward_length`` (expert FFN size on ``E`` blocks, else 0) and
  ``attention.head_count_kv`` (KV heads on ``*`` blocks, else 0) - llama.cpp treats a block
  whose two entries are both 0 as recurrent;
* tensor types as the converter writes them: norms, 1-D tensors, the router, the conv kernel
  and the tensors whose names do not end in ``.weight`` stay F32, the rest take ``dtype``.

Three shapes are provided: ``FULL`` (the real model, for header-only and sparse skeletons),
``TINY`` (a few MB, loads and generates on a CPU in well under a second) and ``QUANTIZABLE``
(every quantizable row a multiple of 256, so K-quants and IQ4_XS apply without fallbacks).

Weights are random with a fixed seed, so generation produces garbage - but finite garbage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

DATA_DIR = Path(__file__).parent / "data"
CHAT_TEMPLATE_PATH = DATA_DIR / "cascade2_chat_template.jinja"

# Special tokens at the ids the real Nemotron Nano / Cascade-2 vocabulary uses.
UNK_ID, BOS_ID, EOS_TEXT_ID = 0, 1, 2
IM_START_ID, IM_END_ID = 10, 11
THINK_ID, END_THINK_ID = 12, 13
TOOL_CALL_ID, END_TOOL_CALL_ID = 14, 15
SPECIAL_TOKENS: dict[int, str] = {
    UNK_ID: "<unk>",
    BOS_ID: "<s>",
    EOS_TEXT_ID: "</s>",
    **{i: f"<SPECIAL_{i}>" for i in range(3, 10)},
    IM_START_ID: "<|im_start|>",
    IM_END_ID: "<|im_end|>",
    THINK_ID: "<think>",
    END_THINK_ID: "</think>",
    TOOL_CALL_ID: "<tool_call>",
    END_TOOL_CALL_ID: "</tool_call>",
}

# Words that get whole-word BPE merges, so English tokenizes into a mix of words and bytes
# (the byte fallback covers everything else).
_MERGED_WORDS = (
    "the and to of in is it you that he was for on are with as his they be at one have this "
    "from or had by hello world what how can do not but all your there think answer question "
    "model test user assistant system yes no tool call function name value we will which"
).split()


@dataclass(frozen=True)
class NemotronShape:
    """Every hyperparameter a ``nemotron_h_moe`` file carries."""

    name: str
    n_embd: int
    pattern: str  # one char per block: M = Mamba-2, E = MoE FFN, * = attention
    n_head: int
    n_head_kv: int
    head_dim: int
    ssm_d_inner: int
    ssm_d_state: int
    ssm_n_group: int
    ssm_d_conv: int
    ssm_n_heads: int
    n_expert: int
    n_expert_used: int
    expert_ff: int
    shared_expert_ff: int
    vocab_size: int
    context_length: int
    n_expert_shared: int = 1
    expert_weights_scale: float = 2.5
    expert_weights_norm: bool = True
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if set(self.pattern) - set("ME*"):
            raise ValueError(f"block pattern may only contain M, E and *: {self.pattern!r}")
        if self.ssm_d_inner % self.ssm_n_heads or self.ssm_d_inner % self.ssm_n_group:
            raise ValueError("ssm_d_inner must divide into ssm_n_heads and ssm_n_group")
        if self.n_head % self.n_head_kv:
            raise ValueError("n_head must be a multiple of n_head_kv")
        if not 0 < self.n_expert_used <= self.n_expert:
            raise ValueError("n_expert_used must be in 1..n_expert")

    @property
    def n_layer(self) -> int:
        return len(self.pattern)

    def blocks(self, kind: str) -> list[int]:
        """Indices of the blocks of one kind ("M", "E" or "*")."""
        return [i for i, c in enumerate(self.pattern) if c == kind]

    @property
    def attention_layers(self) -> list[int]:
        return self.blocks("*")

    @property
    def mamba_layers(self) -> list[int]:
        return self.blocks("M")

    @property
    def moe_layers(self) -> list[int]:
        return self.blocks("E")

    @property
    def ssm_conv_dim(self) -> int:
        return self.ssm_d_inner + 2 * self.ssm_n_group * self.ssm_d_state

    @property
    def ssm_in_dim(self) -> int:
        return 2 * self.ssm_d_inner + 2 * self.ssm_n_group * self.ssm_d_state + self.ssm_n_heads


FULL = NemotronShape(
    name="full",
    n_embd=2688,
    pattern="MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME",
    n_head=32,
    n_head_kv=2,
    head_dim=128,
    ssm_d_inner=4096,
    ssm_d_state=128,
    ssm_n_group=8,
    ssm_d_conv=4,
    ssm_n_heads=64,
    n_expert=128,
    n_expert_used=6,
    expert_ff=1856,
    shared_expert_ff=3712,
    vocab_size=131072,
    context_length=1_048_576,
)

# The real pattern's rhythm, cut down: 6 Mamba, 6 MoE, 2 attention blocks.
TINY = NemotronShape(
    name="tiny",
    n_embd=64,
    pattern="MEMEM*EMEM*EME",
    n_head=4,
    n_head_kv=2,
    head_dim=16,
    ssm_d_inner=128,
    ssm_d_state=16,
    ssm_n_group=2,
    ssm_d_conv=4,
    ssm_n_heads=8,
    n_expert=8,
    n_expert_used=2,
    expert_ff=32,
    shared_expert_ff=64,
    vocab_size=1024,
    context_length=4096,
)

# Every tensor llama.cpp quantizes has a row length that is a multiple of 256 (QK_K).
QUANTIZABLE = NemotronShape(
    name="quantizable",
    n_embd=256,
    pattern="MEMEM*EMEM*EME",
    n_head=4,
    n_head_kv=2,
    head_dim=64,
    ssm_d_inner=256,
    ssm_d_state=16,
    ssm_n_group=2,
    ssm_d_conv=4,
    ssm_n_heads=8,
    n_expert=8,
    n_expert_used=2,
    expert_ff=256,
    shared_expert_ff=512,
    vocab_size=1024,
    context_length=4096,
)

_DTYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
}


@dataclass
class TensorSpec:
    """One tensor as llama.cpp sees it: ``ne`` is ggml order (row length first)."""

    name: str
    ne: tuple[int, ...]
    init: str  # "normal", "ones", "zeros", "ssm_a", "ssm_dt", "small"
    fan_in: int = 1
    force_f32: bool = False


def tensor_specs(shape: NemotronShape) -> list[TensorSpec]:
    """The tensors of a file of this shape, in file order, as the loader expects them."""
    s = shape
    specs = [TensorSpec("token_embd.weight", (s.n_embd, s.vocab_size), "normal", fan_in=1)]
    for i, kind in enumerate(s.pattern):
        blk = f"blk.{i}."
        specs.append(TensorSpec(blk + "attn_norm.weight", (s.n_embd,), "ones", force_f32=True))
        if kind == "M":
            specs += [
                TensorSpec(blk + "ssm_in.weight", (s.n_embd, s.ssm_in_dim), "normal", s.n_embd),
                TensorSpec(blk + "ssm_conv1d.weight", (s.ssm_d_conv, s.ssm_conv_dim), "normal", s.ssm_d_conv, True),
                TensorSpec(blk + "ssm_conv1d.bias", (s.ssm_conv_dim,), "zeros", force_f32=True),
                TensorSpec(blk + "ssm_dt.bias", (s.ssm_n_heads,), "ssm_dt", force_f32=True),
                TensorSpec(blk + "ssm_a", (1, s.ssm_n_heads), "ssm_a", force_f32=True),
                TensorSpec(blk + "ssm_d", (1, s.ssm_n_heads), "ones", force_f32=True),
                TensorSpec(blk + "ssm_norm.weight", (s.ssm_d_inner // s.ssm_n_group, s.ssm_n_group), "ones", force_f32=True),
                TensorSpec(blk + "ssm_out.weight", (s.ssm_d_inner, s.n_embd), "normal", s.ssm_d_inner),
            ]
        elif kind == "*":
            q_dim, kv_dim = s.n_head * s.head_dim, s.n_head_kv * s.head_dim
            specs += [
                TensorSpec(blk + "attn_q.weight", (s.n_embd, q_dim), "normal", s.n_embd),
                TensorSpec(blk + "attn_k.weight", (s.n_embd, kv_dim), "normal", s.n_embd),
                TensorSpec(blk + "attn_v.weight", (s.n_embd, kv_dim), "normal", s.n_embd),
                TensorSpec(blk + "attn_output.weight", (q_dim, s.n_embd), "normal", q_dim),
            ]
        else:
            specs += [
                TensorSpec(blk + "ffn_gate_inp.weight", (s.n_embd, s.n_expert), "normal", s.n_embd, True),
                TensorSpec(blk + "exp_probs_b.bias", (s.n_expert,), "small", force_f32=True),
                TensorSpec(blk + "ffn_up_exps.weight", (s.n_embd, s.expert_ff, s.n_expert), "normal", s.n_embd),
                TensorSpec(blk + "ffn_down_exps.weight", (s.expert_ff, s.n_embd, s.n_expert), "normal", s.expert_ff),
                TensorSpec(blk + "ffn_up_shexp.weight", (s.n_embd, s.shared_expert_ff), "normal", s.n_embd),
                TensorSpec(blk + "ffn_down_shexp.weight", (s.shared_expert_ff, s.n_embd), "normal", s.shared_expert_ff),
            ]
    specs += [
        TensorSpec("output_norm.weight", (s.n_embd,), "ones", force_f32=True),
        TensorSpec("output.weight", (s.n_embd, s.vocab_size), "normal", s.n_embd),
    ]
    return specs


def tensor_nbytes(ne: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    """Bytes of a tensor of ggml type ``qtype``, following ggml's block sizes."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if ne[0] % block_size:
        raise ValueError(f"row length {ne[0]} is not a multiple of {qtype.name}'s block size {block_size}")
    return int(np.prod(ne)) // block_size * type_size


def _qtype(name: str) -> gguf.GGMLQuantizationType:
    try:
        return gguf.GGMLQuantizationType[name.upper()]
    except KeyError:
        raise ValueError(f"unknown ggml type {name!r}") from None


# --- tokenizer -------------------------------------------------------------------------------

def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what byte-level BPE vocabularies use)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def _merges_for_words(words: list[str]) -> tuple[list[str], list[str]]:
    """Byte-level BPE trained on ``words`` (each with and without a leading space) until every
    one of them is a single token. Training, rather than hand-listing merges, keeps the merge
    ranks consistent, so llama.cpp's BPE really turns each of these words into one token."""
    byte_map = _byte_to_unicode()
    corpus = [[byte_map[b] for b in text.encode("utf-8")] for word in words for text in (" " + word, word)]
    merges: list[str] = []
    new_tokens: list[str] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in corpus:
            for pair in zip(symbols, symbols[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges, new_tokens
        best = max(counts, key=counts.__getitem__)  # ties: the first pair seen, so deterministic
        merges.append(f"{best[0]} {best[1]}")
        new_tokens.append(best[0] + best[1])
        for n, symbols in enumerate(corpus):
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            corpus[n] = merged


def vocabulary(vocab_size: int, user_defined: tuple[int, ...] = ()) -> tuple[list[str], list[int], list[str]]:
    """Tokens, token types and merges: specials at their real ids, 256 bytes, word merges,
    and unused padding up to ``vocab_size`` (real files pad the same way). The specials are
    control tokens but for the ids in ``user_defined`` (which llama.cpp matches even in text, as
    conversions that mark <think> an added, non-special token make it)."""
    merges, merged = _merges_for_words(_MERGED_WORDS)
    tokens = [SPECIAL_TOKENS[i] for i in range(len(SPECIAL_TOKENS))]
    types = [int(gguf.TokenType.USER_DEFINED if i in user_defined else gguf.TokenType.CONTROL)
             for i in range(len(tokens))]
    byte_tokens = list(_byte_to_unicode().values())
    tokens += byte_tokens + merged
    types += [int(gguf.TokenType.NORMAL)] * (len(byte_tokens) + len(merged))
    pad = vocab_size - len(tokens)
    if pad < 0:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the {len(tokens)} tokens needed")
    tokens += [f"[PAD{i}]" for i in range(len(tokens), vocab_size)]
    types += [int(gguf.TokenType.UNUSED)] * pad
    return tokens, types, merges


def chat_template() -> str:
    return CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")


# --- weights ---------------------------------------------------------------------------------

def _init_values(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    """Values in numpy order (reversed ``ne``), scaled so activations stay O(1)."""
    np_shape = tuple(reversed(spec.ne))
    if spec.init == "ones":
        return np.ones(np_shape, dtype=np.float32)
    if spec.init == "zeros":
        return np.zeros(np_shape, dtype=np.float32)
    if spec.init == "small":
        return (rng.standard_normal(np_shape) * 0.01).astype(np.float32)
    if spec.init == "ssm_a":
        # A = -exp(A_log) with A_log in [0, log 16], as Mamba-2 initialises it.
        return -np.exp(rng.uniform(0.0, np.log(16.0), np_shape)).astype(np.float32)
    if spec.init == "ssm_dt":
        # dt_bias = softplus^-1(dt) with dt log-uniform in [1e-3, 1e-1].
        dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), np_shape))
        return (dt + np.log(-np.expm1(-dt))).astype(np.float32)
    scale = 0.5 / np.sqrt(spec.fan_in)
    return (rng.standard_normal(np_shape, dtype=np.float32) * scale).astype(np.float32)


_IQ4_NL_TABLE = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)
_IQ4_NL_MIDPOINTS = (_IQ4_NL_TABLE[1:] + _IQ4_NL_TABLE[:-1]) / 2
# Scaled values lie in [-127, 127] (up to rounding): cell k holds [k, k + 1), and at most one midpoint
# falls in a cell (entries are 9 or more apart), so an index is the midpoints below the cell, plus one
# if the value is above the midpoint inside it.
_IQ4_NL_FIRST_CELL = -128
_IQ4_NL_CELLS = np.arange(_IQ4_NL_FIRST_CELL, 128, dtype=np.float32)
_IQ4_NL_BELOW = np.searchsorted(_IQ4_NL_MIDPOINTS, _IQ4_NL_CELLS).astype(np.uint8)
_IQ4_NL_INSIDE = np.full(_IQ4_NL_CELLS.size, np.inf, np.float32)
_IQ4_NL_INSIDE[np.floor(_IQ4_NL_MIDPOINTS).astype(np.int64) - _IQ4_NL_FIRST_CELL] = _IQ4_NL_MIDPOINTS


def _iq4_nl_blocks(values: np.ndarray) -> bytes:
    """IQ4_NL blocks (f16 scale + 32 4-bit indices into a fixed table) for ``values``.

    The gguf package reads IQ4_NL but cannot write it; this rounding (scale = max|x| / 127, nearest
    table entry) is cruder than llama.cpp's, which is fine for random test weights.
    """
    blocks = values.reshape(-1, 32)
    scale = np.abs(blocks).max(axis=1, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    scaled = blocks / scale
    # Nearest table entry by the midpoints between entries (the count of midpoints below the value):
    # looked up per unit cell, as a binary search per value is most of the time of a full-size embedding.
    cell = np.floor(scaled).astype(np.int16) - _IQ4_NL_FIRST_CELL
    index = _IQ4_NL_BELOW[cell] + (scaled > _IQ4_NL_INSIDE[cell])
    # ggml packs element j in the low nibble and element j + 16 in the high nibble of byte j.
    packed = index[:, :16] | (index[:, 16:] << 4)
    out = np.empty((blocks.shape[0], 18), np.uint8)
    out[:, :2] = scale.astype(np.float16).view(np.uint8)
    out[:, 2:] = packed
    return out.tobytes()


def _encode(values: np.ndarray, qtype: gguf.GGMLQuantizationType) -> bytes:
    if qtype == gguf.GGMLQuantizationType.F32:
        return values.astype(np.float32).tobytes()
    if qtype == gguf.GGMLQuantizationType.F16:
        return values.astype(np.float16).tobytes()
    if qtype == gguf.GGMLQuantizationType.IQ4_NL:
        return _iq4_nl_blocks(values)
    try:
        return gguf.quants.quantize(values, qtype).tobytes()
    except NotImplementedError:
        raise ValueError(
            f"cannot write real {qtype.name} data with the gguf package; use sparse=True for a skeleton"
        ) from None


# --- writer ----------------------------------------------------------------------------------

def _add_metadata(w: gguf.GGUFWriter, s: NemotronShape, file_type: int, quantized: bool,
                  tokenizer: bool = True, user_defined: tuple[int, ...] = ()) -> None:
    w.add_name(f"Nemotron Cascade 2 synthetic ({s.name})")
    w.add_file_type(int(file_type))
    if quantized:
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(s.vocab_size)
    w.add_context_length(s.context_length)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length([s.expert_ff if c == "E" else 0 for c in s.pattern])
    w.add_head_count(s.n_head)
    w.add_head_count_kv([s.n_head_kv if c == "*" else 0 for c in s.pattern])
    w.add_key_length(s.head_dim)
    w.add_value_length(s.head_dim)
    w.add_layer_norm_eps(s.norm_eps)
    w.add_rope_scaling_finetuned(False)  # NoPE: no rotary embedding anywhere
    w.add_ssm_conv_kernel(s.ssm_d_conv)
    w.add_ssm_state_size(s.ssm_d_state)
    w.add_ssm_group_count(s.ssm_n_group)
    w.add_ssm_inner_size(s.ssm_d_inner)
    w.add_ssm_time_step_rank(s.ssm_n_heads)  # llama.cpp reads the Mamba-2 head count from here
    w.add_expert_count(s.n_expert)
    w.add_expert_used_count(s.n_expert_used)
    w.add_expert_feed_forward_length(s.expert_ff)
    w.add_expert_shared_feed_forward_length(s.shared_expert_ff)
    w.add_expert_shared_count(s.n_expert_shared)
    w.add_expert_weights_norm(s.expert_weights_norm)
    w.add_expert_weights_scale(s.expert_weights_scale)
    w.add_expert_group_count(1)

    if not tokenizer:
        w.add_tokenizer_model("none")   # weights without a vocabulary (llama.cpp's LLAMA_VOCAB_TYPE_NONE)
        return
    tokens, types, merges = vocabulary(s.vocab_size, user_defined)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(IM_END_ID)
    w.add_unk_token_id(UNK_ID)
    w.add_pad_token_id(UNK_ID)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_chat_template(chat_template())


def write_nemotron_h_moe(
    path: str | os.PathLike[str],
    shape: NemotronShape,
    *,
    dtype: str = "f32",
    seed: int = 0,
    sparse: bool = False,
    live_routing: bool = False,
    tensor_types: dict[str, str] | None = None,
    file_type: int | None = None,
    tokenizer: bool = True,
    user_defined: tuple[int, ...] = (),
) -> Path:
    """Write a ``nemotron_h_moe`` GGUF file and return its path.

    ``dtype`` is the type of the big matrices ("f32", "f16" or "bf16"); the tensors the
    converter always keeps in F32 stay F32. ``tensor_types`` maps tensor names to ggml type
    names ("Q4_K", "Q8_0", ...) to override single tensors (sizes then follow ggml's block
    sizes). ``sparse=True`` writes only the header and extends the file to its full size with
    a hole, so it uses almost no disk and reads back as zeros. ``live_routing=True`` (with
    ``sparse``) also writes the token embeddings, the MoE routers (``ffn_gate_inp``) and the
    other small F32 tensors (norms, biases), ~0.25 GB for the full shape: each token then has
    its own hidden state and each layer's random router sends it to its own experts, as in the
    real model. In an all-hole file every router scores every expert 0, so every token goes to
    the same experts and prompt processing reads a fraction of the expert weights it really
    would. The big matrices stay holes, so the model still computes zeros past the routers.
    ``file_type`` overrides the
    ``general.file_type`` written (a ``gguf.LlamaFileType`` value).

    The file is written under a temporary name and renamed when complete.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, not {dtype!r}")
    base_type, base_file_type = _DTYPES[dtype]
    specs = tensor_specs(shape)
    overrides = {name: _qtype(t) for name, t in (tensor_types or {}).items()}
    unknown = set(overrides) - {spec.name for spec in specs}
    if unknown:
        raise ValueError(f"tensor_types names tensors this shape does not have: {sorted(unknown)}")

    qtypes = [
        overrides.get(spec.name, gguf.GGMLQuantizationType.F32 if spec.force_f32 else base_type)
        for spec in specs
    ]
    plain = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16}
    quantized = any(q not in plain for q in qtypes)

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.NEMOTRON_H_MOE])
    try:
        _add_metadata(writer, shape, base_file_type if file_type is None else file_type, quantized, tokenizer,
                      user_defined)
        for spec, qtype in zip(specs, qtypes):
            # add_tensor_info takes numpy order; for non-F32/F16 it needs raw_dtype.
            writer.add_tensor_info(
                spec.name, tuple(reversed(spec.ne)), np.dtype(np.float32), tensor_nbytes(spec.ne, qtype),
                raw_dtype=qtype,
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        fout = writer.fout[0]
        writer.write_padding(fout, fout.tell())
        data_start = fout.tell()
        alignment = writer.data_alignment
        total = sum(gguf.GGUFWriter.ggml_pad(tensor_nbytes(s.ne, q), alignment) for s, q in zip(specs, qtypes))
        if sparse:
            fout.flush()
            fout.truncate(data_start + total)
            if live_routing:
                _write_routing_tensors(fout, data_start, alignment, specs, qtypes, np.random.default_rng(seed))
        else:
            rng = np.random.default_rng(seed)
            for spec, qtype in zip(specs, qtypes):
                data = _encode(_init_values(spec, rng), qtype)
                fout.write(data)
                writer.write_padding(fout, len(data))
        fout.flush()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return path


def _routes_tokens(spec: TensorSpec) -> bool:
    """Tensors a live-routing skeleton writes: the embedding, which makes hidden states token-dependent,
    and the small always-F32 ones (norms, routers, biases), which route them."""
    return spec.name == "token_embd.weight" or spec.force_f32


def _write_routing_tensors(fout, data_start: int, alignment: int, specs: list[TensorSpec],
                           qtypes: list[gguf.GGMLQuantizationType], rng: np.random.Generator) -> None:
    """Fill the routing tensors of a sparse file in place; the rest stays a hole."""
    offset = data_start
    for spec, qtype in zip(specs, qtypes):
        nbytes = tensor_nbytes(spec.ne, qtype)
        if _routes_tokens(spec):
            fout.seek(offset)
            rows = int(np.prod(spec.ne[1:]))
            # In slices of rows: the full embedding is 352M values, too many to hold as f32 at once.
            step = max(1, (1 << 22) // spec.ne[0])
            for first in range(0, rows, step):
                part = TensorSpec(spec.name, (spec.ne[0], min(step, rows - first)), spec.init, spec.fan_in)
                fout.write(_encode(_init_values(part, rng), qtype))
        offset += gguf.GGUFWriter.ggml_pad(nbytes, alignment)


def main(argv: list[str] | None = None) -> None:
    """Write a test model by hand: ``python tests/synth.py OUT.gguf --shape full --dtype bf16 --sparse``."""
    import argparse

    shapes = {s.name: s for s in (FULL, TINY, QUANTIZABLE)}
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--shape", choices=sorted(shapes), default="tiny")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="f32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sparse", action="store_true", help="header only; the data is a hole that reads as zeros")
    parser.add_argument("--live-routing", action="store_true",
                        help="with --sparse: real embeddings, routers and norms, so tokens spread over experts")
    args = parser.parse_args(argv)
    path = write_nemotron_h_moe(args.out, shapes[args.shape], dtype=args.dtype, seed=args.seed, sparse=args.sparse,
                                live_routing=args.live_routing)
    print(f"{path}: {path.stat().st_size:,} bytes, {path.stat().st_blocks * 512:,} on disk")


if __name__ == "__main__":
    main()
