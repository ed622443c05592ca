"""Prepare gpu-bundle/: everything benchmarks/gpu_check.sh needs on a GPU machine without network.

    python scripts/make_gpu_bundle.py [--out gpu-bundle] [--python 3.11 3.12] [--sdist FILE]

It holds
  llama_cpp_python-0.3.36-trimmed.tar.gz  the pinned sdist without what a CPU or CUDA build never
                                          reads (vocab files, docs, examples, tests, other backends)
  wheels/                                 localcascade's wheel, its dependencies and the build
                                          backend's (scikit-build-core), for each --python version:
                                          compiled ones per version, pure-Python ones once
and must stay under 60 MiB, so that it travels with a checkout to a short-lived GPU machine. Run it
where the package index is reachable; the result is reused until deleted.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from llama_bench_build import LLAMA_CPP_PYTHON_VERSION, download_sdist  # noqa: E402

LIMIT = 60 * 1024 * 1024
TRIMMED = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}-trimmed.tar.gz"
TOP = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/"
LLAMA = TOP + "vendor/llama.cpp/"
# Folders no CPU or CUDA build of the bindings reads. llama.cpp adds tests/, examples/, pocs/, app/
# and the server only when built on its own (not as the bindings' subproject), and each ggml backend
# folder only when that backend is switched on.
DROP = (
    # The sdist carries its git history (39 MB); llama.cpp's build then reports its commit as unknown.
    TOP + ".git/", LLAMA + ".git",
    TOP + "docs/", TOP + "examples/", TOP + "tests/", TOP + "docker/", TOP + ".github/",
    *(LLAMA + d for d in ("models/", "docs/", "examples/", "media/", "benches/", "tests/", ".github/",
                          ".devops/", "gguf-py/", "scripts/", "pocs/", "app/", "conversion/", "skills/",
                          "requirements/", "ci/", "tools/server/", "tools/ui/", ".pi/", ".gemini/")),
    *(LLAMA + f"ggml/src/ggml-{b}/" for b in ("vulkan", "sycl", "opencl", "metal", "cann", "hexagon", "webgpu",
                                            "openvino", "et", "virtgpu", "musa", "hip", "zdnn", "rpc", "zendnn")),
)
# Build backend of the bindings, installed with --no-build-isolation on the GPU machine; ninja (0.2 MB)
# so the build does not depend on the machine having it (CMake itself must be there: its wheel is 25 MB).
BUILD_REQUIREMENTS = ["scikit-build-core>=0.9.2", "ninja"]
# Runtime requirements of llama-cpp-python itself (its wheel is built there, not downloaded).
BINDINGS_REQUIREMENTS = ["typing-extensions>=4.5.0", "numpy>=1.20.0", "diskcache>=5.6.1", "jinja2>=2.11.3"]


def trim_sdist(sdist: Path, out: Path) -> None:
    with tarfile.open(sdist) as src, tarfile.open(out, "w:gz", compresslevel=9) as dst:
        for member in src:
            name = member.name + ("/" if member.isdir() else "")
            if name.startswith(DROP) or member.name.endswith((".gguf", ".png", ".jpg", ".mp4", ".mp3", ".wav")):
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)


def project_requirements() -> list[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [r for r in data["project"]["dependencies"] if not r.lower().startswith("llama-cpp-python")]


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "gpu-bundle")
    parser.add_argument("--python", nargs="+", default=["3.11", "3.12"],
                        help="Python versions the GPU machine may run (default: 3.11 3.12)")
    parser.add_argument("--sdist", type=Path, help=f"a local llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz")
    args = parser.parse_args()

    out = args.out.resolve()
    wheels = out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    trimmed = out / TRIMMED
    if not trimmed.exists():
        with tempfile.TemporaryDirectory() as tmp:
            sdist = args.sdist or download_sdist(Path(tmp))
            print(f"trimming {sdist.name}", file=sys.stderr)
            trim_sdist(sdist, trimmed.with_suffix(".part"))
            trimmed.with_suffix(".part").rename(trimmed)
    # localcascade itself: a pure-Python wheel from this checkout.
    for old in wheels.glob("localcascade-*.whl"):
        old.unlink()
    pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(ROOT))
    requirements = project_requirements() + BINDINGS_REQUIREMENTS + BUILD_REQUIREMENTS
    for version in args.python:
        abi = "cp" + version.replace(".", "")
        print(f"wheels for Python {version}", file=sys.stderr)
        pip("download", "--quiet", "--only-binary", ":all:", "--dest", str(wheels),
            "--python-version", version, "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none",
            "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
            "--platform", "manylinux2014_x86_64", "--platform", "linux_x86_64", "--platform", "any",
            *requirements)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {size / 1024**2:.1f} MiB ({trimmed.stat().st_size / 1024**2:.1f} MiB source, "
          f"{len(list(wheels.glob('*.whl')))} wheels)")
    if size > LIMIT:
        print(f"error: the bundle is over {LIMIT // 1024**2} MiB; pass fewer --python versions", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
