"""The GPU side of the memory model, measured: run once on a machine with an NVIDIA GPU and a CUDA build.

The CPU accuracy check (fit_accuracy.py) cannot see what llama.cpp allocates on a GPU, nor the CUDA
context and pools the memory model only assumes (0.45 GiB per GPU). This script writes the full-size
Q4_K_M skeleton (sparse: no disk used), loads it through the engine's own loader with every layer on
the GPU, with and without expert blocks kept in RAM, at several contexts, and prints per device:
llama.cpp's buffer sizes next to the model's, and the VRAM NVML sees in use beyond those buffers.

    python benchmarks/gpu_check.py                      # 4K, 128K, 1M x n_cpu_moe 0 and 18
    python benchmarks/gpu_check.py --contexts 4K 256K --n-cpu-moe 0 --json gpu.json

On a CPU-only build it still runs (every buffer lands on the CPU) and says so.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import synth  # noqa: E402

from localcascade.model.catalog import find_variant  # noqa: E402
from localcascade.engine import loader  # noqa: E402
from localcascade.model.gguf_header import read_header  # noqa: E402
from localcascade.planning.memory import MiB, Placement, estimate  # noqa: E402
from localcascade.model.facts import facts_from_header
from localcascade.planning.plan import Plan  # noqa: E402
from localcascade.units import parse_tokens  # noqa: E402

_BUF = re.compile(r"(\S+)\s+(model|KV|RS|compute|output) buffer size =\s+([\d.]+) MiB")
_FIELD = {"model": "weights", "KV": "kv", "RS": "recurrent", "compute": "compute", "output": "output"}


def printed_buffers(log: list[str]) -> dict[str, dict[str, float]]:
    """{"gpu"|"ram": {component: MiB}} from llama.cpp's "<buffer> <kind> buffer size = X MiB" lines."""
    out = {"gpu": {}, "ram": {}}
    for buffer, kind, mib in _BUF.findall("".join(log)):
        # CUDA0, CUDA1... are device memory; CUDA_Host, CPU, CPU_Mapped, CPU_REPACK are host memory.
        side = "gpu" if re.fullmatch(r"CUDA\d+|Metal|ROCm\d+|Vulkan\d+", buffer) else "ram"
        out[side][_FIELD[kind]] = out[side].get(_FIELD[kind], 0.0) + float(mib)
    return out


def vram_used() -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return sum(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used
                   for i in range(pynvml.nvmlDeviceGetCount()))
    except Exception:  # no driver: the script still compares buffers
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", nargs="+", default=["4K", "128K", "1M"])
    parser.add_argument("--n-cpu-moe", nargs="+", type=int, default=[0, 18])
    parser.add_argument("--json", type=Path, help="also write the rows here (rewritten after every load)")
    args = parser.parse_args()

    import llama_cpp

    print(f"llama-cpp-python {llama_cpp.__version__}, GPU offload: {bool(llama_cpp.llama_supports_gpu_offload())}")
    types = {t.name: t.type_name for t in find_variant("Q4_K_M").facts.tensors}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = synth.write_nemotron_h_moe(Path(tmp) / "q4km.gguf", synth.FULL, dtype="bf16", sparse=True,
                                          tensor_types=types)
        facts = facts_from_header(read_header(path))
        print(f"{'n_ctx':>8} {'cpu_moe':>7} | {'side':4} {'what':9} {'llama.cpp MiB':>14} {'model MiB':>10}")
        for n_cpu_moe in args.n_cpu_moe:
            for text in args.contexts:
                n_ctx = parse_tokens(text)
                placement = Placement(n_ctx=n_ctx, n_gpu_layers=facts.n_layer + 1, n_cpu_moe=n_cpu_moe)
                est = estimate(facts, placement)
                plan = replace(Plan(model="Q4_K_M skeleton", n_ctx=n_ctx), n_gpu_layers=placement.n_gpu_layers,
                               n_cpu_moe=n_cpu_moe, flash_attn=True)
                before = vram_used()
                loaded = loader.load(path, plan)
                after = vram_used()
                printed = printed_buffers(loaded.load_log)
                loaded.close()
                row = {"n_ctx": n_ctx, "n_cpu_moe": n_cpu_moe, "printed_mib": printed,
                       "model_mib": {"gpu": {k: v / MiB for k, v in est.gpu.__dict__.items()},
                                     "ram": {k: v / MiB for k, v in est.ram.__dict__.items()}}}
                for side, comps in (("gpu", est.gpu), ("ram", est.ram)):
                    for what in ("weights", "kv", "recurrent", "compute", "output"):
                        ours = getattr(comps, what) / MiB
                        if side == "ram" and what == "weights":
                            ours += est.repacked_bytes / MiB   # printed twice by llama.cpp, see memory.py
                        print(f"{n_ctx:>8} {n_cpu_moe:>7} | {side:4} {what:9} "
                              f"{printed[side].get(what, 0.0):>14.2f} {ours:>10.2f}", flush=True)
                if before is not None and after is not None:
                    beyond = (after - before) / MiB - sum(printed["gpu"].values())
                    row["vram_beyond_buffers_mib"] = beyond
                    print(f"{n_ctx:>8} {n_cpu_moe:>7} | gpu  NVML used beyond the buffers: {beyond:.0f} MiB "
                          f"(the model assumes {est.gpu.overhead / MiB:.0f} MiB)", flush=True)
                rows.append(row)
                if args.json:   # after every load, so a run cut off by its time slot keeps what it measured
                    tmp = args.json.with_name(args.json.name + ".tmp")
                    tmp.write_text(json.dumps(rows, indent=1))
                    tmp.replace(args.json)


if __name__ == "__main__":
    main()
