"""`localcascade quantize` against calling llama.cpp's quantizer directly, on the same file.

    python benchmarks/quantize_overhead.py [SRC.gguf] [--to Q4_K_M] [--repeat 2]

Without SRC a ~0.4 GB F16 nemotron_h_moe file is generated (synthetic weights, the
QUANTIZABLE shape scaled up). "direct" is a fresh Python process that imports
llama_cpp and calls llama_model_quantize once - what a script using the bindings
pays. "localcascade" is the whole command: dry run, quantize in a child process,
header and tensor-type check, a CPU load of the output, and registration. Prints
the best of --repeat runs of each and the ratio direct / localcascade (goal >= 0.95),
for wall time and for CPU time (user+sys, children included: steadier than wall time
on a machine other work shares).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

DIRECT = """
import ctypes, sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + sys.argv[3])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)))
"""


def _bench_model(folder: Path) -> Path:
    import synth

    shape = dataclasses.replace(synth.QUANTIZABLE, name="bench", n_embd=1024, ssm_d_inner=1024, ssm_n_heads=16,
                                n_expert=16, expert_ff=1024, shared_expert_ff=1024, head_dim=256)
    return synth.write_nemotron_h_moe(folder / "bench-F16.gguf", shape, dtype="f16")


def _timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("src", nargs="?")
    parser.add_argument("--to", default="Q4_K_M")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        src = Path(args.src) if args.src else _bench_model(folder)
        env = {**os.environ, "LOCALCASCADE_HOME": str(folder / "home")}
        print(f"source {src.name}: {src.stat().st_size / 1024**2:.0f} MiB -> {args.to}")
        direct, ours = [], []
        for _ in range(args.repeat):  # interleaved, so both see the same page cache and load
            out = folder / "direct.gguf"
            direct.append(_timed([sys.executable, "-c", DIRECT, str(src), str(out), args.to], env))
            out.unlink()
            out = folder / "ours.gguf"
            ours.append(_timed([sys.executable, "-m", "localcascade", "quantize", str(src), "--to", args.to,
                                "--out", str(out)], env))
            out.unlink()
        for what, i in (("wall", 0), ("cpu", 1)):
            d, o = [r[i] for r in direct], [r[i] for r in ours]
            print(f"{what:4} direct llama_model_quantize : {min(d):6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in d)})")
            print(f"{what:4} localcascade quantize       : {min(o):6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in o)})")
            print(f"{what:4} ratio direct/localcascade   : {min(d) / min(o):.3f}  (goal >= 0.95)")


if __name__ == "__main__":
    main()
