"""Ground truth from llama.cpp's own samplers, for the host sampler's tests and benchmarks."""

from __future__ import annotations

import ctypes

import numpy as np


def llama_cpp_top_p(logits: np.ndarray, top_p: float) -> dict[int, float]:
    """llama.cpp's top-p sampler over ``logits``: {token: probability} of the tokens it keeps, renormalized."""
    import llama_cpp

    n = logits.shape[0]
    data = (llama_cpp.llama_token_data * n)()
    view = np.ctypeslib.as_array(ctypes.cast(data, ctypes.POINTER(ctypes.c_float)), shape=(n * 3,))
    view.view(np.int32)[0::3] = np.arange(n, dtype=np.int32)   # id, logit, p: three 4-byte fields
    view[1::3] = logits
    view[2::3] = 0.0
    array = llama_cpp.llama_token_data_array(data, n, -1, False)
    sampler = llama_cpp.llama_sampler_init_top_p(top_p, 1)
    try:
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
    finally:
        llama_cpp.llama_sampler_free(sampler)
    kept = {data[i].id: float(data[i].p) for i in range(array.size)}
    total = sum(kept.values())
    return {token: p / total for token, p in kept.items()}
