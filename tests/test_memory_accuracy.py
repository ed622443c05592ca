"""The memory model against llama.cpp's own buffer sizes on the tiny nemotron_h_moe model (real CPU loads).

The tiny model's heads (16 wide) are narrower than a q8_0/q4_0 block, so llama.cpp refuses
quantized KV for it; quantized KV sizes are covered by tests/test_memory.py and the benchmark.
"""

import pytest

from llama_truth import MiB, LoadedModel
from localcascade.model.gguf_header import read_header
from localcascade.planning.memory import Placement, estimate
from localcascade.model.facts import facts_from_header

CASES = [  # n_ctx, flash_attn, type_k, type_v, n_ubatch
    (512, True, "f16", "f16", 512),
    (4096, True, "f16", "f16", 512),
    (16384, True, "f16", "f16", 512),
    (4096, True, "f16", "f16", 256),
    (4096, False, "f16", "f16", 512),
    (8192, False, "f32", "f32", 512),
    (3000, True, "f16", "f16", 512),  # padded to 3072
]


@pytest.fixture(scope="module")
def loaded(tiny_model):
    model = LoadedModel(tiny_model)
    yield model, facts_from_header(read_header(tiny_model))
    model.close()


@pytest.mark.parametrize("n_ctx,fa,tk,tv,ub", CASES)
def test_tiny_model_buffers_match_llama_cpp(loaded, n_ctx, fa, tk, tv, ub):
    model, facts = loaded
    truth = model.measure(n_ctx, flash_attn=fa, type_k=tk, type_v=tv, n_ubatch=ub)
    est = estimate(facts, Placement(n_ctx=n_ctx, flash_attn=fa, type_k=tk, type_v=tv, n_ubatch=ub))
    # llama.cpp prints MiB with two decimals: "exact" means equal at that precision.
    assert round(est.ram.weights / MiB, 2) == pytest.approx(truth.weights, abs=0.006)
    assert round(est.ram.kv / MiB, 2) == pytest.approx(truth.kv, abs=0.006)
    assert round(est.ram.recurrent / MiB, 2) == pytest.approx(truth.recurrent, abs=0.006)
    assert round(est.ram.output / MiB, 2) == pytest.approx(truth.output, abs=0.006)
    assert est.ram.compute / MiB == pytest.approx(truth.compute, rel=0.05)
    ours = (est.ram.total - est.ram.overhead) / MiB
    theirs = truth.weights + truth.kv + truth.recurrent + truth.compute + truth.output
    assert abs(ours - theirs) <= max(0.01 * theirs, 64)


@pytest.mark.parametrize("n_rs_seq", [0, 4, 8])
def test_recurrent_snapshots_for_drafts_match_llama_cpp(loaded, n_rs_seq):
    # Rolling back a rejected draft needs n_rs_seq snapshots of every recurrent layer's state.
    model, facts = loaded
    truth = model.measure(4096, n_rs_seq=n_rs_seq)
    est = estimate(facts, Placement(n_ctx=4096, n_rs_seq=n_rs_seq))
    assert round(est.ram.recurrent / MiB, 2) == pytest.approx(truth.recurrent, abs=0.006)
    assert est.ram.recurrent == estimate(facts, Placement(n_ctx=4096)).ram.recurrent * (1 + n_rs_seq)
