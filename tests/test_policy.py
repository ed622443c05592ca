"""The recommendation policy (policy.py), checked on every shipped hardware profile.

The policy: a context floor that fits thinking (64K; 16K without thinking; the user's --ctx wins),
then the machine's rule: with a discrete GPU, fully on the GPU first (the best quality that is),
else the fewest expert blocks in system RAM, then quality; with unified memory, fully on the GPU
first, then the best quality at a usable speed; CPU only, the best quality at a usable speed, else
the fastest. --prefer quality|speed|context picks by another rule. Alternatives beside it, each a
real plan that fits and trades what it says. The expectations below are computed from the planner's
own placements, independently of policy.py's code.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from localcascade.cli.wording import reason_words
from localcascade.model.catalog import load_catalog
from localcascade.errors import DoesNotFitError, UsageError
from localcascade.hardware.facts import Calibration
from localcascade.hardware.profiles import list_profiles, load_profile
from localcascade.planning.plan import VERDICTS, WONT_FIT, PlanRequest
from localcascade.planning.placement import place
from localcascade.planning.policy import KV_TYPES_BY_QUALITY, Policy, plan_for_facts, recommend

CATALOG = load_catalog()
POLICY = Policy()
PROFILES = [p.id for p in list_profiles()]


def at_floor(hw, variant, kv, floor):
    return place(variant.facts, hw, PlanRequest(type_k=kv, type_v=kv), n_ctx=floor, name=variant.quant)


def quality(variant, kv):
    return variant.quality_rank, KV_TYPES_BY_QUALITY.index(kv)


def ram_share(plan):
    """How much of the model stays in system RAM, least first."""
    return VERDICTS.index(plan.verdict), plan.moe_blocks_in_ram, -plan.n_gpu_layers


def fitting_at(hw, floor):
    found = [(v, kv, at_floor(hw, v, kv, floor)) for v in CATALOG for kv in KV_TYPES_BY_QUALITY]
    return [(v, kv, p) for v, kv, p in found if p.verdict != WONT_FIT]


def expected_rule(hw):
    if not hw.gpus:
        return "cpu-only"
    return "unified-memory" if any(g.unified_memory for g in hw.gpus) else "full-gpu-first"


def check_quality_rule(choice, fitting):
    """The best quality at a usable speed; where nothing is usable, the fastest."""
    usable = [(v, kv, p) for v, kv, p in fitting if p.tokens_per_s >= POLICY.usable_tokens_per_s]
    if usable:
        assert choice.plan.tokens_per_s >= POLICY.usable_tokens_per_s
        assert quality(choice.variant, choice.plan.type_k) == min(quality(v, kv) for v, kv, _ in usable)
    else:
        assert choice.plan.tokens_per_s == pytest.approx(max(p.tokens_per_s for *_, p in fitting), rel=1e-6)
        assert any("no plan reaches" in reason_words(n) for n in choice.notes)


def check_alternatives(hw, choice):
    """Each alternative is a real plan that fits, and trades what it says."""
    plan = choice.plan
    assert len({a.trade for a in choice.alternatives}) == len(choice.alternatives) <= 3
    for alt in choice.alternatives:
        again = place(alt.variant.facts, hw, PlanRequest(type_k=alt.plan.type_k, type_v=alt.plan.type_v),
                      n_ctx=alt.plan.n_ctx, name=alt.variant.quant)
        assert again.verdict == alt.plan.verdict != WONT_FIT
        assert (again.n_gpu_layers, again.n_cpu_moe) == (alt.plan.n_gpu_layers, alt.plan.n_cpu_moe)
        if alt.trade == "faster":
            assert alt.plan.tokens_per_s > 1.15 * plan.tokens_per_s
        elif alt.trade == "longer context":
            assert alt.plan.n_ctx > plan.n_ctx and alt.variant is choice.variant
        else:
            assert alt.trade == "higher quality"
            assert quality(alt.variant, alt.plan.type_k) < quality(choice.variant, plan.type_k)
            assert alt.plan.tokens_per_s >= POLICY.usable_tokens_per_s


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("think", [True, False])
def test_every_profile_gets_its_machines_rule(profile, think):
    hw = load_profile(profile)
    floor = POLICY.floor(think)
    choice = recommend(hw, CATALOG, think=think)
    plan = choice.plan
    fitting = fitting_at(hw, floor)
    assert fitting, f"{profile}: nothing fits at the floor"   # every shipped profile holds a variant
    assert plan.n_ctx >= floor
    assert choice.rule == expected_rule(hw)
    full = [(v, kv, p) for v, kv, p in fitting if p.verdict == "full_gpu"]
    if choice.rule == "full-gpu-first":
        if full:
            # (b) fully on the GPU, and no full-GPU plan of better quality.
            assert plan.verdict == "full_gpu"
            assert quality(choice.variant, plan.type_k) == min(quality(v, kv) for v, kv, _ in full)
        else:
            # (c) the least of the model in system RAM, then the best quality among those.
            least = min(ram_share(p) for *_, p in fitting)
            at_floor_choice = at_floor(hw, choice.variant, plan.type_k, floor)
            assert ram_share(at_floor_choice) == least
            assert quality(choice.variant, plan.type_k) == min(
                quality(v, kv) for v, kv, p in fitting if ram_share(p) == least)
        # (d) the chosen placement is kept up to the largest context that holds it.
        assert (plan.n_gpu_layers, plan.moe_blocks_in_ram) == (
            at_floor(hw, choice.variant, plan.type_k, floor).n_gpu_layers,
            at_floor(hw, choice.variant, plan.type_k, floor).moe_blocks_in_ram)
    elif choice.rule == "unified-memory":
        check_quality_rule(choice, full or fitting)
        if full:
            assert plan.verdict == "full_gpu"
    else:
        check_quality_rule(choice, fitting)
    check_alternatives(hw, choice)


@pytest.mark.parametrize("profile", PROFILES)
def test_prefer_quality_is_the_earlier_rule_and_speed_the_fastest(profile):
    hw = load_profile(profile)
    fitting = fitting_at(hw, POLICY.floor(True))
    best = recommend(hw, CATALOG, PlanRequest(prefer="quality"))
    assert best.rule == "quality"
    check_quality_rule(best, fitting)
    check_alternatives(hw, best)
    fastest = recommend(hw, CATALOG, PlanRequest(prefer="speed"))
    assert fastest.plan.tokens_per_s == pytest.approx(max(p.tokens_per_s for *_, p in fitting), rel=1e-6)
    assert not any(a.trade == "faster" for a in fastest.alternatives)
    default = recommend(hw, CATALOG)
    # `--prefer speed` is never slower than the machine's rule.
    assert fastest.plan.tokens_per_s >= default.plan.tokens_per_s * (1 - 1e-9)


@pytest.mark.parametrize("profile", PROFILES)
def test_prefer_context_takes_the_longest_context_that_fits(profile):
    hw = load_profile(profile)
    choice = recommend(hw, CATALOG, PlanRequest(prefer="context"))
    trained = max(v.facts.n_ctx_train for v in CATALOG)
    longer = [c for c in (2 ** k * 1024 for k in range(2, 11)) if choice.plan.n_ctx < c <= trained]
    # Nothing fits at any larger context of the ladder.
    for n_ctx in longer[:1]:
        assert not fitting_at(hw, n_ctx)
    assert not any(a.trade == "longer context" for a in choice.alternatives)


def test_an_unknown_preference_is_refused_in_words():
    with pytest.raises(UsageError, match="^the preference takes quality, speed, context"):
        recommend(load_profile("rtx-4090"), CATALOG, PlanRequest(prefer="fast"))


def test_the_rtx_4090_runs_fully_on_the_card_at_64k_or_more_with_what_else_it_could_do():
    choice = recommend(load_profile("rtx-4090"), CATALOG)
    assert choice.plan.verdict == "full_gpu" and choice.plan.n_ctx >= 65536
    assert [a.trade for a in choice.alternatives] == ["higher quality", "longer context"]
    higher = choice.alternatives[0]
    assert higher.plan.verdict == "experts_in_ram" and higher.plan.moe_blocks_in_ram > 0


def test_a_16gb_card_keeps_the_fewest_expert_blocks_in_ram():
    choice = recommend(load_profile("rtx-4080"), CATALOG)
    assert choice.variant.quant == "IQ4_XS" and choice.plan.verdict == "experts_in_ram"
    q8 = place(next(v for v in CATALOG if v.quant == "Q8_0").facts, load_profile("rtx-4080"), PlanRequest(),
               n_ctx=65536, name="Q8_0")
    assert choice.plan.moe_blocks_in_ram < q8.moe_blocks_in_ram


def test_the_users_context_wins_and_is_exact():
    hw = load_profile("rtx-4090")
    choice = recommend(hw, CATALOG, PlanRequest(n_ctx=8192))
    assert choice.plan.n_ctx == 8192
    assert all(a.plan.n_ctx == 8192 for a in choice.alternatives)


def test_below_the_floor_only_where_nothing_fits_and_it_says_so():
    small = replace(load_profile("cpu-only"), ram_total_bytes=24 << 30, ram_available_bytes=int(18.9 * (1 << 30)))
    choice = recommend(small, CATALOG)
    assert choice.plan.n_ctx < 65536
    [lowered] = [n for n in choice.notes if n.kind == "floor_lowered"]
    assert lowered.floor == 65536 and lowered.n_ctx <= choice.plan.n_ctx < 65536
    assert reason_words(lowered).startswith("nothing fits at 64K (the floor for a thinking chat): ")
    with pytest.raises(DoesNotFitError):
        recommend(replace(small, ram_available_bytes=4 << 30), CATALOG)


def test_a_q8_0_cache_is_chosen_only_when_it_buys_something():
    # Where f16 holds the same placement at the floor it is kept; q8_0 appears where it keeps less in RAM.
    for profile in PROFILES:
        hw = load_profile(profile)
        choice = recommend(hw, CATALOG)
        if choice.plan.type_k == "q8_0":
            f16 = at_floor(hw, choice.variant, "f16", POLICY.floor(True))
            q8 = at_floor(hw, choice.variant, "q8_0", POLICY.floor(True))
            assert f16.verdict == WONT_FIT or ram_share(f16) > ram_share(q8) or choice.rule != "full-gpu-first"


def test_a_calibration_is_an_input_and_the_speeds_say_measured():
    hw = load_profile("cpu-only")
    measured = replace(hw, calibration=Calibration(cpu_scale=0.5, cpu_prompt_flops=50e9, threads=8,
                                                                cpu_bytes_per_token=2e9))
    slow = recommend(measured, CATALOG)
    assert slow.plan.speed_measured
    assert slow.plan.tokens_per_s == pytest.approx(recommend(hw, CATALOG).plan.tokens_per_s * 0.5, rel=0.01)


def test_a_single_model_file_gets_the_floor_too():
    q4 = next(v for v in CATALOG if v.quant == "Q4_K_M")
    plan = plan_for_facts(q4.facts, load_profile("rtx-4090"), name="Q4_K_M")
    assert plan.n_ctx >= 65536
    assert plan_for_facts(q4.facts, load_profile("rtx-4090"), think=False, name="Q4_K_M").n_ctx >= 16384


def test_the_full_context_warning_says_what_a_larger_plan_costs_and_whether_it_fits():
    from localcascade.planning.policy import larger_context
    from localcascade.repl.render import context_warning

    hw = load_profile("rtx-4090")
    q4 = next(v for v in CATALOG if v.quant == "Q4_K_M")
    plan = place(q4.facts, hw, PlanRequest(), n_ctx=65536, name="Q4_K_M")
    bigger = larger_context(q4.facts, hw, plan, name="Q4_K_M")
    assert bigger is not None and bigger.n_ctx == 131072 and bigger.verdict != WONT_FIT
    warning = context_warning(60000, 65536, bigger)
    assert "--ctx 128K: this machine holds that at 128K" in warning and "MoE block" in warning
    assert context_warning(1000, 65536, bigger) is None
    tiny = replace(hw, gpus=(), ram_available_bytes=int(18.9 * (1 << 30)))
    iq4 = next(v for v in CATALOG if v.quant == "IQ4_XS")
    small = place(iq4.facts, tiny, PlanRequest(type_k="q8_0", type_v="q8_0"), n_ctx=32768, name="IQ4_XS")
    assert larger_context(iq4.facts, tiny, small, name="IQ4_XS") is None
    assert "holds no larger context" in context_warning(30000, 32768, False)
