"""The `fit` report: every variant x context on one machine, and the recommendation.

Takes the models to plan from the resolver (catalog facts, a live header from the hub, or a local
file's), asks the planner for each context, and returns JSON-ready data (schema in docs/fit.md)
but for the planner's reasons, which stay records (planning/reasons.py): the `fit` command puts
them, the rule and the speeds into words from ``cli.wording``, where every command's words live,
and writes each record beside its words.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from localcascade.errors import DoesNotFitError
from localcascade.hardware.facts import Hardware
from localcascade.planning.memory import kept_state_bytes
from localcascade.planning.plan import Plan, PlanRequest
from localcascade.planning.placement import FIT_CONTEXTS, Limits, place
from localcascade.planning.policy import Policy, machine_rule, recommend, rule_for
from localcascade.resolve.resolver import resolve
from localcascade.units import format_tokens


def _row(plan: Plan) -> dict:
    comps = {k: getattr(plan.gpu, k) + getattr(plan.ram, k) for k in ("weights", "kv", "recurrent", "compute", "output", "overhead")}
    return {
        "n_ctx": plan.n_ctx,
        "kv_type": plan.type_k,
        "verdict": plan.verdict,
        "gpu_bytes": plan.gpu_bytes,
        "ram_bytes": plan.ram_bytes,
        "cpu_moe_blocks": plan.moe_blocks_in_ram,
        "n_cpu_moe": plan.n_cpu_moe,
        "n_gpu_layers": plan.n_gpu_layers,
        "tokens_per_s": plan.tokens_per_s,
        "tokens_per_s_range": [plan.tokens_per_s_low, plan.tokens_per_s_high] if plan.tokens_per_s else None,
        "prompt_tokens_per_s": plan.prompt_tokens_per_s,
        "prompt_tokens_per_s_range": ([plan.prompt_tokens_per_s_low, plan.prompt_tokens_per_s_high]
                                      if plan.prompt_tokens_per_s else None),
        "speed_measured": plan.speed_measured,
        "components": comps,
        "gpu_components": asdict(plan.gpu),
        "ram_components": asdict(plan.ram),
        "reason": plan.reasons[0] if plan.reasons else None,   # a record; `fit` words it
    }


def fit_report(spec: str | None, hardware: Hardware, *, n_ctx: int | None = None, kv_type: str | None = None,
               think: bool = True, prefer: str | None = None, limits: Limits = Limits(),
               policy: Policy = Policy()) -> dict:
    """Every model's rows (a placement per context) and the policy's recommendation with two alternatives.

    ``kv_type`` None: the rows use f16 and the recommendation weighs f16 and q8_0. ``prefer``: another
    rule than the machine's ("quality", "speed", "context").
    """
    rule = rule_for(hardware, prefer)   # an unknown preference is refused before any planning
    resolved = resolve(spec, need="candidates")
    models, notes = list(resolved.candidates), list(resolved.notes)
    request = PlanRequest(n_ctx=n_ctx, type_k=kv_type or "f16", type_v=kv_type or "f16")
    variants = []
    beyond: dict[int, list[str]] = {}   # trained context -> models asked for more than that
    for m in models:
        trained = m.facts.n_ctx_train or max(FIT_CONTEXTS)
        # Rows past the context the model was trained for would only say what memory they take.
        contexts = sorted({c for c in FIT_CONTEXTS if c <= trained} | ({n_ctx} if n_ctx else set()))
        if n_ctx and n_ctx > trained:
            beyond.setdefault(trained, []).append(m.quant)
        rows = [_row(place(m.facts, hardware, request, n_ctx=c, name=m.quant, source=m.source, limits=limits))
                for c in contexts]
        variants.append({"variant": m.quant, "file_bytes": m.file_bytes, "source": m.source, "rows": rows})
    for trained, names in beyond.items():
        notes.append(f"{', '.join(names)}: trained for {format_tokens(trained)} tokens, "
                     f"{format_tokens(n_ctx)} is beyond what the model was made for")
    recommended: dict[str, Any] | None = None
    alternatives: list[dict] = []
    try:
        choice = recommend(hardware, models, PlanRequest(n_ctx=n_ctx, type_k=kv_type, type_v=kv_type,
                                                       prefer=prefer),
                           think=think, policy=policy, limits=limits)
    except DoesNotFitError:
        choice = None
    if choice is not None:
        recommended = _choice(choice.variant, choice.plan)
        recommended["reasons"] = list(choice.plan.reasons)   # records, like the policy's notes
        recommended["drafts"] = _drafts(choice.plan)
        per_token, per_state = kept_state_bytes(choice.variant.facts, choice.plan.type_k, choice.plan.type_v)
        recommended["kept_state"] = {"bytes_per_token": per_token, "bytes_per_state": per_state}
        recommended["policy"] = list(choice.notes)
        alternatives = [dict(_choice(a.variant, a.plan), trade=a.trade) for a in choice.alternatives]
    assumptions = {"cuda_context_bytes_per_gpu": limits.overheads.cuda_context_bytes,
                   "gpu_margin_bytes": limits.gpu_margin_bytes, "ram_margin_bytes": limits.ram_margin_bytes,
                   "process_ram_bytes": limits.overheads.process_ram_bytes}
    return {"hardware": hardware.to_dict(), "requested_n_ctx": n_ctx, "think": think,
            "policy": {"rule": rule, "prefer": prefer and prefer.lower(), "machine_rule": machine_rule(hardware),
                       "context_floor": policy.floor(think), "usable_tokens_per_s": policy.usable_tokens_per_s,
                       "kv_types": [kv_type] if kv_type else list(policy.kv_types)},
            "recommended": recommended, "alternatives": alternatives, "variants": variants, "notes": notes,
            "assumptions": assumptions}


def _drafts(plan: Plan) -> dict:
    """What drafting the plan reserves: k tokens a step, and the recurrent-state snapshots for them."""
    recurrent = plan.gpu.recurrent + plan.ram.recurrent
    return {"draft_tokens": plan.n_rs_seq,
            "snapshot_bytes": recurrent * plan.n_rs_seq // (1 + plan.n_rs_seq) if plan.n_rs_seq else 0}


def _choice(variant: Any, plan: Plan) -> dict:
    return {
        "variant": variant.quant, "n_ctx": plan.n_ctx, "verdict": plan.verdict,
        "n_gpu_layers": plan.n_gpu_layers, "cpu_moe_blocks": plan.moe_blocks_in_ram,
        "n_cpu_moe": plan.n_cpu_moe, "kv_type": plan.type_k, "tokens_per_s": plan.tokens_per_s,
        "tokens_per_s_range": [plan.tokens_per_s_low, plan.tokens_per_s_high],
        "prompt_tokens_per_s": plan.prompt_tokens_per_s,
        "prompt_tokens_per_s_range": [plan.prompt_tokens_per_s_low, plan.prompt_tokens_per_s_high],
        "speed_measured": plan.speed_measured,
    }

