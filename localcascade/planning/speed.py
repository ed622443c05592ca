"""Predicted speed of a placement: generation and prompt tokens/s. Pure: facts and rates in, numbers out.

Generation runs every weight a token uses through a matrix-vector kernel once per token:
- on a GPU that is memory-bound: the bytes read over the card's bandwidth (times an efficiency);
- on a CPU it is the kernels that bound it, not only memory: float weights (F32/F16/BF16) stream
  at about memory speed, quantized ones are unpacked and multiplied at a rate set by the cores
  and their SIMD (measured here: IQ4_XS/Q4_K weights about half as fast per byte as F32 ones).
Prompt processing is compute-bound: about 2 x active parameters floating-point operations per
token (multiply and add), through matrix-matrix kernels, plus a fixed cost per token on the CPU
that only shows on tiny models. The output head is computed once per
batch in a prompt, so it counts for generation only.

Rates come from one of two places, and every figure says which:
- measured: `localcascade bench` on this machine stores a Calibration (hardware/calibration.py), which
  scales the per-core defaults to what llama.cpp really did here; valid for this CPU, build and
  thread count only;
- estimated: the per-core defaults in profiles/speed.json times the cores, capped by the memory
  bandwidth, and for GPUs their bandwidth. `--gpu` profiles are always estimates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources

from localcascade.hardware.facts import Calibration
from localcascade.planning.memory import Placement, on_gpu
from localcascade.model.facts import ModelFacts, is_expert_tensor, layer_of

# Which end of each stated range a figure is computed with: the central estimate, the slow end, the fast end.
CENTRAL, SLOW, FAST = "central", "slow", "fast"

FLOAT_TYPES = {"f32", "f16", "bf16"}


@dataclass(frozen=True)
class Speed:
    generation: float          # tokens/s with a short context (the central estimate)
    prompt: float              # tokens/s reading a prompt
    measured: bool             # from this machine's calibration (else an estimate)
    generation_low: float | None = None    # the range the estimate claims (profiles/speed.json)
    generation_high: float | None = None
    prompt_low: float | None = None
    prompt_high: float | None = None

    @property
    def label(self) -> str:
        return "measured here" if self.measured else "estimate"

    def prompt_seconds(self, tokens: int) -> float:
        return tokens / self.prompt if self.prompt > 0 else float("inf")


@dataclass(frozen=True)
class WeightsPerToken:
    """What one token reads and computes, split by where the weights are and how they are stored."""

    gpu_bytes: float = 0.0
    cpu_float_bytes: float = 0.0
    cpu_quant_bytes: float = 0.0
    gpu_prompt_params: float = 0.0   # active parameters, without the output head
    cpu_prompt_params: float = 0.0
    cpu_resident_bytes: float = 0.0  # every weight kept in system RAM (all experts, not a token's share)


@lru_cache(maxsize=1)
def defaults() -> dict:
    text = resources.files("localcascade.profiles").joinpath("speed.json").read_text(encoding="utf-8")
    return json.loads(text)


def weights_per_token(facts: ModelFacts, p: Placement) -> WeightsPerToken:
    """Bytes read and parameters used per token for this placement.

    Every repeating-layer weight is used once, of each expert tensor only n_expert_used / n_expert
    (the routed experts), the output head once (the token embedding when the model ties them), the
    input embedding only one row (nothing worth counting).
    """
    n = facts.n_layer
    share = facts.n_expert_used / facts.n_expert if facts.n_expert else 1.0
    tied = not any(t.name == "output.weight" for t in facts.tensors)
    out = dict(gpu_bytes=0.0, cpu_float_bytes=0.0, cpu_quant_bytes=0.0, gpu_prompt_params=0.0, cpu_prompt_params=0.0,
               cpu_resident_bytes=0.0)
    for t in facts.tensors:
        head = t.name == "output.weight" or (tied and t.name == "token_embd.weight")
        layer = n if head else layer_of(t.name)
        if layer is None:
            continue   # embeddings, norms outside the layers
        expert = not head and is_expert_tensor(t.name)
        used = share if expert else 1.0
        elements = 1
        for d in t.shape:
            elements *= d
        gpu = on_gpu(layer, n, p.n_gpu_layers) and not (expert and layer < p.n_cpu_moe)
        if not gpu:
            out["cpu_resident_bytes"] += t.n_bytes
        if gpu:
            out["gpu_bytes"] += t.n_bytes * used
        elif t.type_name.lower() in FLOAT_TYPES:
            out["cpu_float_bytes"] += t.n_bytes * used
        else:
            out["cpu_quant_bytes"] += t.n_bytes * used
        if not head:
            out["gpu_prompt_params" if gpu else "cpu_prompt_params"] += elements * used
    return WeightsPerToken(**out)


def cpu_generation_seconds(w: WeightsPerToken, *, cores: int, ram_bandwidth: float, end: str = CENTRAL) -> float:
    """Default seconds per token for the CPU's share of the weights (0 when all are on a GPU).

    ``end``: the per-core rates come from one machine, so an uncalibrated CPU is given a range
    (``cpu.rate_range`` in profiles/speed.json); SLOW and FAST are its ends."""
    d = defaults()["cpu"]
    pick = {CENTRAL: 0, SLOW: 1, FAST: 2}[end]
    factor = (1.0, *d["rate_range"])[pick]
    memory = ram_bandwidth * (d["memory_efficiency"], *d["memory_efficiency_range"])[pick]
    float_rate = min(d["float_bytes_per_s_per_core"] * cores * factor, memory)
    quant_rate = min(d["quant_bytes_per_s_per_core"] * cores * factor, memory)
    return w.cpu_float_bytes / float_rate + w.cpu_quant_bytes / quant_rate


def gpu_layers(facts: ModelFacts, p: Placement) -> int:
    """Repeating layers computed on the GPU."""
    return sum(1 for layer in range(facts.n_layer) if on_gpu(layer, facts.n_layer, p.n_gpu_layers))


def round_trips(facts: ModelFacts, p: Placement) -> int:
    """Times per token the activations cross between GPU and CPU: once per GPU layer whose experts
    stay in RAM (there and back), once where the CPU's layers hand over to the GPU's."""
    experts_away = sum(1 for layer in facts.moe_layers
                       if layer < p.n_cpu_moe and on_gpu(layer, facts.n_layer, p.n_gpu_layers))
    split = 1 if 0 < gpu_layers(facts, p) < facts.n_layer else 0
    return experts_away + split


def gpu_generation_seconds(facts: ModelFacts, p: Placement, w: WeightsPerToken, bandwidth: float, *,
                           end: str = CENTRAL) -> float:
    """Seconds per token for the GPU's share: its weights over the card's bandwidth, plus a fixed
    cost per layer and per round trip to the CPU.

    The fixed cost is what the published measurements show (docs/performance.md): a 3B-active
    model reads only ~2.5 GB per token, so a fast card would finish in ~4 ms, and what remains
    (kernel launches and synchronisation of ~15 small kernels per layer: Mamba-2 scan and conv,
    the MoE router, top-k, gather and three expert matmuls) is not bandwidth-bound at all. Its
    spread over the reports is wide (builds differ), so it is a range, with the central value.
    """
    g = defaults()["gpu"]
    pick = {CENTRAL: 0, SLOW: 1, FAST: 2}[end]
    per_layer = (g["seconds_per_layer"], *g["seconds_per_layer_range"][::-1])[pick]
    per_trip = (g["seconds_per_round_trip"], *g["seconds_per_round_trip_range"][::-1])[pick]
    return (w.gpu_bytes / (bandwidth * g["memory_efficiency"]) + gpu_layers(facts, p) * per_layer
            + round_trips(facts, p) * per_trip)


def speaks_for(calibration: Calibration, w: WeightsPerToken) -> bool:
    """Whether a calibration measured on one model holds for a model reading ``w`` per token.

    A model whose weights fit in the CPU's caches runs at cache speed, not memory speed: a
    calibration from one (the tiny test model) predicted Gemma 3 270M 56% too slow. So a
    calibration speaks for models on its own side of the cache line, and a cache-resident one only
    for models of about its own size. One stored before it recorded its size speaks for none.
    """
    measured = calibration.cpu_bytes_per_token
    if not measured:
        return False
    c = defaults()["calibration"]
    target = w.cpu_float_bytes + w.cpu_quant_bytes
    if measured >= c["cache_resident_bytes"] and target >= c["cache_resident_bytes"]:
        return True
    return target > 0 and max(target, measured) / min(target, measured) <= c["same_size_factor"]


def usable_calibration(calibration: Calibration | None, w: WeightsPerToken, cores: int) -> Calibration | None:
    """The calibration if it was measured with these threads and speaks for this model, else None."""
    if calibration is None or calibration.threads != cores or not speaks_for(calibration, w):
        return None
    return calibration


def predict(facts: ModelFacts, p: Placement, *, gpu_bandwidth: float | None, ram_bandwidth: float, cores: int,
            calibration: Calibration | None = None) -> Speed:
    """Generation and prompt tokens/s of ``p``; measured when ``calibration`` (this CPU's) applies.

    A calibration measures the CPU: with weights on a GPU the GPU's part stays an estimate, and so
    does the whole figure. Generation comes with the range it claims: a calibrated CPU-only figure
    is a point; every estimate is a range.
    """
    d = defaults()
    w = weights_per_token(facts, p)
    usable = usable_calibration(calibration, weights_per_token(facts, replace(p, n_gpu_layers=0, n_cpu_moe=0)),
                                cores)
    scale = usable.cpu_scale if usable else 1.0
    on_gpu_too = bool(w.gpu_bytes or w.gpu_prompt_params)
    bandwidth = gpu_bandwidth or d["gpu"]["default_bandwidth_bytes_per_s"]

    def generation(end: str) -> float:
        cpu_end = CENTRAL if usable else end   # a measured CPU has no range of its own
        seconds = cpu_generation_seconds(w, cores=cores, ram_bandwidth=ram_bandwidth, end=cpu_end) / scale
        if on_gpu_too:
            seconds += gpu_generation_seconds(facts, p, w, bandwidth, end=end)
        return 1.0 / seconds if seconds > 0 else 0.0

    def prompt(end: str) -> float:
        pick = {CENTRAL: 0, SLOW: 1, FAST: 2}[end]
        if on_gpu_too:
            # With a GPU in the plan, llama.cpp computes a prompt's batches on the GPU even for weights
            # kept in RAM: it copies them over PCIe once per micro-batch (ggml's op offload). Beside the
            # arithmetic, a fixed cost per layer and token (the Mamba-2 scan, token by token in older
            # builds): the published figures disagree (docs/performance.md), so it is a range.
            g = d["gpu"]
            per_layer = (g["prompt_seconds_per_layer_per_token"], *g["prompt_seconds_per_layer_per_token_range"][::-1])
            gpu_flops = bandwidth * g["prompt_flops_per_byte_of_bandwidth"]
            seconds = (2 * (w.gpu_prompt_params + w.cpu_prompt_params) / gpu_flops + facts.n_layer * per_layer[pick]
                       + w.cpu_resident_bytes / (g["pcie_bytes_per_s"] * max(1, p.n_ubatch)))
        else:
            factor = 1.0 if usable else (1.0, *d["cpu"]["rate_range"])[pick]
            cpu_flops = usable.cpu_prompt_flops if usable else d["cpu"]["prompt_flops_per_core"] * cores * factor
            overhead = d["cpu"]["prompt_overhead_seconds_per_token"]
            if usable and usable.cpu_prompt_overhead_s is not None:
                overhead = usable.cpu_prompt_overhead_s
            seconds = 2 * w.cpu_prompt_params / cpu_flops + overhead
        return 1.0 / seconds if seconds > 0 else 0.0

    measured = usable is not None and not on_gpu_too
    ends = (CENTRAL, CENTRAL) if measured else (SLOW, FAST)
    return Speed(generation=generation(CENTRAL), prompt=prompt(CENTRAL), measured=measured,
                 generation_low=generation(ends[0]), generation_high=generation(ends[1]),
                 prompt_low=prompt(ends[0]), prompt_high=prompt(ends[1]))


def calibrate(facts: ModelFacts, *, tg_tokens_per_s: float, pp_tokens_per_s: float, cores: int,
              ram_bandwidth: float, model: str = "", llama_cpp_version: str | None = None,
              cpu_model: str | None = None, measured_at: str = "") -> Calibration:
    """The Calibration that makes ``predict`` give what `bench` measured for a CPU-only run of ``facts``."""
    cpu_only = Placement(n_ctx=4096, n_gpu_layers=0)
    w = weights_per_token(facts, cpu_only)
    default_seconds = cpu_generation_seconds(w, cores=cores, ram_bandwidth=ram_bandwidth)
    # The fixed cost per token is at most half of what was measured (a tiny model measures mostly it).
    overhead = min(defaults()["cpu"]["prompt_overhead_seconds_per_token"], 0.5 / pp_tokens_per_s)
    arithmetic = 1.0 / pp_tokens_per_s - overhead   # seconds per token
    return Calibration(
        cpu_scale=default_seconds * tg_tokens_per_s,   # default seconds / measured seconds
        cpu_prompt_flops=2 * w.cpu_prompt_params / arithmetic,
        cpu_prompt_overhead_s=overhead,
        threads=cores, llama_cpp_version=llama_cpp_version, cpu_model=cpu_model, model=model,
        measured_at=measured_at, cpu_bytes_per_token=w.cpu_float_bytes + w.cpu_quant_bytes,
    )
