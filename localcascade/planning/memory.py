"""The memory model: bytes per device for one model file and one placement, as llama.cpp allocates them.

Pure: no I/O, no llama_cpp. Every formula follows the vendored llama.cpp
(llama-cpp-python 0.3.36); the source each one comes from is named next to it.

* weights   - exact per-tensor bytes. Layer assignment (llama-model.cpp, load_tensors):
              with ``n_gpu_layers = g`` the last ``g`` of the ``n_layer + 1`` "layers" go to the
              GPU, where layer ``n_layer`` is the output layer (output_norm + output), so ``g >= 1``
              already puts the output head on the GPU; the token embedding always stays on the
              CPU. ``--n-cpu-moe N`` (common/arg.cpp) overrides the buffer type of
              ``blk.i.ffn_(up|down|gate|gate_up)_(ch|)exps`` for ``i < N`` to CPU. CPU weights are
              mmapped: they live in the page cache and count as system RAM. On x86/ARM the CPU
              backend repacks q4_0 / q4_K / iq4_nl tensors into a CPU_REPACK buffer; their mapped
              file pages then go cold, so resident RAM holds them once (Estimate.repacked_bytes).
* kv        - llama-kv-cache.cpp: only layers with ``n_head_kv > 0``; K row ``head_dim_k *
              n_head_kv`` elements of ``type_k``, V likewise; ``n_ctx`` padded to 256
              (llama-context.cpp), one stream per sequence unless unified.
* recurrent - llama-memory-recurrent.cpp with hparams ``n_embd_r()`` (conv state,
              ``(d_conv-1) * (d_inner + 2*n_group*d_state)``) and ``n_embd_s()`` (ssm state,
              ``d_state * d_inner``), f32, ``max(1, n_seq)`` cells, per recurrent layer, each
              ``1 + n_rs_seq`` rows (the state and its rollback snapshots).
* output    - llama_context::output_reserve: ``n_vocab * max(1, n_seq)`` f32 logits, host memory,
              ``(1 + n_rs_seq)`` times that when each sequence verifies n_rs_seq drafts a step.
* compute   - the scheduler's reserve of the worst-case ubatch. Calibrated against real CPU
              loads of the tiny model and the full-size skeleton (see benchmarks/fit_accuracy.py):
              the buffer is the peak of two phases,
                layers: KQ mask (``n_kv*n_ubatch``, f16 with flash attention, f32 without)
                        + without flash attention the KQ matrix ``n_kv*n_ubatch*n_head*4``
                        + the widest block's activations per token;
                output: logits ``n_vocab*n_ubatch*4`` + ``16*n_embd`` bytes per token
                        (+ the mask while it is smaller than those activations).
* overhead  - not allocated by llama.cpp itself: the CUDA context and runtime per GPU, and the
              process (Python, libraries) in RAM. Both are parameters (``Overheads``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from localcascade.errors import UsageError
from localcascade.model.facts import ModelFacts, is_expert_tensor, layer_of
from localcascade.planning.plan import Components
from localcascade.planning.reasons import GpuEstimated

MiB = 1024**2
GiB = 1024**3

class KVType(NamedTuple):
    block: int      # elements per block
    size: int       # bytes per block
    ggml_id: int    # enum ggml_type (ggml.h), what llama_context_params.type_k/type_v take


# The cache types llama.cpp accepts for K and V (common/arg.cpp kv_cache_types). The one table
# for the planner's bytes, the loader's type ids and the CLI's --kv-type.
KV_TYPES: dict[str, KVType] = {
    "f32": KVType(1, 4, 0),
    "f16": KVType(1, 2, 1),
    "bf16": KVType(1, 2, 30),
    "q8_0": KVType(32, 34, 8),
    "q4_0": KVType(32, 18, 2),
    "q4_1": KVType(32, 20, 3),
    "q5_0": KVType(32, 22, 6),
    "q5_1": KVType(32, 24, 7),
    "iq4_nl": KVType(32, 18, 20),
}


def kv_type(name: str) -> KVType:
    """The table entry for a KV cache type name, any case (``Q8_0`` is ``q8_0``)."""
    try:
        return KV_TYPES[name.lower()]
    except (KeyError, AttributeError):
        raise UsageError(f"unknown KV cache type {name!r}: use one of {', '.join(KV_TYPES)}") from None


QUANTIZED_KV = {name for name, t in KV_TYPES.items() if t.block > 1}

# Types the CPU backend repacks into an extra buffer (ggml-cpu/repack.cpp, AVX2/NEON builds).
CPU_REPACK_TYPES = {"q4_0", "q4_k", "iq4_nl"}


CTX_PAD = 256  # llama-context.cpp: cparams.n_ctx = GGML_PAD(n_ctx, 256)


@dataclass(frozen=True)
class Placement:
    """How llama.cpp is asked to load the model (the inputs of one estimate)."""

    n_ctx: int
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: bool = True
    n_gpu_layers: int = 0        # llama.cpp meaning: the last N of n_layer + 1 (output layer counts first)
    n_cpu_moe: int = 0      # --n-cpu-moe N: expert tensors of layers 0..N-1 stay in RAM
    n_batch: int = 2048
    n_ubatch: int = 512
    n_seq: int = 1
    n_rs_seq: int = 0            # recurrent-state snapshots per sequence (drafting: the draft length)
    kv_unified: bool = False
    n_gpus: int = 1
    cpu_repack: bool = True      # the CPU backend's repacked copy of q4_0/q4_K/iq4_nl weights


@dataclass(frozen=True)
class Overheads:
    """Memory llama.cpp does not report. Defaults stated in README.md, "What fits"."""

    cuda_context_bytes: int = int(0.45 * GiB)   # CUDA context + cuBLAS/runtime pools, per GPU
    process_ram_bytes: int = 512 * MiB           # Python, llama.cpp libraries, tokenizer, REPL


@dataclass(frozen=True)
class Estimate:
    gpu: Components                  # summed over GPUs
    ram: Components
    n_ctx: int                       # after llama.cpp's padding
    n_ubatch: int
    notes: tuple[GpuEstimated, ...] = ()   # reasons the estimate adds to a plan
    # Weights the CPU backend repacks (CPU_REPACK buffer). llama.cpp's log counts them twice: in
    # that buffer and again inside the CPU_Mapped file range. Their file pages are read once while
    # loading and then sit in the page cache, which the kernel reclaims, so they are in ram.weights
    # once; add this to compare with the printed buffer sizes.
    repacked_bytes: int = 0

    @property
    def total(self) -> int:
        return self.gpu.total + self.ram.total


def padded_ctx(n_ctx: int, n_seq: int = 1, unified: bool = False) -> tuple[int, int]:
    """(n_ctx, n_ctx_seq) after llama_context's rounding."""
    n_ctx = -(-n_ctx // CTX_PAD) * CTX_PAD
    if unified:
        return n_ctx, n_ctx
    n_ctx_seq = n_ctx // n_seq
    n_ctx_seq = -(-n_ctx_seq // CTX_PAD) * CTX_PAD
    return n_ctx_seq * n_seq, n_ctx_seq


def kv_row_bytes(type_name: str, n_elements: int) -> int:
    block, size, _ = kv_type(type_name)
    if n_elements % block:
        raise UsageError(f"KV type {type_name} needs rows that are a multiple of {block}")
    return n_elements // block * size


def kept_state_bytes(facts: ModelFacts, type_k: str = "f16", type_v: str = "f16") -> tuple[int, int]:
    """What one kept prompt state costs (the state cache, a checkpoint): (bytes per cached token, the
    attention blocks' K and V rows; bytes per state, the recurrent blocks' f32 conv and ssm state,
    whatever the prompt's length). Cascade-2 at f16: (6,144, ~47.6 MiB)."""
    per_token = sum(kv_row_bytes(type_k, facts.head_dim_k * facts.n_head_kv[layer])
                    + kv_row_bytes(type_v, facts.head_dim_v * facts.n_head_kv[layer])
                    for layer in facts.attention_layers)
    return per_token, (facts.n_embd_r + facts.n_embd_s) * 4 * len(facts.recurrent_layers)


def check_kv_types(type_k: str, type_v: str, flash_attn: bool) -> None:
    """llama_init_from_model refuses a quantized V cache without flash attention."""
    kv_row_bytes(type_k, kv_type(type_k).block)
    if kv_type(type_v).block > 1 and not flash_attn:
        raise UsageError(f"a quantized V cache ({type_v}) requires flash attention")


class _LayerTable:
    """Per-layer byte sums of one ModelFacts, so each estimate is O(n_layer)."""

    def __init__(self, facts: ModelFacts):
        n = facts.n_layer
        self.dense = [0] * (n + 1)          # index n = output layer
        self.experts = [0] * n
        self.repack_dense = [0] * (n + 1)
        self.repack_experts = [0] * n
        self.largest_expert = [0] * n
        self.input = 0
        self.input_repack = 0
        for t in facts.tensors:
            layer = layer_of(t.name)
            repack = t.type_name.lower() in CPU_REPACK_TYPES and len(t.shape) > 1 and t.shape[1] % 8 == 0
            if layer is None:
                if t.name.startswith(("output", "output_norm")):
                    layer = n
                else:  # token embedding and anything else outside blocks stays on the CPU
                    self.input += t.n_bytes
                    continue
            if layer >= n:
                layer = n
            if layer < n and is_expert_tensor(t.name):
                self.experts[layer] += t.n_bytes
                self.largest_expert[layer] = max(self.largest_expert[layer], t.n_bytes)
                if repack:
                    self.repack_experts[layer] += t.n_bytes
            else:
                self.dense[layer] += t.n_bytes
                if repack:
                    self.repack_dense[layer] += t.n_bytes


_TABLES: dict[int, tuple[ModelFacts, _LayerTable]] = {}


def largest_layer_bytes(facts: ModelFacts) -> int:
    """The weights of the largest single layer: layers are not split across devices."""
    t = _table(facts)
    return max(d + e for d, e in zip(t.dense, t.experts + [0]))


def _table(facts: ModelFacts) -> _LayerTable:
    cached = _TABLES.get(id(facts))
    if cached is None or cached[0] is not facts:
        cached = (facts, _LayerTable(facts))
        _TABLES[id(facts)] = cached
    return cached[1]


def on_gpu(layer: int, n_layer: int, n_gpu_layers: int) -> bool:
    """llama.cpp: layer il (n_layer = the output layer) is on a GPU when il >= n_layer + 1 - ngl."""
    return n_gpu_layers > 0 and layer >= n_layer + 1 - n_gpu_layers


def compute_bytes(facts: ModelFacts, n_kv: int, n_ubatch: int, flash_attn: bool) -> int:
    """The compute buffer of a graph holding every layer (see the module docstring)."""
    f = facts
    n_head = max(f.n_head) if f.n_head else 0
    q_dim = n_head * f.head_dim_k
    kv_dim = max((kv * f.head_dim_k for kv in f.n_head_kv), default=0)
    conv_dim = f.ssm_d_inner + 2 * f.ssm_n_group * f.ssm_d_state
    ssm_in = 2 * f.ssm_d_inner + 2 * f.ssm_n_group * f.ssm_d_state + f.ssm_dt_rank
    per_token_layer = 4 * max(
        ssm_in + 2 * conv_dim + 2 * f.ssm_d_inner + 2 * f.n_embd if f.recurrent_layers else 0,
        f.n_expert_used * (2 * f.n_ff_exp + f.n_embd) + f.n_embd if f.n_expert else 0,
        2 * f.n_embd + 2 * q_dim + 2 * kv_dim,
    )
    has_attn = bool(f.attention_layers)
    mask = n_kv * n_ubatch * (2 if flash_attn else 4) if has_attn else 0
    kq = 0 if flash_attn or not has_attn else n_kv * n_ubatch * n_head * 4
    attn_act = 4 * (2 * f.n_embd + 2 * q_dim + 2 * kv_dim) * n_ubatch
    layers_phase = mask + max(per_token_layer * n_ubatch, kq + attn_act)
    out_act = 16 * f.n_embd * n_ubatch
    output_phase = f.n_vocab * n_ubatch * 4 + out_act + (mask if mask < out_act else 0)
    return max(layers_phase, output_phase)


def estimate(facts: ModelFacts, p: Placement, overheads: Overheads = Overheads()) -> Estimate:
    """Bytes on the GPU(s) and in system RAM for this placement."""
    check_kv_types(p.type_k, p.type_v, p.flash_attn)
    if p.n_ctx <= 0:
        raise UsageError("context length must be positive")
    f, t = facts, _table(facts)
    for kind, head_dim in ((p.type_k, f.head_dim_k), (p.type_v, f.head_dim_v)):
        if f.attention_layers and head_dim % kv_type(kind).block:
            raise UsageError(f"KV type {kind} needs heads that are a multiple of {kv_type(kind).block} wide "
                             f"(this model's are {head_dim})")
    n = f.n_layer
    ngl = max(0, min(p.n_gpu_layers, n + 1))
    cpu_moe = max(0, min(p.n_cpu_moe, n))
    n_ctx, n_ctx_seq = padded_ctx(p.n_ctx, p.n_seq, p.kv_unified)
    n_stream = 1 if p.kv_unified else p.n_seq
    n_batch = min(n_ctx, p.n_batch)
    n_ubatch = min(n_batch, p.n_ubatch)

    gpu = dict(weights=0, kv=0, recurrent=0, compute=0, output=0, overhead=0)
    ram = dict(weights=t.input, kv=0, recurrent=0, compute=0, output=0, overhead=overheads.process_ram_bytes)
    repacked = t.input_repack if p.cpu_repack else 0
    largest_cpu_expert = 0
    for layer in range(n + 1):
        layer_gpu = on_gpu(layer, n, ngl)
        side = gpu if layer_gpu else ram
        side["weights"] += t.dense[layer]
        if not layer_gpu and p.cpu_repack:
            repacked += t.repack_dense[layer]
        if layer == n:
            break
        experts_cpu = not layer_gpu or layer < cpu_moe
        (ram if experts_cpu else gpu)["weights"] += t.experts[layer]
        if experts_cpu:
            if p.cpu_repack:
                repacked += t.repack_experts[layer]
            if layer_gpu:
                largest_cpu_expert = max(largest_cpu_expert, t.largest_expert[layer])
        if f.n_head_kv[layer] > 0:
            k = kv_row_bytes(p.type_k, f.head_dim_k * f.n_head_kv[layer]) * n_ctx_seq * n_stream
            v = kv_row_bytes(p.type_v, f.head_dim_v * f.n_head_kv[layer]) * n_ctx_seq * n_stream
            side["kv"] += k + v
        if f.recurrent[layer]:
            # One state per sequence, and n_rs_seq snapshots of it for rolling back a rejected draft.
            side["recurrent"] += (f.n_embd_r + f.n_embd_s) * 4 * max(1, p.n_seq) * (1 + max(0, p.n_rs_seq))

    # Logits rows: one per sequence, or a verified draft's n_rs_seq + 1 per sequence (the buffer
    # grows to the largest batch's outputs and stays).
    ram["output"] = f.n_vocab * max(1, p.n_seq) * (1 + max(0, p.n_rs_seq)) * 4
    compute = compute_bytes(f, n_ctx_seq if not p.kv_unified else n_ctx, n_ubatch, p.flash_attn)
    notes = []
    if ngl == 0:
        ram["compute"] = compute
    else:
        # The GPU runs the graph (op offload sends large batches of CPU-resident matmuls there
        # too, copying the weights into its compute buffer); the host keeps the inputs.
        # With several GPUs every device reserves a compute buffer for its part of the graph;
        # sizing each like the whole graph's is conservative.
        gpu["compute"] = (compute + largest_cpu_expert) * max(1, p.n_gpus)
        host_inputs = f.n_embd * n_ubatch * 4
        ram["compute"] = host_inputs if ngl > n else max(compute, host_inputs)
        gpu["overhead"] = overheads.cuda_context_bytes * max(1, p.n_gpus)
        notes.append(GpuEstimated())
    return Estimate(
        gpu=Components(**gpu), ram=Components(**ram), n_ctx=n_ctx, n_ubatch=n_ubatch, notes=tuple(notes),
        repacked_bytes=repacked,
    )
