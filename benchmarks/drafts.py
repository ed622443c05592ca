"""What verifying drafts costs, and what n-gram drafting gains where text repeats and where it does not.

    python benchmarks/drafts.py verify [--models skeleton,tiny] [--k 1,2,4,8] [--reps 3] [--ngl 99] [--cache DIR]
    python benchmarks/drafts.py gain [--models gemma] [--tokens 200] [--rounds 3]

``verify``: one step of the decode loop (engine/decoder.py) that evaluates a reply's last token and
k draft tokens in one llama_decode (logits for every position) and cuts the rejected drafts back
(KV by seq_rm, the Mamba state by the n_rs_seq snapshots). It times that step for each k against
a plain step (k = 0, one token) after a 256-token prompt, every draft rejected at its first token
(the costliest cut), and prints the ratio. A MoE reads the union of the experts its tokens route
to, so k+1 tokens cost more than one; with live routing (tests/synth.py) each token picks its own
experts as in the real model. From the ratio it predicts the speedup at a per-token acceptance a:
a step then yields (1 - a^(k+1)) / (1 - a) tokens. Models: the full-size Cascade-2 IQ4_XS sparse
skeleton with live routing (18 GB apparent, ~0.25 GB on disk, written to the side-by-side
benchmark's cache) and a tiny nemotron_h_moe with the real vocabulary.

``gain``: `localcascade ask --json` itself, `--draft none` against `--draft ngram`, alternating
process by process, greedy, on prompts where text repeats (repeat a pasted paragraph with one
phrase changed; rename a variable in a pasted function) and where it does not (free prose); the
generation tokens/s `ask` reports, their ratio, whether the answers are the same, and what was
drafted and kept. Each process loads the model once; the figures are medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
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


CODE_PROMPT = """Rename the variable `total` to `running_sum` in this function and change nothing else.

def mean(values):
    total = 0
    count = 0
    for value in values:
        total += value
        count += 1
    if count == 0:
        return 0.0
    return total / count
"""
# (label, prompt, temperature): greedy, where the answers must be the same, and the model card's
# sampling on free prose, where repeats are rare and drafting must cost nothing.
PROMPTS = (("copy", COPY_PROMPT, 0.0), ("code edit", CODE_PROMPT, 0.0), ("prose", PROSE_PROMPT, 0.0),
           ("prose, t=1", PROSE_PROMPT, 1.0))


def load(path: Path, k: int, ngl: int = 0):
    from localcascade.engine.session import Engine
    from localcascade.planning.plan import Plan

    plan = Plan(model=path.name, n_ctx=4096, n_batch=512, n_ubatch=512, n_rs_seq=k, n_gpu_layers=ngl)
    return Engine.load(path, plan, for_chat=False)


class Wrong:
    """A drafter whose every draft is wrong from its first token (the costliest rollback)."""

    def __init__(self, n_vocab: int) -> None:
        self.history: list[int] = []
        self.n_vocab = n_vocab
        self.k = 0
        self.matched = 4   # every draft counts as a long match (probes too)

    def extend(self, tokens) -> None:
        self.history.extend(tokens)

    def draft(self, limit: int) -> list[int]:
        return [(self.history[-1] + 1 + j) % self.n_vocab for j in range(min(self.k, limit))]


def verify_costs(path: Path, ks: list[int], reps: int, ngl: int = 0) -> dict[int, float]:
    """Median ms of one decode-loop step verifying k drafts (all rejected), per k (0: a plain step)."""
    from localcascade.engine import drafts
    from localcascade.engine.session import GenerationOptions

    rng = np.random.default_rng(0)
    with load(path, max(ks), ngl) as engine:
        n_vocab = engine.vocab.n_tokens
        prompt = [int(t) for t in rng.integers(100, n_vocab, 256)]   # also touches every expert once
        decoder = engine.decoder
        turn = decoder.start(0, prompt, GenerationOptions(think=False, temperature=0.0), lambda event: None,
                             calls="none")
        drafter = turn.drafter = Wrong(n_vocab)
        turn.acceptance = drafts.Acceptance(margin=0.0, probe_tokens=max(ks))   # draft every step
        while turn.first_logits is None:
            decoder.step()                                 # the prompt
        decoder.step()                                     # warm-up: first touch of the weights
        costs: dict[int, list[float]] = {k: [] for k in [0, *ks]}
        for _ in range(reps):
            for k in costs:
                drafter.k = k
                start = time.perf_counter()
                decoder.step()
                costs[k].append((time.perf_counter() - start) * 1e3)
        turn.stop()
        decoder.step()
    return {k: statistics.median(v) for k, v in costs.items()}


def run_verify(args) -> None:
    from side_by_side import prepare_model

    cache = args.cache or Path(tempfile.gettempdir()) / "localcascade-bench"
    ks = [int(k) for k in args.k.split(",")]
    for name in args.models.split(","):
        model = prepare_model(name, cache)
        costs = verify_costs(model.path, ks, args.reps, args.ngl)
        where = f", {args.ngl} layers on the GPU" if args.ngl else ""
        print(f"\n{model.label}: one step, ms (median of {args.reps}){where}; every draft rejected and rolled back")
        print(f"  {'k':>2} {'ms':>9} {'x plain':>8} {'cost/draft':>10}   predicted speedup at acceptance "
              "0.5 / 0.7 / 0.9")
        for k, ms in costs.items():
            ratio = ms / costs[0]
            per = (ratio - 1) / k if k else 0.0
            gains = [(1 - a ** (k + 1)) / (1 - a) / ratio for a in (0.5, 0.7, 0.9)]
            print(f"  {k:>2} {ms:9.1f} {ratio:8.2f} {per:10.3f}   " + " / ".join(f"{g:.2f}" for g in gains))


def ask(model, text: str, draft: str, tokens: int, temperature: float, seed: int) -> dict:
    """One `localcascade ask --json` process."""
    command = [sys.executable, "-m", "localcascade", "ask", "--model", str(model.path), "--json", "--quiet",
               "--no-think", "--temp", str(temperature), "--seed", str(seed), "--max-tokens", str(tokens),
               "--draft", draft, text]
    if model.chat_template is not None:
        command[4:4] = ["--chat-template", str(model.chat_template)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 3):   # 3: stopped at --max-tokens
        raise SystemExit(f"ask failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return json.loads(done.stdout)


def _first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def run_gain(args) -> None:
    from side_by_side import prepare_model

    cache = Path(tempfile.gettempdir()) / "localcascade-bench"
    for name in args.models.split(","):
        model = prepare_model(name, cache)
        print(f"\n{model.label}: {args.tokens} tokens at most, median of {args.rounds} processes each")
        print(f"  {'prompt':10s} {'none t/s':>9} {'ngram t/s':>9} {'ratio':>6}  same answer  drafted / kept")
        for label, text, temperature in PROMPTS:
            runs: dict[str, list[dict]] = {"none": [], "ngram": []}
            for round_ in range(args.rounds):
                for draft in runs:
                    runs[draft].append(ask(model, text, draft, args.tokens, temperature, seed=round_))
            speed = {d: statistics.median(r["timings"]["generation_tokens_per_s"] for r in rs) for d, rs in runs.items()}
            # Sampled, drafting draws its random numbers differently: the same distribution, other tokens.
            reference = runs["none"][0]["answer"]
            answers = [r["answer"] for rs in runs.values() for r in rs]
            differs = min((_first_difference(a, reference) for a in answers if a != reference), default=None)
            usage = runs["ngram"][0]["usage"]
            print(f"  {label:10s} {speed['none']:9.1f} {speed['ngram']:9.1f} {speed['ngram'] / speed['none']:6.2f}  "
                  f"{'(sampled)' if temperature > 0 else 'yes' if differs is None else f'from char {differs} of {len(reference)}':11s}  {usage['drafted_tokens']} / {usage['accepted_draft_tokens']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    verify = sub.add_parser("verify")
    verify.add_argument("--models", default="skeleton,tiny")
    verify.add_argument("--k", default="1,2,4,8")
    verify.add_argument("--reps", type=int, default=3)
    verify.add_argument("--ngl", type=int, default=0, help="layers on the GPU (99: all)")
    verify.add_argument("--cache", type=Path, help="the side-by-side benchmark's cache folder (its models)")
    gain = sub.add_parser("gain")
    gain.add_argument("--models", default="gemma")
    gain.add_argument("--tokens", type=int, default=200)
    gain.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    (run_verify if args.what == "verify" else run_gain)(args)


if __name__ == "__main__":
    main()
