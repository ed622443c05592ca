"""Memory model vs llama.cpp on the full-size Q4_K_M skeleton (sparse file, real shapes and types).

Loads the skeleton for real on the CPU with mmap (about a minute on 2 cores: the page cache fills
with the file's zero pages), creates contexts from 4K to 1M, and prints llama.cpp's buffer sizes
next to the model's. Run: python benchmarks/fit_accuracy.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import synth  # noqa: E402
from llama_truth import MiB, LoadedModel  # noqa: E402

from localcascade.model.catalog import find_variant  # noqa: E402
from localcascade.model.gguf_header import read_header  # noqa: E402
from localcascade.planning.memory import Placement, estimate  # noqa: E402
from localcascade.model.facts import facts_from_header

CASES = [(4096, True, "f16"), (32768, True, "f16"), (131072, True, "f16"), (262144, True, "q8_0"),
         (1048576, True, "f16"), (1048576, True, "q8_0"), (4096, False, "f16"), (16384, False, "f16")]


def main() -> None:
    types = {t.name: t.type_name for t in find_variant("Q4_K_M").facts.tensors}
    with tempfile.TemporaryDirectory() as tmp:
        path = synth.write_nemotron_h_moe(Path(tmp) / "q4km.gguf", synth.FULL, dtype="bf16", sparse=True,
                                          tensor_types=types)
        facts = facts_from_header(read_header(path))
        model = LoadedModel(path)
        print(f"{'n_ctx':>8} {'FA':>3} {'kv':>5} | {'what':9} {'llama.cpp MiB':>14} {'model MiB':>10} {'error':>8}")
        for n_ctx, fa, kv in CASES:
            truth = model.measure(n_ctx, flash_attn=fa, type_k=kv, type_v=kv)
            full = estimate(facts, Placement(n_ctx=n_ctx, flash_attn=fa, type_k=kv, type_v=kv))
            est = full.ram
            # llama.cpp prints repacked weights twice (mapped file range + CPU_REPACK buffer).
            pairs = [("weights", truth.weights, est.weights + full.repacked_bytes), ("kv", truth.kv, est.kv),
                     ("recurrent", truth.recurrent, est.recurrent), ("compute", truth.compute, est.compute),
                     ("output", truth.output, est.output)]
            pairs.append(("total", sum(p[1] for p in pairs), sum(p[2] for p in pairs)))
            for what, theirs, ours in pairs:
                ours_mib = ours / MiB
                err = (ours_mib - theirs) / theirs * 100 if theirs else 0.0
                print(f"{n_ctx:>8} {'on' if fa else 'off':>3} {kv:>5} | {what:9} {theirs:>14.2f} {ours_mib:>10.2f} {err:>+7.2f}%",
                      flush=True)
        model.close()


if __name__ == "__main__":
    main()
