"""The host sampler: the exact top-k/top-p/min-p/temperature chain without sorting the vocabulary.

Checked against a plain float64 sort-and-cumsum nucleus (slow, obviously right), against llama.cpp's
own top-p sampler on the same logits, and by drawing: the frequencies match the distribution.
"""

from __future__ import annotations

import numpy as np
import pytest

from llama_sampling_truth import llama_cpp_top_p

from localcascade.engine import nucleus


def reference_nucleus(logits: np.ndarray, top_p: float) -> tuple[set[int], float]:
    """The exact nucleus, and how close its running sum came to p at the step before the end
    (a token whose running sum lands within float32 rounding of p may fall either way)."""
    p = np.exp(logits.astype(np.float64) - logits.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    running = np.cumsum(p[order])
    k = int(np.searchsorted(running, top_p, side="left")) + 1
    slack = min(abs(running[k - 1] - top_p), abs(running[k - 2] - top_p) if k > 1 else 1.0)
    return set(order[:k].tolist()), slack


def distributions(seed: int = 0):
    """Logits of every shape a model produces: peaked, flat (random weights), heavy-tailed, small and
    large vocabularies, ties."""
    rng = np.random.default_rng(seed)
    for n in (7, 1000, 5000, 131072, 262144):
        for scale in (0.01, 0.3, 1.0, 3.0, 10.0):
            yield f"normal-{n}-{scale}", (rng.standard_normal(n) * scale).astype(np.float32)
        yield f"student-{n}", (rng.standard_t(2, n) * 2).astype(np.float32)
    ties = np.zeros(131072, dtype=np.float32)
    ties[:3] = 5.0
    yield "ties", ties
    yield "one-hot", np.where(np.arange(131072) == 77, 50.0, -50.0).astype(np.float32)


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95, 0.99])
def test_the_nucleus_is_the_exact_one(top_p):
    for name, logits in distributions():
        ids, weights = nucleus.kept(logits, top_p=top_p)
        expected, slack = reference_nucleus(logits, top_p)
        got = set(ids.tolist())
        if got != expected:
            # Only a token at the boundary, whose running sum is within float32 rounding of p, or
            # tokens whose float32 weights tie at the end (of those, the lowest ids are kept).
            differing = np.array(sorted(got ^ expected))
            weights_there = np.exp(logits[differing])
            tied = len(got) == len(expected) and np.all(weights_there == weights_there[0])
            assert tied or (len(got ^ expected) <= 1 and slack < 1e-5), (name, len(got), len(expected))
        assert np.all(np.diff(ids) > 0)
        assert np.allclose(weights, np.exp(logits[ids].astype(np.float64) - logits.max()), rtol=1e-5)


def test_top_k_and_min_p_keep_what_the_chain_keeps():
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal(50000) * 2).astype(np.float32)
    order = np.argsort(-logits, kind="stable")
    ids, _ = nucleus.kept(logits, top_k=40)
    assert set(ids.tolist()) == set(order[:40].tolist())
    # top-p over the 40 survivors, renormalized among them
    ids, _ = nucleus.kept(logits, top_k=40, top_p=0.5)
    expected, _ = reference_nucleus(logits[order[:40]], 0.5)
    assert set(ids.tolist()) == {int(order[i]) for i in expected}
    # min-p: at least min_p times the most likely token's probability
    ids, _ = nucleus.kept(logits, min_p=0.05)
    assert set(ids.tolist()) == set(np.flatnonzero(np.exp(logits - logits.max()) >= 0.05).tolist())


def test_agrees_with_llama_cpps_top_p():
    # llama.cpp's float32 running sum may end its nucleus a token or (with 12K tokens in it) ~0.3%
    # early; the sets agree otherwise.
    rng = np.random.default_rng(5)
    for scale in (3.0, 5.0, 7.0, 10.0):
        logits = (rng.standard_normal(131072) * scale).astype(np.float32)
        ids, _ = nucleus.kept(logits, top_p=0.95)
        ours, theirs = set(ids.tolist()), set(llama_cpp_top_p(logits, 0.95))
        assert theirs <= ours or ours <= theirs
        assert len(ours ^ theirs) <= max(1, len(ours) // 200)


@pytest.mark.parametrize("n,scale,temperature", [(40, 1.0, 1.0), (40, 1.0, 0.5), (131072, 0.3, 1.0),
                                                  (131072, 0.3, 1.7)])
def test_draws_follow_the_distribution(n, scale, temperature):
    rng = np.random.default_rng(11)
    logits = (rng.standard_normal(n) * scale).astype(np.float32)
    ids, probs = nucleus.distribution(logits, temperature=temperature, top_p=0.9)
    workspace = nucleus.Workspace(n)
    count = 20000 if n < 1000 else 3000   # a large-vocabulary draw costs ~1 ms
    draws = np.array([workspace.sample(logits, rng, temperature=temperature, top_p=0.9) for _ in range(count)])
    assert set(np.unique(draws).tolist()) <= set(ids.tolist())   # nothing outside the nucleus, ever
    # Compare frequencies on groups of ids (a 131K nucleus has too many ids to compare one by one).
    groups = np.array_split(np.arange(ids.size), 8 if n < 1000 else 4)
    position = {int(t): i for i, t in enumerate(ids)}
    counts = np.bincount([position[int(t)] for t in draws], minlength=ids.size)
    for group in groups:
        expected = probs[group].sum()
        observed = counts[group].sum() / draws.size
        assert abs(observed - expected) < 4 * np.sqrt(expected * (1 - expected) / draws.size) + 1e-3


def test_greedy_and_seeds():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal(131072).astype(np.float32)
    workspace = nucleus.Workspace(logits.size)
    assert workspace.sample(logits, rng, temperature=0.0) == int(np.argmax(logits))
    first = [workspace.sample(logits, np.random.default_rng(42), temperature=1.0, top_p=0.95) for _ in range(3)]
    again = [workspace.sample(logits, np.random.default_rng(42), temperature=1.0, top_p=0.95) for _ in range(3)]
    assert first == again


# The native pass (engine/_nucleus.c) against the same references, and the numpy fallback where the
# extension is missing.

native_built = pytest.mark.skipif(nucleus._native is None, reason="the C extension was not built here")


@native_built
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95, 0.99, 1.0])
def test_the_native_nucleus_is_the_exact_one(top_p):
    for name, logits in distributions():
        workspace = nucleus.Workspace(logits.size, native=True)
        ids, p = nucleus.distribution(logits, temperature=1.0, top_p=top_p, workspace=workspace)
        if top_p < 1.0:
            expected, slack = reference_nucleus(logits, top_p)
        else:
            expected, slack = set(range(logits.size)), 1.0
        got = set(ids.tolist())
        if got != expected:
            differing = np.array(sorted(got ^ expected))
            weights_there = np.exp(logits[differing])
            tied = len(got) == len(expected) and np.all(weights_there == weights_there[0])
            assert tied or (len(got ^ expected) <= 1 and slack < 1e-5), (name, len(got), len(expected))
        exact = np.exp(logits[ids].astype(np.float64) - logits.max())
        assert np.abs(p - exact / exact.sum()).sum() < 1e-5, name


@native_built
def test_native_ties_keep_the_lowest_ids_the_nucleus_needs():
    logits = np.zeros(131072, dtype=np.float32)   # all tied: top-p 0.5 keeps exactly the first half
    workspace = nucleus.Workspace(logits.size, native=True)
    ids, _ = nucleus.distribution(logits, temperature=1.0, top_p=0.5, workspace=workspace)
    assert ids.tolist() == list(range(65536))
    rng = np.random.default_rng(0)
    assert all(workspace.sample(logits, rng, temperature=1.0, top_p=0.5) < 65536 for _ in range(200))


@native_built
@pytest.mark.parametrize("chain", [dict(temperature=0.7, top_p=0.9), dict(temperature=1.5, top_p=0.95),
                                   dict(temperature=1.0, min_p=0.05), dict(temperature=0.8, top_k=40, top_p=0.9),
                                   dict(temperature=1.0, top_p=0.9, min_p=0.2)])
def test_native_and_numpy_sample_the_same_distribution(chain):
    rng = np.random.default_rng(9)
    for scale in (0.3, 3.0):
        logits = (rng.standard_normal(131072) * scale).astype(np.float32)
        ids_n, p_n = nucleus.distribution(logits, workspace=nucleus.Workspace(logits.size, native=True), **chain)
        ids_p, p_p = nucleus.distribution(logits, workspace=nucleus.Workspace(logits.size, native=False), **chain)
        a, b = dict(zip(ids_n.tolist(), p_n)), dict(zip(ids_p.tolist(), p_p))
        assert 0.5 * sum(abs(a.get(t, 0.0) - b.get(t, 0.0)) for t in set(a) | set(b)) < 1e-5


@pytest.mark.parametrize("native", [pytest.param(True, marks=native_built), False])
@pytest.mark.parametrize("n,scale,temperature", [(40, 1.0, 0.5), (131072, 0.3, 1.0), (131072, 0.3, 1.7)])
def test_both_samplers_draw_the_distribution(native, n, scale, temperature):
    rng = np.random.default_rng(12)
    logits = (rng.standard_normal(n) * scale).astype(np.float32)
    workspace = nucleus.Workspace(n, native=native)
    ids, probs = nucleus.distribution(logits, temperature=temperature, top_p=0.9)
    count = 20000 if n < 1000 else 3000
    draws = np.array([workspace.sample(logits, rng, temperature=temperature, top_p=0.9) for _ in range(count)])
    assert set(np.unique(draws).tolist()) <= set(ids.tolist())
    position = {int(t): i for i, t in enumerate(ids)}
    counts = np.bincount([position[int(t)] for t in draws], minlength=ids.size)
    for group in np.array_split(np.arange(ids.size), 8 if n < 1000 else 4):
        expected = probs[group].sum()
        observed = counts[group].sum() / draws.size
        assert abs(observed - expected) < 4 * np.sqrt(expected * (1 - expected) / draws.size) + 1e-3


@native_built
def test_the_native_pass_refuses_rows_that_are_not_float32():
    from localcascade.engine import _nucleus

    row = np.zeros(100, dtype=np.float32)
    for logits, weights in ((row.astype(np.float64), row), (row, np.zeros(10, dtype=np.float32)),
                            (row[:0], row), (row, row.astype(np.float16))):
        with pytest.raises(ValueError):
            _nucleus.sample(logits, weights, 1.0, 0.9, 0.0, 0.5, -1)
    with pytest.raises(ValueError):
        _nucleus.sample(row, row.copy(), 0.0, 0.9, 0.0, 0.5, -1)


def test_without_the_extension_the_numpy_sampler_runs(tmp_path):
    # An installation where the C extension did not build (no compiler): the import fails, and the
    # engine samples through numpy.
    import subprocess
    import sys

    script = (
        "import sys; sys.modules['localcascade.engine._nucleus'] = None\n"
        "import numpy as np\n"
        "from localcascade.engine import nucleus\n"
        "w = nucleus.Workspace(1000)\n"
        "assert nucleus._native is None and not w.native\n"
        "logits = np.linspace(0, 5, 1000, dtype=np.float32)\n"
        "t = w.sample(logits, np.random.default_rng(0), temperature=1.0, top_p=0.5)\n"
        "assert logits[t] >= 4.0, t\n"
        "print('numpy fallback ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "numpy fallback ok" in done.stdout


@native_built
def test_the_native_pass_survives_nan_logits():
    # A broken model file can make llama.cpp return NaN logits: a NaN weighs nothing (never drawn,
    # never indexes memory), and a row of nothing but NaN is a clear error, not a crash.
    from localcascade.errors import EngineError

    rng = np.random.default_rng(4)
    logits = rng.standard_normal(131072).astype(np.float32)
    logits[::3] = np.nan
    logits[0] = -np.nan   # the sign bit set, too
    workspace = nucleus.Workspace(logits.size, native=True)
    draws = [workspace.sample(logits, rng, temperature=1.0, top_p=0.9) for _ in range(50)]
    assert all(np.isfinite(logits[t]) for t in draws)
    assert np.isfinite(logits[workspace.verify(logits, rng, 0, temperature=1.0, top_p=0.9)])
    with pytest.raises(EngineError, match="no finite value"):
        workspace.sample(np.full(1000, np.nan, dtype=np.float32), rng, temperature=1.0, top_p=0.9)
    with pytest.raises(EngineError, match="no finite value"):
        workspace.verify(np.full(1000, np.nan, dtype=np.float32), rng, 3, temperature=0.7, top_p=0.9)
