"""Turn a Plan into a loaded llama.cpp model and context.

We call llama.cpp's C API (through llama-cpp-python's ctypes bindings)
directly rather than the high-level ``Llama`` class, because the plan needs
things that class cannot pass or gets in the way of:

- ``tensor_buft_overrides`` (expert tensors of the first N MoE blocks kept in
  system RAM, llama.cpp's ``--n-cpu-moe``) is declared "unused" in the
  binding's struct, so we build the NULL-terminated C array ourselves;
- the load progress callback;
- ``Llama`` silences fds 1 and 2 while loading when not verbose, which would
  also swallow our own progress on stderr, and allocates an
  ``n_batch x n_vocab`` float array we never use.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from localcascade.engine import llama_log
from localcascade.errors import EngineError
from localcascade.plan import Plan

# llama.cpp's LLM_FFN_EXPS_REGEX (common/common.h), one pattern per block as --n-cpu-moe builds them.
_EXPERT_TENSOR_REGEX = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"

# KV cache type names (as plans and users write them) -> ggml_type ids.
_KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30}


def kv_type_id(name: str) -> int:
    try:
        return _KV_TYPES[name.lower()]
    except KeyError:
        raise EngineError(f"unknown KV cache type {name!r}; use one of {', '.join(_KV_TYPES)}") from None


def kv_type_names() -> tuple[str, ...]:
    return tuple(_KV_TYPES)


def expert_override_patterns(n_blocks: int) -> list[str]:
    """The regexes llama.cpp's ``--n-cpu-moe N`` uses: expert tensors of blocks 0..N-1."""
    return [rf"blk\.{i}{_EXPERT_TENSOR_REGEX}" for i in range(n_blocks)]


class _BuftOverride(ctypes.Structure):
    # struct llama_model_tensor_buft_override { const char * pattern; ggml_backend_buffer_type_t buft; };
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def _cpu_buffer_type() -> int:
    """``ggml_backend_cpu_buffer_type()``, from the ggml-base library shipped with llama_cpp."""
    import llama_cpp
    import llama_cpp._ctypes_extensions as ctypes_ext

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    lib = ctypes_ext.load_shared_library("ggml-base", lib_dir)
    fn = lib.ggml_backend_cpu_buffer_type
    fn.restype = ctypes.c_void_p
    fn.argtypes = []
    buft = fn()
    if not buft:
        raise EngineError("llama.cpp did not return a CPU buffer type")
    return buft


def build_buft_overrides(n_blocks: int) -> tuple[ctypes.Array, list[bytes]] | None:
    """The NULL-terminated override array keeping N blocks' experts on the CPU, and its strings.

    Both returned objects must stay referenced while the model lives: llama.cpp
    keeps the pattern pointers.
    """
    if n_blocks <= 0:
        return None
    patterns = [p.encode() for p in expert_override_patterns(n_blocks)]
    buft = _cpu_buffer_type()
    array = (_BuftOverride * (len(patterns) + 1))()
    for slot, pattern in zip(array, patterns):
        slot.pattern = pattern
        slot.buft = buft
    array[len(patterns)].pattern = None   # terminator
    array[len(patterns)].buft = None
    return array, patterns


def default_threads() -> tuple[int, int]:
    """(generation threads, batch threads): physical cores for decode, all cores for prompts."""
    import psutil

    logical = os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or logical
    return max(1, physical), max(1, logical)


@dataclass
class LoadedModel:
    """A llama.cpp model and context, and the C memory that must live as long as they do."""

    path: Path
    model: int
    ctx: int
    vocab: int
    n_ctx: int
    n_batch: int
    load_log: list[str]
    _keepalive: list = field(default_factory=list, repr=False)

    def close(self) -> None:
        import llama_cpp

        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None
        self._keepalive.clear()


_backend_ready = False


def load(
    model_path: Path,
    plan: Plan,
    *,
    progress: Callable[[float], None] | None = None,
    n_threads: int | None = None,
    n_threads_batch: int | None = None,
    verbose: bool = False,
) -> LoadedModel:
    """Load ``model_path`` the way ``plan`` says. Nothing is printed unless ``verbose``."""
    global _backend_ready
    import llama_cpp

    log = llama_log.install()
    log.echo = verbose
    mark = log.mark()
    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True

    keepalive: list = []
    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = plan.n_gpu_layers
    overrides = build_buft_overrides(plan.n_cpu_moe)
    if overrides is not None:
        keepalive.append(overrides)
        mparams.tensor_buft_overrides = ctypes.cast(overrides[0], ctypes.c_void_p)
    if progress is not None:
        def _on_progress(fraction: float, _user: ctypes.c_void_p) -> bool:
            try:
                progress(float(fraction))
            except Exception:  # never raise into C; a broken progress bar must not stop the load
                pass
            return True

        callback = llama_cpp.llama_progress_callback(_on_progress)
        keepalive.append(callback)
        mparams.progress_callback = callback

    model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), mparams)
    if not model:
        tail = "; ".join(line for line in log.since(mark)[-3:] if line.strip())
        raise EngineError(f"llama.cpp could not load {model_path}" + (f": {tail}" if tail else ""))

    threads, threads_batch = default_threads()
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = plan.n_ctx
    cparams.n_batch = min(plan.n_batch, plan.n_ctx)
    cparams.n_ubatch = min(plan.n_ubatch, cparams.n_batch)
    cparams.n_seq_max = max(1, plan.n_seq)
    cparams.n_threads = n_threads or threads
    cparams.n_threads_batch = n_threads_batch or threads_batch
    cparams.flash_attn_type = (
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if plan.flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    cparams.type_k = kv_type_id(plan.type_k)
    cparams.type_v = kv_type_id(plan.type_v)
    cparams.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    if not ctx:
        llama_cpp.llama_model_free(model)
        tail = "; ".join(line for line in log.since(mark)[-3:] if line.strip())
        raise EngineError(
            f"llama.cpp could not create a context of {plan.n_ctx} tokens for {model_path}"
            + (f": {tail}" if tail else "")
        )
    return LoadedModel(
        path=Path(model_path),
        model=model,
        ctx=ctx,
        vocab=llama_cpp.llama_model_get_vocab(model),
        n_ctx=llama_cpp.llama_n_ctx(ctx),
        n_batch=cparams.n_batch,
        load_log=log.since(mark),
        _keepalive=keepalive,
    )
