"""The plan for a model file on this machine: its header and the hardware, through the policy.

The I/O side of planning (the policy and planner are pure): front ends call it, then hand the
Plan to Engine.load."""

from __future__ import annotations

from pathlib import Path

from localcascade.hardware.facts import Hardware
from localcascade.plan import Plan, PlanRequest


def plan_for_file(model_path: Path, request: PlanRequest | None = None, hardware: Hardware | None = None) -> Plan:
    """The fit planner's plan for this file on this (detected) hardware, with the user's overrides.

    Overrides that cannot fit raise DoesNotFitError from the planner, with the numbers.
    """
    from localcascade.gguf_header import read_header
    from localcascade.policy import plan_for_model

    if hardware is None:
        from localcascade.hardware.resolve import hardware_for

        hardware = hardware_for()  # this machine, unknown bandwidths filled in
    return plan_for_model(read_header(model_path), hardware, request or PlanRequest())


def larger_plan(model_path: Path, plan: Plan, hardware: Hardware) -> Plan | None:
    """What the next larger context of this file would take on ``hardware``; None if it cannot hold one."""
    from localcascade.gguf_header import read_header
    from localcascade.memory import facts_from_header
    from localcascade.policy import larger_context

    header = read_header(model_path)
    return larger_context(facts_from_header(header), hardware, plan,
                          name=str(header.metadata.get("general.name") or model_path.name))
