"""Verifying drafts through llama.cpp: k draft tokens in one llama_decode, the state cut back after a miss.

A step of one sequence evaluates its last kept token (not yet in the context) and the k draft
tokens after it in one batch, with logits for every position; drafts.accept picks what is kept.
Then everything after the last kept token is removed from the context: attention KV by
``llama_memory_seq_rm``, and, on a hybrid model, the Mamba state through the same call. llama.cpp
cannot recompute a recurrent state backwards, so a context made with ``n_rs_seq`` = k
(``Plan.n_rs_seq``) keeps a snapshot of the recurrent state after each of the last k+1 tokens of a
batch; a ``seq_rm`` from position p to the end then rolls the state back to the snapshot after
p - 1, provided that goes back at most n_rs_seq tokens and nothing was rolled back since the last
decode (llama-memory-recurrent.cpp, ``seq_rm``: "partial rollback via per-token snapshot index";
the architectures that keep snapshots are ``llm_arch_supports_rs_rollback``'s: nemotron_h_moe is one,
and the CPU ``ssm_scan`` keeps them as the GPU one does). Without snapshots a recurrent model's
state cannot be cut back at all, so drafting needs ``n_rs_seq`` >= k there.

The snapshots cost memory: every recurrent layer's conv and SSM state (1 + n_rs_seq) times per
sequence (planning/memory.py counts them). The batch must also keep a sequence's trailing n_rs_seq+1
tokens in one micro-batch, which llama.cpp's split does itself (n_ubatch >= k + 1).

No sampling and no Python loop here beyond one step: ``DraftBatch`` holds the tokens of one
llama_decode (several sequences may share it, as the batched decoder's do), ``cut_back`` removes a
sequence's rejected tail, ``step`` does one draft-verify-accept-cut cycle of one sequence.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from localcascade.engine import drafts
from localcascade.errors import EngineError


class DraftBatch:
    """One llama_decode's tokens, each asking for its logits, and views of those logits afterwards.

    Reused step after step (``clear``): the C arrays are allocated once for ``capacity`` tokens.
    """

    def __init__(self, ctx: int, n_vocab: int, capacity: int) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._ctx = ctx
        self.n_vocab = n_vocab
        self.capacity = capacity
        self._batch = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.n_tokens = 0

    def clear(self) -> None:
        self.n_tokens = 0

    def add(self, seq: int, pos: int, tokens: Sequence[int]) -> range:
        """Put ``tokens`` of sequence ``seq`` at positions ``pos``, ``pos + 1``, ...; returns their
        rows' indices for ``rows`` after ``decode``."""
        if self.n_tokens + len(tokens) > self.capacity:
            raise EngineError(f"a draft batch holds at most {self.capacity} tokens")
        b = self._batch
        first = self.n_tokens
        for i, token in enumerate(tokens):
            j = first + i
            b.token[j] = int(token)
            b.pos[j] = pos + i
            b.n_seq_id[j] = 1
            b.seq_id[j][0] = seq
            b.logits[j] = 1
        self.n_tokens += len(tokens)
        return range(first, self.n_tokens)

    def decode(self) -> None:
        self._batch.n_tokens = self.n_tokens
        rc = self._lib.llama_decode(self._ctx, self._batch)
        if rc != 0:
            raise EngineError(f"llama.cpp failed to evaluate a draft (llama_decode returned {rc})")

    def rows(self, indices: range) -> list[np.ndarray]:
        """The logits of the tokens at ``indices`` (views into llama.cpp's buffer: valid until the
        next decode)."""
        out = []
        for i in indices:
            pointer = self._lib.llama_get_logits_ith(self._ctx, i)
            if not pointer:
                raise EngineError("llama.cpp holds no logits for a draft position")
            out.append(np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)))
        return out

    def close(self) -> None:
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None

    def __enter__(self) -> "DraftBatch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cut_back(ctx: int, seq: int, keep: int) -> None:
    """Remove sequence ``seq``'s positions from ``keep`` on: KV entries, and the recurrent state
    rolled back to its snapshot after position ``keep - 1``."""
    import llama_cpp

    if not llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), seq, keep, -1):
        depth = llama_cpp.llama_n_rs_seq(ctx)
        raise EngineError(
            f"llama.cpp could not cut sequence {seq} back to {keep} tokens (recurrent state snapshots "
            f"kept: {depth}; a rejected draft must be at most that long, and cut back once per evaluation)"
        )


def step(batch: DraftBatch, seq: int, pos: int, last: int, draft: Sequence[int],
         verify: Callable[[np.ndarray, int], int], sample: Callable[[np.ndarray], int]) -> list[int]:
    """One drafting step of one sequence whose context holds ``pos`` tokens and whose last kept
    token ``last`` is not evaluated yet: evaluates ``last`` and ``draft`` in one batch, keeps what
    drafts.accept keeps, and cuts the context back so that it holds ``pos + 1 + accepted`` tokens.

    Returns the new tokens: the accepted drafts and one token of the model's own (which, like
    ``last`` before it, is not in the context yet). ``draft`` may be empty: a plain step.
    """
    batch.clear()
    indices = batch.add(seq, pos, [last, *draft])
    batch.decode()
    kept = drafts.accept(batch.rows(indices), list(draft), verify, sample)
    accepted = len(kept) - 1
    if accepted < len(draft):
        cut_back(batch._ctx, seq, pos + 1 + accepted)
    return kept
