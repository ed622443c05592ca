"""What to recommend: the stated policy over the planner's placements. Pure, like the planner.

Nemotron-Cascade-2 thinks before it answers, often for thousands of tokens, and its context is cheap
(only 6 attention blocks hold KV: 384 MiB at 64K with f16). So the policy is, in order:

1. A context floor that fits thinking: 64K with thinking on, 16K with it off. The user's --ctx
   always wins. Smaller only where nothing fits at the floor, and then it says so.
2. Then a rule that fits the machine (``rule_for``):
   - a discrete GPU ("full-gpu-first"): of the plans at the floor that run fully on the GPU, the
     best quality; where none does, the plan that keeps the least of the model in system RAM
     (fewest expert blocks, then most layers on the GPU: so the fastest), then the best quality.
     Quality bought with experts in RAM is small (a fraction of a benchmark point from a 4-bit
     K-quant to Q8_0 on a 30B MoE) and its price large and uncertain: it rests on the speed of the
     user's CPU, the least certain number the speed model has;
   - unified memory (Apple Silicon, "unified-memory"): fully on the GPU first too, then the best
     quality at a usable speed (20 tokens/s): the CPU and GPU share one memory and its bandwidth,
     so a bigger file is slower whichever side computes it;
   - CPU only ("cpu-only"): the best quality at a usable speed, else the fastest that fits, with
     its speed said plainly.
   Quality ranks the variant first, then the KV cache (f16 over q8_0, which halves the cache for a
   small, measured loss: docs/fit.md, "Quality of a q8_0 KV cache").
3. ``--prefer`` picks by another rule: "quality" (the best quality at 20+ tokens/s, else the
   fastest: the rule of earlier releases), "speed" (the fastest, then quality), "context" (the
   longest context this machine holds, then the machine's rule at it).

Each chosen plan then takes the largest context its placement still holds (same GPU layers and
expert blocks in RAM, so the speed is unchanged), and the alternatives beside it say what each
trades: "higher quality", "longer context", "faster".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

from localcascade.errors import ContextPastTrainingError, DoesNotFitError, UnknownPreferenceError, UsageError
from localcascade.hardware.facts import Hardware
from localcascade.model.facts import ModelFacts
from localcascade.planning.plan import VERDICTS, WONT_FIT, Plan, PlanRequest
from localcascade.planning.plan import Alternative as PlanAlternative
from localcascade.planning.placement import CONTEXT_LADDER, Limits, place, usable_gpus
from localcascade.planning.reasons import (BEST_QUALITY_FULL_GPU, BEST_QUALITY_USABLE, FASTEST, LEAST_IN_RAM,
                                           NONE_USABLE, FloorLowered, LongestHeld, NothingFits, Picked, Reason)

THINKING_FLOOR = 65536
NO_THINKING_FLOOR = 16384
USABLE_TOKENS_PER_S = 20.0
KV_TYPES_BY_QUALITY = ("f16", "q8_0")
PREFERENCES = ("quality", "speed", "context")

@dataclass(frozen=True)
class Policy:
    thinking_floor: int = THINKING_FLOOR
    no_thinking_floor: int = NO_THINKING_FLOOR
    usable_tokens_per_s: float = USABLE_TOKENS_PER_S
    kv_types: tuple[str, ...] = KV_TYPES_BY_QUALITY

    def floor(self, think: bool) -> int:
        return self.thinking_floor if think else self.no_thinking_floor


def check_preference(prefer: str | None) -> str | None:
    """``prefer`` lower-cased, or UnknownPreferenceError (a UsageError) with the choices."""
    if prefer is None:
        return None
    if prefer.lower() not in PREFERENCES:
        raise UnknownPreferenceError(prefer, PREFERENCES)
    return prefer.lower()


def machine_rule(hardware: Hardware) -> str:
    """The rule that fits the machine when the user states no preference."""
    gpus = usable_gpus(hardware)
    if not gpus:
        return "cpu-only"
    return "unified-memory" if any(g.unified_memory for g in gpus) else "full-gpu-first"


def rule_for(hardware: Hardware, prefer: str | None = None) -> str:
    return check_preference(prefer) or machine_rule(hardware)


@dataclass(frozen=True)
class Alternative(PlanAlternative):
    """An alternative among variants: the trade, the plan and the variant it loads."""

    variant: Any


@dataclass(frozen=True)
class Recommendation:
    variant: Any
    plan: Plan
    alternatives: tuple[Alternative, ...]
    notes: tuple[Reason, ...]  # how the policy decided (floor lowered, the rule's pick...): data, worded by cli/wording
    rule: str = "full-gpu-first"


def _kv_types(request: PlanRequest, policy: Policy) -> tuple[str, ...]:
    return (request.type_k,) if request.type_k else policy.kv_types


def _stretched(facts: ModelFacts, hw: Hardware, request: PlanRequest, plan: Plan, name: str, source: str,
               limits: Limits) -> Plan:
    """``plan`` grown to the largest ladder context (up to the trained one) that keeps its placement,
    and so its speed; its reasons say what the next context would need."""
    top = facts.n_ctx_train or CONTEXT_LADDER[-1]
    ladder = [c for c in CONTEXT_LADDER if plan.n_ctx < c <= top]
    if top not in ladder and plan.n_ctx < top < CONTEXT_LADDER[-1]:
        ladder.append(top)
    best = plan
    for n_ctx in ladder:
        bigger = place(facts, hw, request, n_ctx=n_ctx, name=name, source=source, limits=limits)
        if bigger.verdict == WONT_FIT or _placement(bigger) != _placement(plan):
            if bigger.verdict != WONT_FIT:
                best = replace(best, reasons=best.reasons + (bigger.reasons[0],))
            break
        best = bigger
    return best


def _placement(plan: Plan) -> tuple:
    return plan.verdict, plan.n_gpu_layers, plan.n_cpu_moe


def plans_at(facts: ModelFacts, hw: Hardware, request: PlanRequest, n_ctx: int, *, name: str, source: str,
             policy: Policy, limits: Limits, stretch: bool) -> list[Plan]:
    """One plan per KV type that fits at ``n_ctx`` (stretched to the largest context of its placement)."""
    plans = []
    for kv in _kv_types(request, policy):
        r = replace(request, type_k=kv, type_v=request.type_v if request.type_k else kv)
        try:
            plan = place(facts, hw, r, n_ctx=n_ctx, name=name, source=source, limits=limits)
        except UsageError:
            continue   # e.g. a quantized V cache without flash attention
        if plan.verdict == WONT_FIT:
            continue
        plans.append(_stretched(facts, hw, r, plan, name, source, limits) if stretch else plan)
    return plans


def _quality(variant: Any, plan: Plan) -> tuple:
    kv = KV_TYPES_BY_QUALITY.index(plan.type_k) if plan.type_k in KV_TYPES_BY_QUALITY else len(KV_TYPES_BY_QUALITY)
    return getattr(variant, "quality_rank", 0), kv


def in_system_ram(plan: Plan) -> tuple:
    """How much of the model a plan keeps in system RAM, least first: fully on the GPU, then the
    fewest expert blocks in RAM, then the most layers on the GPU, then CPU only."""
    return VERDICTS.index(plan.verdict), plan.moe_blocks_in_ram, -plan.n_gpu_layers


def _speed(option: tuple[Any, Plan]) -> float:
    return option[1].tokens_per_s or 0.0


Option = tuple[Any, Plan]


def _picked(how: str, option: Option, policy: Policy) -> Picked:
    """How a rule picked ``option``, with the figures its words need."""
    plan = option[1]
    return Picked(how=how, n_ctx=plan.n_ctx, usable_tokens_per_s=policy.usable_tokens_per_s,
                  tokens_per_s=plan.tokens_per_s, verdict=plan.verdict, moe_blocks_in_ram=plan.moe_blocks_in_ram,
                  n_gpu_layers=plan.n_gpu_layers)


def _best_quality_usable(options: list[Option], policy: Policy) -> tuple[Option, Picked]:
    """The best quality at a usable speed (the fastest among equals); where none is usable, the fastest."""
    usable = [o for o in options if _speed(o) >= policy.usable_tokens_per_s]
    if usable:
        best = min(usable, key=lambda o: (_quality(*o), -_speed(o)))
        return best, _picked(BEST_QUALITY_USABLE, best, policy)
    best = max(options, key=lambda o: (_speed(o), [-x for x in _quality(*o)]))
    return best, _picked(NONE_USABLE, best, policy)


def _least_in_ram(options: list[Option], policy: Policy) -> tuple[Option, Picked]:
    best = min(options, key=lambda o: (in_system_ram(o[1]), _quality(*o), -_speed(o)))
    return best, _picked(BEST_QUALITY_FULL_GPU if best[1].verdict == "full_gpu" else LEAST_IN_RAM, best, policy)


def _unified(options: list[Option], policy: Policy) -> tuple[Option, Picked]:
    full = [o for o in options if o[1].verdict == "full_gpu"]
    best, why = _best_quality_usable(full or options, policy)
    return best, replace(why, full_gpu=bool(full))


def _fastest(options: list[Option], policy: Policy) -> tuple[Option, Picked]:
    best = max(options, key=lambda o: (_speed(o), [-x for x in _quality(*o)]))
    return best, _picked(FASTEST, best, policy)


_PICK: dict[str, Callable[[list[Option], Policy], tuple[Option, Picked]]] = {
    "full-gpu-first": _least_in_ram,
    "unified-memory": _unified,
    "cpu-only": _best_quality_usable,
    "quality": _best_quality_usable,
    "speed": _fastest,
}


def _trained(facts_list: list[ModelFacts]) -> int:
    return max((f.n_ctx_train for f in facts_list if f.n_ctx_train), default=CONTEXT_LADDER[-1])


def _floor(facts_list: list[ModelFacts], policy: Policy, think: bool) -> int:
    """The policy's context floor, or the trained context of models made for less."""
    return min(policy.floor(think), _trained(facts_list))


def _floors(facts_list: list[ModelFacts], request: PlanRequest, policy: Policy, think: bool,
            rule: str) -> list[int]:
    """Contexts to try, first the floor, then smaller ones (only when the user named none). The
    context preference starts at the largest context a model was trained for."""
    if request.n_ctx is not None:
        if request.n_ctx <= 0:
            raise UsageError("context length must be positive")
        return [request.n_ctx]
    trained = _trained(facts_list)
    floor = _floor(facts_list, policy, think)
    below = [c for c in reversed(CONTEXT_LADDER) if c < floor]
    if rule == "context":
        above = [c for c in reversed(CONTEXT_LADDER) if floor < c <= trained]
        return above + [floor] + below
    return [floor] + below


def _options_at(variants: list[Any], hardware: Hardware, request: PlanRequest, n_ctx: int, policy: Policy,
                limits: Limits) -> list[Option]:
    return [(v, plan) for v in variants
            for plan in plans_at(v.facts, hardware, request, n_ctx, name=v.quant,
                                 source=getattr(v, "source", "catalog"), policy=policy, limits=limits,
                                 stretch=request.n_ctx is None)]


def recommend(hardware: Hardware, variants: Iterable[Any], request: PlanRequest = PlanRequest(), *,
              think: bool | None = None, policy: Policy = Policy(), limits: Limits = Limits()) -> Recommendation:
    """The policy's choice among ``variants`` (objects with .facts, .quant, .quality_rank) on ``hardware``;
    ``think`` (default: the request's) sets the context floor, ``request.prefer`` another rule.

    Raises DoesNotFitError when none fits at any context, UsageError for an unknown preference.
    """
    think = request.think if think is None else think
    rule = rule_for(hardware, request.prefer)
    variants = list(variants)
    facts_list = [v.facts for v in variants]
    floors = _floors(facts_list, request, policy, think, rule)
    floor = floors[0] if request.n_ctx is not None else _floor(facts_list, policy, think)
    notes: list[Reason] = []
    options: list[Option] = []
    for n_ctx in floors:
        options = _options_at(variants, hardware, request, n_ctx, policy, limits)
        if options:
            if n_ctx < floor:
                notes.append(FloorLowered(floor=floor, think=think, n_ctx=n_ctx))
            elif rule == "context" and request.n_ctx is None:
                notes.append(LongestHeld(n_ctx=n_ctx))
            break
    if not options:
        raise _nothing_fits(variants, hardware, request, floors[-1], limits)
    (variant, plan), why = _PICK[machine_rule(hardware) if rule == "context" else rule](options, policy)
    notes.append(why)
    alternatives = _alternatives(variant, plan, options, hardware, request, policy, limits, rule)
    return Recommendation(variant, plan, alternatives, tuple(notes), rule)


def _alternatives(variant: Any, plan: Plan, options: list[Option], hardware: Hardware, request: PlanRequest,
                  policy: Policy, limits: Limits, rule: str) -> tuple[Alternative, ...]:
    """Real plans beside the choice, each named by what it trades: higher quality (what the quality
    rule would pick), longer context (the same variant at the largest context that fits at all),
    faster (the fastest plan, where it is 15% faster or more)."""
    found: list[Alternative] = []
    (v, p), _ = _best_quality_usable(options, policy)
    if _quality(v, p) < _quality(variant, plan):
        found.append(Alternative("higher quality", p, v))
    longer = _longest(variant, plan, hardware, request, policy, limits)
    if longer is not None:
        found.append(Alternative("longer context", longer, variant))
    (v, p), _ = _fastest(options, policy)
    if _speed((v, p)) > 1.15 * (plan.tokens_per_s or 0):
        found.append(Alternative("faster", p, v))
    return tuple(found)


def _longest(variant: Any, plan: Plan, hardware: Hardware, request: PlanRequest, policy: Policy,
             limits: Limits) -> Plan | None:
    """The chosen variant at the largest context that fits at all (any placement, any KV type)."""
    if request.n_ctx is not None:
        return None
    top = variant.facts.n_ctx_train or CONTEXT_LADDER[-1]
    for n_ctx in (c for c in reversed(CONTEXT_LADDER) if plan.n_ctx < c <= top):
        plans = plans_at(variant.facts, hardware, request, n_ctx, name=variant.quant,
                         source=getattr(variant, "source", "catalog"), policy=policy, limits=limits, stretch=False)
        if plans:
            return min(plans, key=lambda p: (KV_TYPES_BY_QUALITY.index(p.type_k)
                                             if p.type_k in KV_TYPES_BY_QUALITY else 9, -(p.tokens_per_s or 0)))
    return None


def _nothing_fits(variants: list[Any], hardware: Hardware, request: PlanRequest, n_ctx: int,
                  limits: Limits) -> DoesNotFitError:
    """The refusal when no variant fits: the smallest one's best try at ``n_ctx``."""
    smallest = min(variants, key=lambda v: v.facts.file_tensor_bytes, default=None)
    if smallest is None:
        return DoesNotFitError("there is no model to plan for")
    plan = place(smallest.facts, hardware, request, n_ctx=n_ctx, name=smallest.quant, limits=limits)
    return NothingFits(plan.reasons[0], models=tuple(v.quant for v in variants))


@dataclass(frozen=True)
class _OneModel:
    facts: ModelFacts
    quant: str
    source: str
    quality_rank: int = 0


def plan_for_facts(facts: ModelFacts, hw: Hardware, request: PlanRequest = PlanRequest(), *, think: bool | None = None,
                   name: str = "model", source: str = "header", policy: Policy = Policy(),
                   limits: Limits = Limits()) -> Plan:
    """The plan one model file loads with: the user's context exactly (refused if it cannot fit),
    else the policy's (the floor, a KV type, the largest context of that placement). The reasons
    end with how the policy decided. Raises DoesNotFitError if nothing fits."""
    if request.n_ctx is not None:
        if request.n_ctx <= 0:
            raise UsageError("context length must be positive")
        if request.n_seq is not None and facts.n_ctx_train and request.n_ctx > facts.n_ctx_train:
            # A server's conversations (n_seq given) never run past the trained context: a client
            # cannot see the warning ask prints, only answers that turned to noise.
            raise ContextPastTrainingError(request.n_ctx, facts.n_ctx_train, name)
        plan = place(facts, hw, request, n_ctx=request.n_ctx, name=name, source=source, limits=limits)
        if plan.verdict == WONT_FIT:
            several = (request.n_seq or 1) > 1
            raise NothingFits(plan.reasons[0], offers_checked=several,
                              offers=_what_fits(facts, hw, request, name, source, limits) if several else ())
        return plan
    if (request.n_seq or 1) > 1:
        # Several conversations: the floor is per conversation, and nothing smaller is chosen silently;
        # nor anything longer than the model was trained on (its answers past that are noise).
        request = replace(request, n_ctx=_floor([facts], policy, request.think if think is None else think))
        return plan_for_facts(facts, hw, request, think=think, name=name, source=source, policy=policy,
                              limits=limits)
    choice = recommend(hw, [_OneModel(facts, name, source)], request, think=think, policy=policy, limits=limits)
    return replace(choice.plan, reasons=choice.plan.reasons + choice.notes,
                   alternatives=tuple(PlanAlternative(a.trade, a.plan) for a in choice.alternatives))


def _what_fits(facts: ModelFacts, hw: Hardware, request: PlanRequest, name: str, source: str,
               limits: Limits) -> tuple[tuple[int, int], ...]:
    """For several conversations that do not fit: the pairs (context per conversation, conversations)
    that would: the same conversations at a smaller context, then fewer at the same context."""
    n_seq = request.n_seq or 1

    def fits(n_ctx: int, n: int) -> bool:
        try:
            trial = replace(request, n_ctx=n_ctx, n_seq=n)
            return place(facts, hw, trial, n_ctx=n_ctx, name=name, source=source, limits=limits).verdict != WONT_FIT
        except DoesNotFitError:
            return False

    offers = []
    ctx = next((c for c in reversed(CONTEXT_LADDER) if c < request.n_ctx and fits(c, n_seq)), None)
    if ctx is not None:
        offers.append((ctx, n_seq))
    n = next((k for k in range(n_seq - 1, 0, -1) if fits(request.n_ctx, k)), None)
    if n is not None:
        offers.append((request.n_ctx, n))
    return tuple(offers)


def plan_for_model(header: Any, hardware: Hardware, request: PlanRequest = PlanRequest(), *,
                   think: bool | None = None) -> Plan:
    """The engine's entry point: the Plan for a model file's parsed header."""
    from localcascade.model.facts import facts_from_header

    name = str(header.metadata.get("general.name") or header.source)
    return plan_for_facts(facts_from_header(header), hardware, request, think=think, name=name, source="header")


def larger_context(facts: ModelFacts, hw: Hardware, plan: Plan, *, name: str = "model", source: str = "header",
                   policy: Policy = Policy(), limits: Limits = Limits()) -> Plan | None:
    """The same model at the next context up the ladder (twice or more ``plan``'s), as this machine
    would hold it (any placement; the plan's KV type first, then the smaller ones); None if it cannot."""
    top = facts.n_ctx_train or CONTEXT_LADDER[-1]
    request = PlanRequest(type_k=plan.type_k, type_v=plan.type_v)
    kv_types = (plan.type_k,) + tuple(k for k in policy.kv_types if k != plan.type_k)
    for n_ctx in (c for c in CONTEXT_LADDER if 2 * plan.n_ctx <= c <= top):
        for kv in kv_types:
            bigger = place(facts, hw, replace(request, type_k=kv, type_v=kv), n_ctx=n_ctx, name=name,
                           source=source, limits=limits)
            if bigger.verdict != WONT_FIT:
                return bigger
        return None
    return None
