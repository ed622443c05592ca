"""Ground truth from llama.cpp itself: load a model for real on the CPU (mmap) and read the
"... buffer size = X MiB" lines of its log (model, KV, RS, compute, output)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import llama_cpp

_LOG: list[str] = []


@llama_cpp.llama_log_callback
def _collect(level, text, user):  # noqa: ARG001 - module level so ctypes never frees it
    _LOG.append(text.decode(errors="replace"))


_BUF = re.compile(r"(\S+)\s+(model|KV|RS|compute|output) buffer size =\s+([\d.]+) MiB")
MiB = 1024**2


@dataclass
class Truth:
    """Buffer sizes in MiB as llama.cpp printed them (two decimals), summed over buffers."""

    weights: float = 0.0
    kv: float = 0.0
    recurrent: float = 0.0
    compute: float = 0.0
    output: float = 0.0


def _parse(text: str, truth: Truth, kinds: set[str]) -> None:
    field = {"model": "weights", "KV": "kv", "RS": "recurrent", "compute": "compute", "output": "output"}
    for _, kind, mib in _BUF.findall(text):
        if kind in kinds:
            setattr(truth, field[kind], getattr(truth, field[kind]) + float(mib))


class LoadedModel:
    def __init__(self, path: str):
        llama_cpp.llama_log_set(_collect, None)
        llama_cpp.llama_backend_init()
        _LOG.clear()
        params = llama_cpp.llama_model_default_params()
        params.use_mmap = True
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.model_log = "".join(_LOG)

    def measure(self, n_ctx: int, flash_attn: bool = True, type_k: str = "f16", type_v: str = "f16",
                n_ubatch: int = 512, n_batch: int = 2048, n_rs_seq: int = 0) -> Truth:
        _LOG.clear()
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_ubatch, params.n_batch, params.n_threads = n_ctx, n_ubatch, n_batch, 1
        params.n_rs_seq = n_rs_seq
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        params.type_k = getattr(llama_cpp, f"GGML_TYPE_{type_k.upper()}")
        params.type_v = getattr(llama_cpp, f"GGML_TYPE_{type_v.upper()}")
        ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not ctx:
            raise RuntimeError("llama.cpp could not create the context")
        truth = Truth()
        _parse(self.model_log, truth, {"model"})
        _parse("".join(_LOG), truth, {"KV", "RS", "compute", "output"})
        llama_cpp.llama_free(ctx)
        return truth

    def close(self) -> None:
        llama_cpp.llama_model_free(self.model)
