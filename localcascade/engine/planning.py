"""Which Plan the engine loads a file with when the caller gives none."""

from __future__ import annotations

from pathlib import Path

from localcascade.hardware.facts import Hardware
from localcascade.plan import CPU_ONLY, Plan, PlanRequest


def plan_for_file(model_path: Path, request: PlanRequest | None = None, hardware: Hardware | None = None) -> Plan:
    """The fit planner's plan for this file on this (detected) hardware, with the user's overrides.

    Overrides that cannot fit raise DoesNotFitError from the planner, with the numbers.
    """
    request = request or PlanRequest()
    try:
        from localcascade.gguf_header import read_header
        from localcascade.planner import plan_for_model
    except ImportError:
        return _cpu_plan(model_path, request)
    if hardware is None:
        from localcascade.hardware.probe import detect

        hardware = detect()
    return plan_for_model(read_header(model_path), hardware, request)


def _cpu_plan(model_path: Path, request: PlanRequest) -> Plan:
    """Everything on the CPU, the user's values where given (used until the planner is available)."""
    return Plan(
        model=Path(model_path).name,
        n_ctx=request.n_ctx or 4096,
        type_k=request.type_k or "f16",
        type_v=request.type_v or request.type_k or "f16",
        flash_attn=True if request.flash_attn is None else request.flash_attn,
        n_gpu_layers=request.n_gpu_layers or 0,
        cpu_moe_blocks=request.cpu_moe_blocks or 0,
        n_batch=request.n_batch or 2048,
        n_ubatch=request.n_ubatch or 512,
        verdict=CPU_ONLY,
        reasons=("no fit planner available: all on the CPU",),
    )
