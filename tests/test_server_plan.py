"""Planning for `serve --parallel N`: N conversations' KV cache and Mamba state, refusals that say what fits."""

import re

import pytest

from localcascade.cli.wording import error_line, reason_words
from localcascade.model.catalog import find_variant
from localcascade.errors import DoesNotFitError
from localcascade.hardware.facts import Hardware, LlamaCppBuild
from localcascade.planning.memory import GiB
from localcascade.planning.plan import PlanRequest
from localcascade.planning.placement import place
from localcascade.planning.policy import plan_for_facts
from localcascade.units import parse_tokens

IQ4 = find_variant("IQ4_XS").facts


def cpu_machine(ram_gib):
    return Hardware(gpus=(), ram_total_bytes=int(ram_gib * GiB), ram_available_bytes=int(ram_gib * GiB),
                    ram_bandwidth_bytes_per_s=70e9, llama_cpp=LlamaCppBuild(gpu_offload=False))


def test_each_conversation_gets_its_own_kv_cache_and_recurrent_state():
    one = place(IQ4, cpu_machine(256), PlanRequest(), n_ctx=32768)
    four = place(IQ4, cpu_machine(256), PlanRequest(n_seq=4), n_ctx=32768)
    assert four.n_seq == 4 and four.n_ctx == 4 * one.n_ctx      # llama.cpp splits n_ctx over the sequences
    assert four.ram.kv == 4 * one.ram.kv
    assert four.ram.recurrent == 4 * one.ram.recurrent
    # The real model's Mamba state: ~47.6 MiB per sequence (23 blocks, f32).
    assert one.ram.recurrent == pytest.approx(47.6 * 2**20, rel=0.01)
    assert four.ram.weights == one.ram.weights
    assert (four.reasons[0].n_ctx, four.reasons[0].n_seq) == (4 * one.n_ctx, 4)
    assert "32K x 4 conversations" in reason_words(four.reasons[0])


def test_a_pair_that_does_not_fit_is_refused_with_pairs_that_do():
    hw = cpu_machine(32)
    with pytest.raises(DoesNotFitError) as caught:
        plan_for_facts(IQ4, hw, PlanRequest(n_ctx=1048576, n_seq=4))
    message = error_line(caught.value)
    assert "1M x 4 conversations" in message and "what fits:" in message
    offers = re.findall(r"--parallel (\d+) --ctx (\S+)", message)
    assert len(offers) == 2 == len(caught.value.offers)
    for n, ctx in offers:   # every pair offered really fits
        plan_for_facts(IQ4, hw, PlanRequest(n_ctx=parse_tokens(ctx.rstrip(",;")), n_seq=int(n)))


def test_without_a_context_the_largest_that_fits_every_conversation_is_chosen():
    hw = cpu_machine(32)
    one = plan_for_facts(IQ4, hw, PlanRequest())
    eight = plan_for_facts(IQ4, hw, PlanRequest(n_seq=8))
    assert eight.n_ctx // 8 < one.n_ctx
    assert eight.ram_bytes <= 31 * GiB


@pytest.mark.parametrize("n_seq", [1, 2, 4])
def test_per_sequence_kv_and_recurrent_state_match_llama_cpp(tiny_model, n_seq):
    """What the planner prices for N conversations is what llama.cpp allocates for n_seq_max = N."""
    from llama_truth import MiB, Truth, _parse

    from localcascade.engine.session import Engine
    from localcascade.model.gguf_header import read_header
    from localcascade.planning.memory import Placement, estimate
    from localcascade.model.facts import facts_from_header
    from localcascade.planning.plan import Plan

    per_conversation = 2048
    with Engine.load(tiny_model, Plan(model="tiny", n_ctx=per_conversation * n_seq, n_seq=n_seq,
                                      n_batch=512, n_ubatch=512)) as engine:
        assert engine.n_ctx_seq == per_conversation
        truth = Truth()
        _parse("".join(engine.load_log), truth, {"KV", "RS", "output"})
    est = estimate(facts_from_header(read_header(tiny_model)),
                   Placement(n_ctx=per_conversation * n_seq, n_seq=n_seq, n_batch=512, n_ubatch=512))
    assert round(est.ram.kv / MiB, 2) == pytest.approx(truth.kv, abs=0.006)
    assert round(est.ram.recurrent / MiB, 2) == pytest.approx(truth.recurrent, abs=0.006)
    assert round(est.ram.output / MiB, 2) == pytest.approx(truth.output, abs=0.006)
