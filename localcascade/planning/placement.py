"""The planner: the best placement of a model on a machine, and the best catalog variant for it.

Pure: it reads ModelFacts and Hardware and asks the memory model; no I/O, no llama_cpp.
For one context length, placements are tried best first and the first that fits BOTH the
GPU(s) (free VRAM minus a safety margin; the CUDA context is part of the estimate) and system
RAM (available RAM; mmapped weights that stay on the CPU count there) wins:
all on the GPU; else the expert tensors of the fewest leading layers in RAM (``--n-cpu-moe``);
else the fewest layers on the CPU (``n_gpu_layers``); else CPU only; else it won't fit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

from localcascade.errors import ExpertLayersError
from localcascade.hardware.facts import Hardware
from localcascade.planning.memory import MiB, Estimate, Overheads, Placement, check_kv_types, estimate, largest_layer_bytes
from localcascade.model.facts import ModelFacts
from localcascade.planning.speed import Speed, predict
from localcascade.planning.plan import (CPU_ONLY, DRAFT_TOKENS, EXPERTS_IN_RAM, FULL_GPU, PARTIAL, WONT_FIT, Plan,
                                       PlanRequest)
from localcascade.planning.reasons import AsRequested, NothingFits, Placed, Reason
from localcascade.units import parse_size

# Context lengths tried when the user gives none, and shown by `fit`.
CONTEXT_LADDER = tuple(2**k * 1024 for k in range(2, 11))   # 4K .. 1M
FIT_CONTEXTS = (4096, 32768, 131072, 262144, 1048576)


@dataclass(frozen=True)
class Limits:
    """Knobs of the planner; the defaults are stated in README.md, "What fits"."""

    gpu_margin_bytes: int = 256 * MiB     # kept free on each GPU (fragmentation, driver growth)
    ram_margin_bytes: int = 1024 * MiB    # kept free in system RAM for everything else
    overheads: Overheads = Overheads()
    default_ram_bandwidth: float = 45e9   # bytes/s when RAM bandwidth is unknown (profiles/hardware/_defaults.json)


def limits_from(*, gpu_overhead: str | None = None, gpu_margin: str | None = None) -> Limits:
    """Limits with the user's sizes ("0.8GiB", "512MiB") in place of the stated defaults."""
    limits = Limits()
    if gpu_margin is not None:
        limits = replace(limits, gpu_margin_bytes=parse_size(gpu_margin))
    if gpu_overhead is not None:
        limits = replace(limits, overheads=replace(limits.overheads, cuda_context_bytes=parse_size(gpu_overhead)))
    return limits


def usable_gpus(hw: Hardware) -> tuple:
    """The GPUs llama.cpp can offload to: none when the installed build has no GPU backend."""
    return hw.gpus if hw.llama_cpp.gpu_offload else ()


def _budgets(hw: Hardware, limits: Limits) -> tuple[int, int]:
    gpu = sum(max(0, g.vram_free_bytes - limits.gpu_margin_bytes) for g in usable_gpus(hw))
    ram = max(0, hw.ram_available_bytes - limits.ram_margin_bytes)
    return gpu, ram


def _fits(est: Estimate, hw: Hardware, limits: Limits, facts: ModelFacts) -> bool:
    gpu_budget, ram_budget = _budgets(hw, limits)
    unified = any(g.unified_memory for g in hw.gpus)
    ram_used = est.ram.total + (est.gpu.total if unified else 0)
    gpu_used = est.gpu.total
    n_gpus = len(usable_gpus(hw))
    if n_gpus > 1 and est.gpu.weights:
        # llama.cpp splits whole layers across GPUs in proportion to their free memory, so each
        # device can end up to one layer above its share: keep that much slack on all but one.
        gpu_used += largest_layer_bytes(facts) * (n_gpus - 1)
    return gpu_used <= gpu_budget and ram_used <= ram_budget


def _verdict(p: Placement, facts: ModelFacts) -> str:
    if p.n_gpu_layers == 0:
        return CPU_ONLY
    if p.n_gpu_layers <= facts.n_layer:
        return PARTIAL
    return EXPERTS_IN_RAM if _moe_blocks_in_ram(p, facts) else FULL_GPU


def _moe_blocks_in_ram(p: Placement, facts: ModelFacts) -> int:
    return len([i for i in facts.moe_layers if i < p.n_cpu_moe])


def _candidates(facts: ModelFacts, base: Placement, has_gpu: bool) -> Iterable[Placement]:
    n = facts.n_layer
    if has_gpu:
        yield replace(base, n_gpu_layers=n + 1, n_cpu_moe=0)
        # --n-cpu-moe N counts layers; only values that end on an MoE layer change anything.
        for layer in facts.moe_layers:
            yield replace(base, n_gpu_layers=n + 1, n_cpu_moe=layer + 1)
        for ngl in range(n, 0, -1):
            yield replace(base, n_gpu_layers=ngl, n_cpu_moe=0)
    yield replace(base, n_gpu_layers=0, n_cpu_moe=0)


def speed_of(facts: ModelFacts, p: Placement, hw: Hardware, limits: Limits = Limits()) -> Speed:
    """Generation and prompt tokens/s of a placement on ``hw`` (measured rates where this machine has them)."""
    gpu_bw = next((g.memory_bandwidth_bytes_per_s for g in usable_gpus(hw) if g.memory_bandwidth_bytes_per_s), None)
    return predict(facts, p, gpu_bandwidth=gpu_bw,
                   ram_bandwidth=hw.ram_bandwidth_bytes_per_s or limits.default_ram_bandwidth,
                   cores=max(1, hw.cpu.physical_cores), calibration=hw.calibration)


def _plan(name: str, facts: ModelFacts, p: Placement, est: Estimate, verdict: str, hw: Hardware,
          limits: Limits, source: str, reasons: tuple[Reason, ...]) -> Plan:
    return Plan(
        model=name, n_ctx=est.n_ctx, type_k=p.type_k, type_v=p.type_v, flash_attn=p.flash_attn,
        n_gpu_layers=p.n_gpu_layers, n_cpu_moe=p.n_cpu_moe, moe_blocks_in_ram=_moe_blocks_in_ram(p, facts),
        n_batch=p.n_batch,
        n_ubatch=est.n_ubatch, n_seq=p.n_seq, n_rs_seq=p.n_rs_seq, verdict=verdict, gpu=est.gpu, ram=est.ram,
        reasons=reasons, source=source, **_speed_fields(facts, p, hw, limits, verdict),
    )


def _speed_fields(facts: ModelFacts, p: Placement, hw: Hardware, limits: Limits, verdict: str) -> dict:
    if verdict == WONT_FIT:
        return {}
    speed = speed_of(facts, p, hw, limits)
    return dict(tokens_per_s=round(speed.generation, 1), prompt_tokens_per_s=round(speed.prompt, 1),
                speed_measured=speed.measured, tokens_per_s_low=round(speed.generation_low, 1),
                tokens_per_s_high=round(speed.generation_high, 1), prompt_tokens_per_s_low=round(speed.prompt_low, 1),
                prompt_tokens_per_s_high=round(speed.prompt_high, 1))


def _base(facts: ModelFacts, hw: Hardware, request: PlanRequest, n_ctx: int) -> Placement:
    flash = True if request.flash_attn is None else request.flash_attn
    type_k = request.type_k or "f16"
    type_v = request.type_v or type_k
    check_kv_types(type_k, type_v, flash)
    n_seq = max(1, request.n_seq or 1)
    drafts = max(0, request.draft_tokens or 0)
    n_batch = request.n_batch or 2048
    return Placement(
        n_ctx=n_ctx * n_seq, n_seq=n_seq, type_k=type_k, type_v=type_v, flash_attn=flash, n_batch=n_batch,
        # A verified draft's tokens share one micro-batch (llama.cpp keeps the rollback snapshots there).
        n_ubatch=min(n_batch, max(request.n_ubatch or 512, drafts + 1)), n_rs_seq=drafts,
        n_gpus=max(1, len(usable_gpus(hw))),
    )


def _placed(name: str, verdict: str, p: Placement, est: Estimate, facts: ModelFacts, hw: Hardware,
            limits: Limits) -> Placed:
    """Where a placement puts the model and the figures behind it (cli/wording says it)."""
    gpu_budget, ram_budget = _budgets(hw, limits)
    return Placed(
        model=name, verdict=verdict, n_ctx=est.n_ctx, n_seq=p.n_seq, gpu_name=hw.gpus[0].name if hw.gpus else "GPU",
        gpu_bytes=est.gpu.total, gpu_usable_bytes=gpu_budget, moe_blocks_in_ram=_moe_blocks_in_ram(p, facts),
        n_cpu_moe=p.n_cpu_moe, ram_weight_bytes=est.ram.weights, n_gpu_layers=p.n_gpu_layers,
        n_layers=facts.n_layer + 1, ram_bytes=est.ram.total, ram_usable_bytes=ram_budget,
        gpu_offload_missing=bool(hw.gpus) and not usable_gpus(hw),
    )


def place(facts: ModelFacts, hw: Hardware, request: PlanRequest = PlanRequest(), *, n_ctx: int,
          name: str = "model", source: str = "header", limits: Limits = Limits()) -> Plan:
    """The best placement at exactly ``n_ctx``; verdict WONT_FIT when nothing fits.

    Overrides in ``request`` (GPU layers, expert blocks) are honoured as given; one that does not
    fit raises DoesNotFitError with the numbers. Drafting (``request.draft_tokens`` None) is planned
    where it pays: a model without experts, or one whose experts all stay on the GPU, and only if
    the snapshots it keeps do not move a layer or an expert block off the GPU. Verifying k drafts
    on a MoE reads the experts all k+1 tokens route to, 3.7-5x a plain step with the experts in RAM
    (benchmarks/drafts.py verify), which drafts can rarely repay.
    """
    if request.draft_tokens is not None:
        return _place(facts, hw, request, n_ctx=n_ctx, name=name, source=source, limits=limits)
    plain = _place(facts, hw, replace(request, draft_tokens=0), n_ctx=n_ctx, name=name, source=source, limits=limits)
    if facts.n_expert and not (plain.verdict == FULL_GPU and plain.n_cpu_moe == 0):
        return plain
    drafted = _place(facts, hw, replace(request, draft_tokens=DRAFT_TOKENS), n_ctx=n_ctx, name=name, source=source,
                     limits=limits)
    same = (drafted.verdict, drafted.n_gpu_layers, drafted.n_cpu_moe) == (plain.verdict, plain.n_gpu_layers,
                                                                         plain.n_cpu_moe)
    return drafted if same and drafted.verdict != WONT_FIT else plain


def _place(facts: ModelFacts, hw: Hardware, request: PlanRequest, *, n_ctx: int, name: str, source: str,
           limits: Limits) -> Plan:
    base = _base(facts, hw, request, n_ctx)
    if request.n_gpu_layers is not None or request.n_cpu_moe is not None:
        n = facts.n_layer
        if request.n_cpu_moe is not None and request.n_cpu_moe > n:
            # The loader writes one override pattern per block: an unchecked 99999 makes llama.cpp
            # match every tensor name against 99999 regexes, a load of half a minute.
            raise ExpertLayersError(request.n_cpu_moe, n, name)
        ngl = request.n_gpu_layers if request.n_gpu_layers is not None else (n + 1 if usable_gpus(hw) else 0)
        if ngl < 0 or ngl > n + 1:
            ngl = n + 1  # llama.cpp's meaning of any count past the last layer: all of them
        p = replace(base, n_gpu_layers=ngl, n_cpu_moe=request.n_cpu_moe or 0)
        est = estimate(facts, p, limits.overheads)
        if not _fits(est, hw, limits, facts):
            raise NothingFits(_placed(name, _verdict(p, facts), p, est, facts, hw, limits),
                              requested=(p.n_gpu_layers, p.n_cpu_moe))
        verdict = _verdict(p, facts)
        return _plan(name, facts, p, est, verdict, hw, limits, source,
                     (_placed(name, verdict, p, est, facts, hw, limits), AsRequested()))
    last = None
    for p in _candidates(facts, base, bool(usable_gpus(hw))):
        est = estimate(facts, p, limits.overheads)
        last = (p, est)
        if _fits(est, hw, limits, facts):
            verdict = _verdict(p, facts)
            return _plan(name, facts, p, est, verdict, hw, limits, source,
                         (_placed(name, verdict, p, est, facts, hw, limits),) + est.notes)
    p, est = last
    return _plan(name, facts, p, est, WONT_FIT, hw, limits, source,
                 (_placed(name, WONT_FIT, p, est, facts, hw, limits),))
