"""The recommendation policy (policy.py), checked on every shipped hardware profile.

The policy: a context floor that fits thinking (64K; 16K without thinking; the user's --ctx wins),
then the best quality at a usable speed, then the fastest; where nothing is usable, the fastest
that fits. Two alternatives beside it, each a real plan that fits.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from localcascade.model.catalog import load_catalog
from localcascade.errors import DoesNotFitError
from localcascade.hardware.facts import Calibration
from localcascade.hardware.profiles import list_profiles, load_profile
from localcascade.planning.plan import WONT_FIT, PlanRequest
from localcascade.planning.placement import place
from localcascade.planning.policy import KV_TYPES_BY_QUALITY, Policy, plan_for_facts, recommend

CATALOG = load_catalog()
POLICY = Policy()
PROFILES = [p.id for p in list_profiles()]


def at_floor(hw, variant, kv, floor):
    return place(variant.facts, hw, PlanRequest(type_k=kv, type_v=kv), n_ctx=floor, name=variant.quant)


def quality(variant, kv):
    return variant.quality_rank, KV_TYPES_BY_QUALITY.index(kv)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("think", [True, False])
def test_every_profile_gets_the_policys_choice(profile, think):
    hw = load_profile(profile)
    floor = POLICY.floor(think)
    choice = recommend(hw, CATALOG, think=think)
    plan = choice.plan
    fitting = [(v, kv, at_floor(hw, v, kv, floor)) for v in CATALOG for kv in KV_TYPES_BY_QUALITY]
    fitting = [(v, kv, p) for v, kv, p in fitting if p.verdict != WONT_FIT]
    if fitting:
        assert plan.n_ctx >= floor   # the floor holds wherever anything fits at it
    usable = [(v, kv, p) for v, kv, p in fitting if p.tokens_per_s >= POLICY.usable_tokens_per_s]
    if usable:
        assert plan.tokens_per_s >= POLICY.usable_tokens_per_s
        # Never a lower quality than one that fits at the floor at a usable speed.
        best = min(quality(v, kv) for v, kv, _ in usable)
        assert quality(choice.variant, plan.type_k) == best
    elif fitting:
        fastest = max(p.tokens_per_s for _, _, p in fitting)
        assert plan.tokens_per_s == pytest.approx(fastest, rel=1e-6)
        assert any("no plan reaches" in n for n in choice.notes)
    # The alternatives are real plans that fit, and trade what they say.
    assert 1 <= len(choice.alternatives) <= 2 or not fitting
    for alt in choice.alternatives:
        again = place(alt.variant.facts, hw, PlanRequest(type_k=alt.plan.type_k, type_v=alt.plan.type_v),
                      n_ctx=alt.plan.n_ctx, name=alt.variant.quant)
        assert again.verdict == alt.plan.verdict != WONT_FIT
        assert (again.n_gpu_layers, again.n_cpu_moe) == (alt.plan.n_gpu_layers, alt.plan.n_cpu_moe)
        if alt.trade == "faster":
            assert alt.plan.tokens_per_s > plan.tokens_per_s
        elif alt.trade == "longer context":
            assert alt.plan.n_ctx > plan.n_ctx and alt.variant is choice.variant
        else:
            assert alt.trade == "higher quality"
            assert quality(alt.variant, alt.plan.type_k) < quality(choice.variant, plan.type_k)


def test_the_rtx_4090_gets_at_least_64k_when_thinking():
    choice = recommend(load_profile("rtx-4090"), CATALOG)
    assert choice.plan.n_ctx >= 65536
    assert [a.trade for a in choice.alternatives] == ["faster", "longer context"]


def test_the_users_context_wins_and_is_exact():
    hw = load_profile("rtx-4090")
    choice = recommend(hw, CATALOG, PlanRequest(n_ctx=8192))
    assert choice.plan.n_ctx == 8192
    assert all(a.plan.n_ctx == 8192 for a in choice.alternatives)


def test_below_the_floor_only_where_nothing_fits_and_it_says_so():
    small = replace(load_profile("cpu-only"), ram_total_bytes=24 << 30, ram_available_bytes=int(18.9 * (1 << 30)))
    choice = recommend(small, CATALOG)
    assert choice.plan.n_ctx < 65536
    assert any("nothing fits at 64K" in n for n in choice.notes)
    with pytest.raises(DoesNotFitError):
        recommend(replace(small, ram_available_bytes=4 << 30), CATALOG)


def test_a_q8_0_cache_is_chosen_only_when_it_buys_something():
    # Where f16 fits at a usable speed it is kept; q8_0 appears where it fits more or runs faster.
    for profile in PROFILES:
        choice = recommend(load_profile(profile), CATALOG)
        if choice.plan.type_k == "q8_0":
            f16 = at_floor(load_profile(profile), choice.variant, "f16", POLICY.floor(True))
            assert f16.verdict == WONT_FIT or f16.tokens_per_s < POLICY.usable_tokens_per_s


def test_a_calibration_is_an_input_and_the_speeds_say_measured():
    hw = load_profile("cpu-only")
    measured = replace(hw, calibration=Calibration(cpu_scale=0.5, cpu_prompt_flops=50e9, threads=8))
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
