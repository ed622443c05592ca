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

The decode loop (decoder.py) puts a reply's drafts in its batch and walks the verified rows;
this module is the one thing it needs from llama.cpp beyond a decode: the cut.
"""

from __future__ import annotations

from localcascade.errors import EngineError


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
