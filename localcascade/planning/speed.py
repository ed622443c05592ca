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
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from localcascade.hardware.facts import Calibration
from localcascade.planning.memory import Placement, on_gpu
from localcascade.model.facts import ModelFacts, is_expert_tensor, layer_of

FLOAT_TYPES = {"f32", "f16", "bf16"}


@dataclass(frozen=True)
class Speed:
    generation: float          # tokens/s with a short context
    prompt: float              # tokens/s reading a prompt
    measured: bool             # from this machine's calibration (else an estimate)

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


def cpu_generation_seconds(w: WeightsPerToken, *, cores: int, ram_bandwidth: float) -> float:
    """Default seconds per token for the CPU's share of the weights (0 when all are on a GPU)."""
    d = defaults()["cpu"]
    memory = ram_bandwidth * d["memory_efficiency"]
    float_rate = min(d["float_bytes_per_s_per_core"] * cores, memory)
    quant_rate = min(d["quant_bytes_per_s_per_core"] * cores, memory)
    return w.cpu_float_bytes / float_rate + w.cpu_quant_bytes / quant_rate


def predict(facts: ModelFacts, p: Placement, *, gpu_bandwidth: float | None, ram_bandwidth: float, cores: int,
            calibration: Calibration | None = None) -> Speed:
    """Generation and prompt tokens/s of ``p``; measured when ``calibration`` (this CPU's) applies.

    A calibration measures the CPU: with weights on a GPU the GPU's part stays an estimate, and so
    does the whole figure.
    """
    d = defaults()
    w = weights_per_token(facts, p)
    usable = calibration if calibration is not None and calibration.threads == cores else None
    scale = usable.cpu_scale if usable else 1.0
    gen = cpu_generation_seconds(w, cores=cores, ram_bandwidth=ram_bandwidth) / scale
    cpu_flops = usable.cpu_prompt_flops if usable else d["cpu"]["prompt_flops_per_core"] * cores
    if w.gpu_bytes or w.gpu_prompt_params:
        bandwidth = gpu_bandwidth or d["gpu"]["default_bandwidth_bytes_per_s"]
        gen += w.gpu_bytes / (bandwidth * d["gpu"]["memory_efficiency"])
        # With a GPU in the plan, llama.cpp computes a prompt's batches on the GPU even for weights
        # kept in RAM: it copies them over PCIe once per micro-batch (ggml's op offload).
        gpu_flops = bandwidth * d["gpu"]["prompt_flops_per_byte_of_bandwidth"]
        prompt = (2 * (w.gpu_prompt_params + w.cpu_prompt_params) / gpu_flops
                  + w.cpu_resident_bytes / (d["gpu"]["pcie_bytes_per_s"] * max(1, p.n_ubatch)))
    else:
        overhead = d["cpu"]["prompt_overhead_seconds_per_token"]
        if usable and usable.cpu_prompt_overhead_s is not None:
            overhead = usable.cpu_prompt_overhead_s
        prompt = 2 * w.cpu_prompt_params / cpu_flops + overhead
    measured = usable is not None and not (w.gpu_bytes or w.gpu_prompt_params)
    return Speed(generation=1.0 / gen if gen > 0 else 0.0, prompt=1.0 / prompt if prompt > 0 else 0.0,
                 measured=measured)


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
        measured_at=measured_at,
    )
