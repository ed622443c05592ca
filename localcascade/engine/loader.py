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

import contextlib
import ctypes
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from localcascade.engine import llama_log
from localcascade.engine.template import ChatTemplate
from localcascade.errors import EngineError, Interrupted
from localcascade.model.facts import EXPERT_TENSOR_RE
from localcascade.planning.plan import Plan


def kv_type_id(name: str) -> int:
    """The ggml type id llama.cpp takes for a KV cache type name (memory.KV_TYPES)."""
    from localcascade.planning.memory import kv_type

    return kv_type(name).ggml_id


def expert_override_patterns(n_blocks: int) -> list[str]:
    """The regexes llama.cpp's ``--n-cpu-moe N`` uses: expert tensors of blocks 0..N-1."""
    return [rf"blk\.{i}{EXPERT_TENSOR_RE.pattern}" for i in range(n_blocks)]   # one per block, as --n-cpu-moe builds them


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
    """(generation threads, batch threads): physical cores for decode, all cores for prompts, unless
    LOCALCASCADE_THREADS names one count for both."""
    from localcascade.settings import threads

    chosen = threads()
    if chosen is not None:
        return chosen, chosen
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
    n_ctx_seq: int
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

    # Checked before the weights are read: a bad name must not cost a load.
    type_k, type_v = kv_type_id(plan.type_k), kv_type_id(plan.type_v)
    keepalive: list = []
    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = plan.n_gpu_layers
    overrides = build_buft_overrides(plan.n_cpu_moe)
    if overrides is not None:
        keepalive.append(overrides)
        mparams.tensor_buft_overrides = ctypes.cast(overrides[0], ctypes.c_void_p)
    with _sigint_held() as interrupted:
        model = _load_weights(model_path, mparams, progress, keepalive, interrupted)
        if not model:
            tail = "; ".join(line for line in log.since(mark)[-3:] if line.strip())
            raise EngineError(f"llama.cpp could not load {model_path}" + (f": {tail}" if tail else ""))
        ctx = None
        try:
            if interrupted:
                raise Interrupted("interrupted while loading the model")
            threads, threads_batch = default_threads()
            cparams = llama_cpp.llama_context_default_params()
            cparams.n_ctx = plan.n_ctx
            cparams.n_batch = min(plan.n_batch, plan.n_ctx)
            cparams.n_ubatch = min(plan.n_ubatch, cparams.n_batch)
            cparams.n_seq_max = max(1, plan.n_seq)
            # Snapshots of the recurrent state for rolling back rejected drafts (speculative.py);
            # llama.cpp clamps it to 0 for architectures that cannot roll back.
            cparams.n_rs_seq = max(0, plan.n_rs_seq)
            cparams.n_threads = n_threads or threads
            cparams.n_threads_batch = n_threads_batch or threads_batch
            cparams.flash_attn_type = (
                llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if plan.flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
            cparams.type_k = type_k
            cparams.type_v = type_v
            cparams.no_perf = True
            ctx = llama_cpp.llama_init_from_model(model, cparams)
            if not ctx:
                tail = "; ".join(line for line in log.since(mark)[-3:] if line.strip())
                raise EngineError(
                    f"llama.cpp could not create a context of {plan.n_ctx} tokens for {model_path}"
                    + (f": {tail}" if tail else "")
                )
            if interrupted:
                raise Interrupted("interrupted while creating the context")
            return LoadedModel(
                path=Path(model_path),
                model=model,
                ctx=ctx,
                vocab=llama_cpp.llama_model_get_vocab(model),
                n_ctx=llama_cpp.llama_n_ctx(ctx),
                n_ctx_seq=llama_cpp.llama_n_ctx_seq(ctx),
                n_batch=cparams.n_batch,
                load_log=log.since(mark),
                _keepalive=keepalive,
            )
        except BaseException:
            # Whatever fails between the load and the return must not leave the weights and the
            # context allocated for the rest of the process.
            if ctx:
                llama_cpp.llama_free(ctx)
            llama_cpp.llama_model_free(model)
            raise


def _load_weights(model_path: Path, mparams, progress, keepalive: list, interrupted: list) -> int | None:
    """``llama_model_load_from_file``, cancelled (raising Interrupted) when Ctrl-C is pressed.

    The progress callback is the only Python code that runs during a load. An exception must
    not propagate into C (ctypes prints it and the load carries on), so the callback returns
    False instead, llama.cpp cancels the load, and the reason is raised once it has returned.
    """
    import llama_cpp

    stopped: list[BaseException] = []

    def _on_progress(fraction: float, _user: ctypes.c_void_p) -> bool:
        try:
            if progress is not None:
                progress(float(fraction))
        except Exception:  # a broken progress bar must not stop the load
            pass
        except BaseException as err:  # KeyboardInterrupt, SystemExit: stop the load
            stopped.append(err)
        return not (stopped or interrupted)

    callback = llama_cpp.llama_progress_callback(_on_progress)
    keepalive.append(callback)
    mparams.progress_callback = callback
    model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), mparams)
    if not model and (stopped or interrupted):
        if stopped and not isinstance(stopped[0], KeyboardInterrupt):
            raise stopped[0]
        raise Interrupted("interrupted while loading the model")
    return model


@contextlib.contextmanager
def vocab_only(model_path: Path):
    """The vocabulary of ``model_path`` without its weights (to check inputs before a long load)."""
    import llama_cpp

    log = llama_log.install()
    mark = log.mark()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    with _sigint_held() as interrupted:
        model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), params)
    if not model:
        tail = "; ".join(line for line in log.since(mark)[-3:] if line.strip())
        raise EngineError(f"llama.cpp could not read the vocabulary of {model_path}" + (f": {tail}" if tail else ""))
    try:
        if interrupted:
            raise Interrupted("interrupted while reading the model's vocabulary")
        yield llama_cpp.llama_model_get_vocab(model)
    finally:
        llama_cpp.llama_model_free(model)


@contextlib.contextmanager
def _sigint_held():
    """Turn Ctrl-C into a flag (the yielded list fills) while C hands us pointers.

    A KeyboardInterrupt raised as a C call returns, before its result is assigned, would leak
    the model or context it returned; with the flag the caller frees them and raises.
    Only Python's own SIGINT handler in the main thread is replaced; anything else is left alone.
    """
    hits: list[bool] = []
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield hits
        return
    signal.signal(signal.SIGINT, lambda *_: hits.append(True))
    try:
        yield hits
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def draft_depth(loaded: LoadedModel, plan) -> int:
    """How many drafts a step may verify: the plan's, or on a recurrent model as many as the context
    keeps state snapshots for (llama.cpp keeps none where the architecture cannot roll back)."""
    import llama_cpp

    k = max(0, plan.n_rs_seq)
    if k and (llama_cpp.llama_model_is_recurrent(loaded.model) or llama_cpp.llama_model_is_hybrid(loaded.model)):
        k = min(k, max(0, int(llama_cpp.llama_n_rs_seq(loaded.ctx))))
    return k


def n_ctx_train(model: int) -> int:
    """The context length the model was trained at ({arch}.context_length); 0 if unknown."""
    import llama_cpp

    return max(0, int(llama_cpp.llama_model_n_ctx_train(model)))


def metadata(model: int, key: str) -> str | None:
    """A GGUF metadata value as text, as llama.cpp read it; None if the file lacks it."""
    import ctypes

    import llama_cpp

    size = 1 << 16
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, size)
    if n < 0:
        return None
    if n >= size:   # a long value (a chat template): ask again with room for all of it
        buf = ctypes.create_string_buffer(n + 1)
        n = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, n + 1)
    return buf.value.decode("utf-8", errors="replace")


def chat_template_of(loaded: LoadedModel, override: str | None) -> ChatTemplate | None:
    """The chat template: the override if given, else the GGUF's own, else None (Chat refuses)."""
    import llama_cpp

    vocab = loaded.vocab

    def token_text(token: int) -> str:
        if token < 0:
            return ""
        raw = llama_cpp.llama_vocab_get_text(vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    specials = {
        "bos_token": token_text(llama_cpp.llama_vocab_bos(vocab)),
        "eos_token": token_text(llama_cpp.llama_vocab_eos(vocab)),
    }
    if override is not None:
        return ChatTemplate(override, origin="given", **specials)
    source = metadata(loaded.model, "tokenizer.chat_template")
    if not source:
        return None
    return ChatTemplate(source, origin="model's", **specials)
