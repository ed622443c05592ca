"""The benchmark tooling: the GPU bundle's trimmed sdist and the side-by-side table's figures."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))

import make_gpu_bundle  # noqa: E402
import side_by_side  # noqa: E402

TOP = "llama_cpp_python-0.3.36/"
LLAMA = TOP + "vendor/llama.cpp/"
KEPT = [TOP + "CMakeLists.txt", TOP + "llama_cpp/llama_cpp.py", LLAMA + "CMakeLists.txt",
        LLAMA + "ggml/src/ggml-cuda/fattn.cu", LLAMA + "ggml/src/ggml-cpu/ops.cpp", LLAMA + "src/llama.cpp",
        LLAMA + "common/arg.cpp", LLAMA + "tools/llama-bench/llama-bench.cpp", LLAMA + "tools/mtmd/clip.cpp",
        LLAMA + "vendor/nlohmann/json.hpp"]
DROPPED = [TOP + ".git/modules/vendor/llama.cpp/objects/pack/x.pack", LLAMA + ".git",
           LLAMA + "models/ggml-vocab-llama.gguf", LLAMA + "models/templates/x.jinja", LLAMA + "docs/build.md",
           LLAMA + "examples/simple/simple.cpp", LLAMA + "tests/test-backend-ops.cpp",
           LLAMA + "ggml/src/ggml-vulkan/ggml-vulkan.cpp", LLAMA + "ggml/src/ggml-metal/ggml-metal.m",
           LLAMA + "tools/server/server.cpp", LLAMA + "tools/mtmd/test-3.mp4", TOP + "docs/index.md"]


def test_trimmed_sdist_keeps_the_cpu_and_cuda_build_and_drops_the_rest(tmp_path: Path):
    sdist = tmp_path / "full.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name in KEPT + DROPPED:
            data = f"// {name}\n".encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "trimmed.tar.gz"
    make_gpu_bundle.trim_sdist(sdist, out)
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        assert tar.extractfile(KEPT[0]).read() == f"// {KEPT[0]}\n".encode()
    assert names == set(KEPT)


def test_table_shows_medians_spread_and_paired_ratios():
    row = {"model": "m", "p": 64, "n": 16, "threads": 1, "plan": {"n_gpu_layers": 0},
           "samples": {"llama_bench_pp": [10.0, 12.0, 11.0], "bench_pp": [10.0, 11.0, 12.0],
                       "llama_bench_tg": [4.0, 5.0, 6.0], "bench_tg": [4.0, 5.0, 6.6], "ask_gen": [3.0, 4.5, 6.0]}}
    lines = side_by_side.table([row]).splitlines()
    pp, tg = lines[2], lines[3]
    assert "| pp64 | 11.00 (10.00-12.00) | 11.00 (10.00-12.00) | 1.000 (0.92-1.09) |" in pp
    assert "| tg16 | 5.00 (4.00-6.00) | 5.00 (4.00-6.60) | 1.000 (1.00-1.10) | 4.50 (3.00-6.00) | 0.900 (0.75-0.91) |" in tg
    gpu = dict(row, plan={"n_gpu_layers": 53, "n_cpu_moe": 52})
    assert "| 1 thr, ngl 53, cpu-moe 52 |" in side_by_side.table([gpu])


def test_empty_samples_print_a_dash():
    assert side_by_side.spread([]) == "-" and side_by_side.ratio([1.0], []) == "-"
