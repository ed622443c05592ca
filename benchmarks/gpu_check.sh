#!/usr/bin/env bash
# The GPU check in one command, for a bare machine with an NVIDIA GPU, nvcc, CMake and no network:
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]          # OUT_DIR defaults to $OUT, then ./gpu-check-out
#
# It needs gpu-bundle/ beside the checkout (made by `python scripts/make_gpu_bundle.py` where the
# package index is reachable) and, with no network, installs only from it:
#   1. builds the CUDA llama-cpp-python from the bundle's trimmed sdist, for this card's
#      architecture only (nvidia-smi --query-gpu=compute_cap), and llama-bench in the same build tree;
#   2. installs localcascade and its dependencies from the bundle's wheels;
#   3. runs benchmarks/gpu_check.py (CUDA buffers and context vs the memory model);
#   4. runs benchmarks/side_by_side.py on the full-size IQ4_XS skeleton: bench vs llama-bench pp/tg
#      (and ask), all layers on the GPU, then with every expert block in RAM;
#   5. runs benchmarks/drafts.py verify on the skeleton, all layers on the GPU: what verifying k draft
#      tokens in one step costs against a plain step (what drafting can gain on the real model).
# Each step writes its results into OUT_DIR as soon as it has them (steps.jsonl records each step's
# status and seconds), so a run cut off by its time slot still returns figures.
#
# Without nvidia-smi it builds the CPU variant instead and runs the same checks on the CPU, shorter.
# Environment: PYTHON (default python3), GPU_BUNDLE (default ./gpu-bundle), GPU_CHECK_WORK (build
# folder; default a new temporary one), GPU_CHECK_CONTEXTS, GPU_CHECK_ROUNDS, GPU_CHECK_TOKENS ("P N").
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUNDLE=${GPU_BUNDLE:-$ROOT/gpu-bundle}
OUT_DIR=${1:-${OUT:-$ROOT/gpu-check-out}}
WORK=${GPU_CHECK_WORK:-$(mktemp -d)}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT_DIR" "$WORK"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
exec > >(tee -a "$OUT_DIR/gpu_check.log") 2>&1

# Offline: never an index, only the bundle's wheels, whatever pip.conf says.
export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_FIND_LINKS="$BUNDLE/wheels" PIP_DISABLE_PIP_VERSION_CHECK=1
JOBS=$(nproc 2>/dev/null || echo 4)
export CMAKE_BUILD_PARALLEL_LEVEL=$JOBS

step_start=0
step() {    # step NAME: start timing a step
    STEP=$1; step_start=$(date +%s); echo "== $STEP ($(date -u +%H:%M:%S))"
}
done_step() {   # done_step STATUS [NOTE]: record the step in steps.jsonl
    local secs=$(( $(date +%s) - step_start ))
    printf '{"step": "%s", "status": "%s", "seconds": %d, "note": "%s"}\n' "$STEP" "$1" "$secs" "${2:-}" \
        >> "$OUT_DIR/steps.jsonl"
    echo "== $STEP: $1 in ${secs}s ${2:-}"
}
fail() { done_step failed "$1"; echo "gpu_check: $1" >&2; exit 1; }

[ -d "$BUNDLE/wheels" ] || { echo "gpu_check: no bundle at $BUNDLE: run python scripts/make_gpu_bundle.py first" >&2; exit 2; }

step detect
ARCH=""
if command -v nvidia-smi > /dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv > "$OUT_DIR/gpu.csv" 2>&1
    CC=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' ')
    ARCH=${CC/./}
fi
if [ -n "$ARCH" ]; then
    command -v nvcc > /dev/null || fail "nvidia-smi sees a GPU but nvcc is not on PATH (add /usr/local/cuda/bin)"
    MODE=cuda
    done_step ok "CUDA, compute capability $CC, architecture $ARCH, $JOBS cores"
else
    MODE=cpu
    done_step ok "no NVIDIA GPU (nvidia-smi missing or silent): CPU build and CPU checks"
fi

step venv
"$PYTHON" -m venv "$WORK/venv" || fail "$PYTHON -m venv failed (install the venv module)"
# shellcheck disable=SC1091
. "$WORK/venv/bin/activate"
python -m pip install --quiet scikit-build-core ninja numpy typing-extensions diskcache jinja2 \
    || fail "the bundle has no wheels for Python $(python -c 'import sys; print(sys.version.split()[0])'): remake it with --python"
done_step ok "$(python --version)"

step build
SRC="$WORK/src/llama_cpp_python-0.3.36"
mkdir -p "$WORK/src" && tar -xzf "$BUNDLE"/llama_cpp_python-0.3.36-trimmed.tar.gz -C "$WORK/src" || fail "cannot unpack the sdist"
# The CPU flags of the README (this VM family reports AMX, which a native build uses and dies of);
# the vision library (mtmd) is left out: localcascade does not use it and it costs build time.
ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF"
[ "$MODE" = cuda ] && ARGS="$ARGS -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$ARCH"
CMAKE_ARGS="$ARGS" python -m pip install --quiet --no-build-isolation -C build-dir="$WORK/build" "$SRC" \
    || fail "llama-cpp-python did not build (CMAKE_ARGS=$ARGS)"
# llama-bench from the same build tree: the libraries are already compiled, only its own source is new.
(cmake -S "$SRC" -B "$WORK/build" -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF > "$WORK/tools-configure.log" \
    && cmake --build "$WORK/build" --target llama-bench > "$WORK/llama-bench-build.log") \
    || { tail -20 "$WORK/tools-configure.log" "$WORK/llama-bench-build.log"; fail "llama-bench did not build"; }
LLAMA_BENCH=$(find "$WORK/build" -name llama-bench -type f -perm -u+x | head -n1)
[ -n "$LLAMA_BENCH" ] || fail "llama-bench is missing after its build"
done_step ok "$MODE build"

step install
python -m pip install --quiet localcascade || fail "localcascade did not install from the bundle's wheels"
localcascade doctor --json > "$OUT_DIR/doctor.json" 2> "$OUT_DIR/doctor.err"
python -c "import llama_cpp; print('GPU offload:', bool(llama_cpp.llama_supports_gpu_offload()))"
done_step ok "$(python -c 'import localcascade, llama_cpp; print("llama-cpp-python", llama_cpp.__version__)')"

cd "$ROOT" || fail "cannot enter $ROOT"
if [ "$MODE" = cuda ]; then
    CONTEXTS=${GPU_CHECK_CONTEXTS:-4K 128K 1M}; N_CPU_MOE="0 18"; ROUNDS=${GPU_CHECK_ROUNDS:-2}
    read -r P N <<< "${GPU_CHECK_TOKENS:-512 128}"
    # All layers on the GPU, then every expert block in RAM (the expert tensors of all 52 layers).
    PLACEMENT=(--ngl 99 --cpu-moe 0 52)
else
    CONTEXTS=${GPU_CHECK_CONTEXTS:-4K}; N_CPU_MOE="0"; ROUNDS=${GPU_CHECK_ROUNDS:-1}
    read -r P N <<< "${GPU_CHECK_TOKENS:-16 4}"
    PLACEMENT=()
fi

step memory_model
# shellcheck disable=SC2086
python benchmarks/gpu_check.py --contexts $CONTEXTS --n-cpu-moe $N_CPU_MOE --json "$OUT_DIR/gpu_check.json" \
    && done_step ok "$CONTEXTS" || done_step failed "see gpu_check.log"

step side_by_side
python benchmarks/side_by_side.py "$WORK/side-by-side" --models skeleton --llama-bench "$LLAMA_BENCH" \
    -p "$P" -n "$N" -r "$ROUNDS" "${PLACEMENT[@]}" --json-out "$OUT_DIR/side_by_side.json" \
    | tee "$OUT_DIR/side_by_side.md" && done_step ok "pp$P tg$N x $ROUNDS" || done_step failed "see gpu_check.log"

step drafts
NGL=0; [ "$MODE" = cuda ] && NGL=99
python benchmarks/drafts.py verify --models skeleton --k 1,2,4,8 --reps "$ROUNDS" --ngl "$NGL" \
    --cache "$WORK/side-by-side" | tee "$OUT_DIR/drafts_verify.md" && done_step ok "ngl $NGL" \
    || done_step failed "see gpu_check.log"

echo "gpu_check: done; results in $OUT_DIR"
