"""llama.cpp's own `llama-bench`, built from the llama.cpp that the pinned llama-cpp-python vendors.

    python benchmarks/llama_bench_build.py CACHE_DIR [--sdist FILE] [--cmake-arg ARG ...] [--jobs N]

The binary is compiled from the same source and with the same CPU flags as the Python bindings
(README "Build flags"), so a speed difference between it and `localcascade bench` is ours, not a
different llama.cpp. Only the `llama-bench` target is built. The result is cached in CACHE_DIR and
reused when the version and the CMake arguments match: a second call costs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
# The README's flags: this CPU family reports AMX, which a native build uses and then dies of SIGILL.
CPU_FLAGS = ("-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON")
# Only what llama-bench needs: no tests, examples, server, HTTPS or downloads.
TRIM_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
              "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TOOLS=ON")
STAMP = "llama-bench.json"


class BuildError(RuntimeError):
    """The sdist could not be fetched or llama-bench did not build; the message says which step."""


def download_sdist(into: Path) -> Path:
    """The pinned sdist from the package index (pip's own client, so pip's index settings apply)."""
    into.mkdir(parents=True, exist_ok=True)
    found = sorted(into.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"))
    if found:
        return found[0]
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
          f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(into)], "pip download of the sdist")
    found = sorted(into.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"))
    if not found:
        raise BuildError(f"pip download left no llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz in {into}")
    return found[0]


def extract_llama_cpp(sdist: Path, into: Path) -> Path:
    """Unpack only vendor/llama.cpp, without the 113 MB of vocab files and docs the build never reads."""
    top = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
    skip = tuple(top + d for d in ("models/", "docs/", "examples/", "media/", "benches/"))
    source = into / top
    if (source / "CMakeLists.txt").exists():
        return source
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(top) and not m.name.startswith(skip)]
        tar.extractall(into, members=members, filter="data")
    return source


def cached(cache: Path, cmake_args: tuple[str, ...]) -> Path | None:
    """The cached binary when it was built for this version with these arguments."""
    stamp = cache / STAMP
    try:
        data = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    binary = Path(data.get("binary", ""))
    same = data.get("version") == LLAMA_CPP_PYTHON_VERSION and data.get("cmake_args") == list(cmake_args)
    return binary if same and binary.is_file() and os.access(binary, os.X_OK) else None


def build(cache: Path, *, sdist: Path | None = None, source: Path | None = None,
          extra_cmake_args: tuple[str, ...] = (), jobs: int | None = None, log=sys.stderr) -> Path:
    """Path of a llama-bench binary built into ``cache`` (reused when present).

    ``source`` is an unpacked llama.cpp tree; otherwise ``sdist`` (or the one pip downloads) is
    unpacked into the cache first.
    """
    cache = cache.resolve()
    cmake_args = CPU_FLAGS + TRIM_FLAGS + tuple(extra_cmake_args)
    hit = cached(cache, cmake_args)
    if hit:
        print(f"llama-bench: cached {hit}", file=log)
        return hit
    if shutil.which("cmake") is None:
        raise BuildError("cmake is not on PATH: install CMake >= 3.21 to build llama-bench")
    if source is None:
        sdist = sdist or download_sdist(cache / "sdist")
        print(f"llama-bench: unpacking {sdist.name}", file=log)
        source = extract_llama_cpp(sdist, cache / "src")
    build_dir = cache / "build"
    print(f"llama-bench: building from {source} (this takes minutes; it is done once)", file=log)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(["cmake", "-S", str(source), "-B", str(build_dir), *generator, *cmake_args], "cmake configure")
    _run(["cmake", "--build", str(build_dir), "--target", "llama-bench", "-j", str(jobs or os.cpu_count() or 2)],
         "cmake build of llama-bench")
    binary = build_dir / "bin" / "llama-bench"
    if not binary.is_file():
        raise BuildError(f"the build finished but {binary} is missing")
    (cache / STAMP).write_text(json.dumps({"version": LLAMA_CPP_PYTHON_VERSION, "cmake_args": list(cmake_args),
                                           "binary": str(binary)}, indent=1))
    return binary


def _run(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode:
        tail = "\n".join(result.stdout.splitlines()[-25:])
        raise BuildError(f"{what} failed (exit {result.returncode}):\n{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path, help="folder that holds the source and the build (reused)")
    parser.add_argument("--sdist", type=Path, help=f"a local llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz")
    parser.add_argument("--source", type=Path, help="an unpacked llama.cpp source tree instead of the sdist")
    parser.add_argument("--cmake-arg", action="append", default=[], help="extra CMake argument (repeatable)")
    parser.add_argument("--jobs", type=int, help="parallel compile jobs (default: all cores)")
    args = parser.parse_args()
    try:
        print(build(args.cache, sdist=args.sdist, source=args.source, extra_cmake_args=tuple(args.cmake_arg),
                    jobs=args.jobs))
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
