"""The plan for a model file on this machine: its header and the hardware, through the policy.

The I/O side of planning (the policy and planner are pure): front ends call it, then hand the
Plan to Engine.load. It also picks, among the catalog variants already downloaded, the one the
policy recommends (the resolver's default model): the store lists, planning chooses."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, TypeVar

from localcascade.resolve.candidates import catalog_candidates
from localcascade.model.gguf_header import read_header
from localcascade.hardware.facts import Hardware
from localcascade.hardware.resolve import hardware_for
from localcascade.model.facts import facts_from_header
from localcascade.planning.plan import Plan, PlanRequest
from localcascade.planning.policy import larger_context, plan_for_model, recommend

Pulled = TypeVar("Pulled")  # a stored model: anything with ``variant`` (a catalog name or None) and ``path``


def plan_for_file(model_path: Path, request: PlanRequest | None = None, hardware: Hardware | None = None) -> Plan:
    """The fit planner's plan for this file on this (detected) hardware, with the user's overrides.

    Overrides that cannot fit raise DoesNotFitError from the planner, with the numbers.
    """
    if hardware is None:
        hardware = hardware_for()  # this machine, unknown bandwidths filled in
    return plan_for_model(read_header(model_path), hardware, request or PlanRequest())


def larger_plan(model_path: Path, plan: Plan, hardware: Hardware) -> Plan | None:
    """What the next larger context of this file would take on ``hardware``; None if it cannot hold one."""
    header = read_header(model_path)
    return larger_context(facts_from_header(header), hardware, plan,
                          name=str(header.metadata.get("general.name") or model_path.name))


def best_local_variant(stored: Iterable[Pulled], hardware: Hardware | None = None,
                       request: PlanRequest | None = None) -> tuple[Pulled, Plan] | None:
    """Of the ``stored`` models, the catalog variant the policy recommends for ``hardware`` (this
    machine when None), with its plan; None when no catalog variant is among them."""
    present = {m.variant: m for m in stored if getattr(m, "variant", None)}
    if not present:
        return None
    if hardware is None:
        hardware = hardware_for()  # this machine, unknown bandwidths filled in
    # Planned from the downloaded files' own headers, as loading them will be.
    pulled = {quant: Path(m.path) for quant, m in present.items()}
    choice = recommend(hardware, catalog_candidates(pulled=pulled, pulled_only=True), request or PlanRequest())
    return present[choice.variant.quant], choice.plan
