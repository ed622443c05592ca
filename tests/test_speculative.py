"""Drafts verified through the real llama.cpp on the tiny hybrid (Mamba-2 + attention + MoE) model:
k tokens in one llama_decode, the KV and the recurrent state cut back after a rejected draft.

Greedy decoding with drafts must give the same tokens as without, whatever the drafts were: right,
wrong at the first token, wrong in the middle, cut back to every depth up to n_rs_seq.
"""

from __future__ import annotations

import numpy as np
import pytest

from localcascade.engine import drafts, speculative
from localcascade.engine.sampling import Sampler
from localcascade.engine.session import Engine, GenerationOptions
from localcascade.errors import EngineError
from localcascade.planning.plan import Plan

K = 6   # draft tokens per step at most, and snapshots kept


def load(path, n_rs_seq: int) -> Engine:
    return Engine.load(path, Plan(model="tiny", n_ctx=1024, n_batch=256, n_ubatch=128, n_rs_seq=n_rs_seq),
                       for_chat=False)


def greedy(row: np.ndarray) -> int:
    return int(np.argmax(row))


def plain_greedy(engine: Engine, prompt: list[int], n: int) -> list[int]:
    """Token by token, one llama_decode each, as the engine generates without drafts."""
    import llama_cpp

    engine.reset()
    engine.decode(prompt)
    out = []
    for _ in range(n):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(engine.context, -1),
                                       shape=(engine.vocab.n_tokens,))
        out.append(greedy(logits))
        engine.decode(out[-1:])
    return out


def drafted_greedy(engine: Engine, prompt: list[int], n: int, draft_for, sampler=None) -> tuple[list[int], dict]:
    """Greedy generation by speculative.step; ``draft_for(reply so far)`` proposes each step's draft."""
    engine.reset()
    engine.decode(prompt[:-1])
    pos, last, out = len(prompt) - 1, prompt[-1], []
    stats = {"steps": 0, "rejected": 0, "accepted": 0, "depths": set()}
    with speculative.DraftBatch(engine.context, engine.vocab.n_tokens, K + 1) as batch:
        while len(out) < n:
            draft = list(draft_for(out))[:K]
            if sampler is None:
                kept = speculative.step(batch, 0, pos, last, draft, verify=lambda row, d: greedy(row), sample=greedy)
            else:
                kept = speculative.step(batch, 0, pos, last, draft, sampler.verify_row, sampler.sample_row)
            accepted = len(kept) - 1
            stats["steps"] += 1
            stats["accepted"] += accepted
            if accepted < len(draft):
                stats["rejected"] += 1
                stats["depths"].add(len(draft) - accepted)   # how many positions were rolled back
            out += kept
            pos += len(kept)
            last = kept[-1]
    return out[:n], stats


PROMPT = [1, 20, 31, 42, 53, 64, 20, 31, 42, 77, 88, 99, 20, 31]
N = 96


@pytest.fixture(scope="module")
def engine(tiny_model):
    with load(tiny_model, K) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def reference(engine):
    return plain_greedy(engine, PROMPT, N)


def test_greedy_with_right_and_corrupted_drafts_is_plain_greedy(engine, reference):
    vocab = engine.vocab.n_tokens
    step = [0]

    def draft_for(out):
        # The true continuation, K tokens long, with the token at position `at` corrupted, `at`
        # cycling through 0..K (K: none corrupted): rejections at every depth, so the state is
        # rolled back by 1 to K tokens, between fully accepted drafts.
        at = step[0] % (K + 1)
        step[0] += 1
        draft = list(reference[len(out): len(out) + K])
        if at < len(draft):
            draft[at] = (draft[at] + 1 + at) % vocab
        return draft

    out, stats = drafted_greedy(engine, PROMPT, N, draft_for)
    assert out == reference
    assert stats["rejected"] >= 10 and stats["accepted"] >= 30
    assert stats["depths"] == set(range(1, K + 1))   # every rollback depth up to n_rs_seq happened
    assert stats["steps"] < N                       # more than one token per llama_decode on average


def test_greedy_with_ngram_drafts_and_wrong_drafts_is_plain_greedy(engine, reference):
    # Through the engine's Sampler, as the decode loop will verify.
    sampler = Sampler(engine.vocab.handle, GenerationOptions(temperature=0.0))
    drafter = drafts.NgramDrafter(PROMPT)
    fed = [0]

    def ngram(out):
        drafter.extend(out[fed[0]:])
        fed[0] = len(out)
        return drafter.draft(K)

    out, _ = drafted_greedy(engine, PROMPT, N, ngram, sampler)
    assert out == reference
    vocab = engine.vocab.n_tokens
    out, stats = drafted_greedy(engine, PROMPT, N, lambda out: [(len(out) * 7919 + j) % vocab for j in range(K)])
    assert out == reference
    assert stats["rejected"] >= N // 2


def test_without_snapshots_a_hybrid_model_cannot_be_cut_back(tiny_model):
    with load(tiny_model, 0) as engine:
        engine.decode(PROMPT[:-1])
        with speculative.DraftBatch(engine.context, engine.vocab.n_tokens, K + 1) as batch:
            with pytest.raises(EngineError, match="could not cut sequence 0 back"):
                speculative.step(batch, 0, len(PROMPT) - 1, PROMPT[-1], [5, 6, 7],
                                 verify=lambda row, d: -1, sample=greedy)


def test_a_rejected_draft_longer_than_the_snapshots_is_refused(tiny_model):
    with load(tiny_model, 2) as engine:
        engine.decode(PROMPT[:-1])
        with speculative.DraftBatch(engine.context, engine.vocab.n_tokens, K + 1) as batch:
            with pytest.raises(EngineError, match="snapshots kept: 2"):
                speculative.step(batch, 0, len(PROMPT) - 1, PROMPT[-1], [5, 6, 7, 8],
                                 verify=lambda row, d: -1, sample=greedy)
            with pytest.raises(EngineError, match="at most 7 tokens"):
                batch.add(0, 0, list(range(8)))


def test_drafts_are_not_verified_under_a_grammar(engine):
    sampler = Sampler(engine.vocab.handle, GenerationOptions(temperature=0.0, grammar='root ::= "a"'))
    try:
        row = np.zeros(engine.vocab.n_tokens, dtype=np.float32)
        with pytest.raises(EngineError, match="grammar"):
            sampler.verify_row(row, 5)
        with pytest.raises(EngineError, match="grammar"):
            sampler.sample_row(row)
    finally:
        sampler.close()


def test_two_sequences_in_one_batch_roll_back_independently(tiny_model, engine, reference):
    # As the server's batched decoder will: each sequence's last token and draft in the same
    # llama_decode, each cut back to its own accepted length (its own recurrent snapshot).
    other_prompt = [1, 5, 6, 7, 8, 5, 6]
    other_reference = plain_greedy(engine, other_prompt, N)
    prompts, references = [PROMPT, other_prompt], [reference, other_reference]
    plan = Plan(model="tiny", n_ctx=2048, n_batch=256, n_ubatch=128, n_seq=2, n_rs_seq=K)
    with Engine.load(tiny_model, plan, for_chat=False) as two:
        n_vocab = two.vocab.n_tokens
        with speculative.DraftBatch(two.context, n_vocab, 2 * (K + 1) + 64) as batch:
            for seq, prompt in enumerate(prompts):
                batch.add(seq, 0, prompt[:-1])
            batch.decode()
            pos = [len(p) - 1 for p in prompts]
            last = [p[-1] for p in prompts]
            out: list[list[int]] = [[], []]
            rounds = 0
            while min(len(o) for o in out) < N:
                batch.clear()
                spans, proposals = [], []
                for seq in (0, 1):
                    # Sequence 0: true drafts with one corrupted token; sequence 1: alternately true and wrong.
                    truth = references[seq][len(out[seq]): len(out[seq]) + K]
                    draft = list(truth)
                    if draft and (seq == 0 or rounds % 2):
                        at = (rounds + seq) % len(draft)
                        draft[at] = (draft[at] + 1) % n_vocab
                    proposals.append(draft)
                    spans.append(batch.add(seq, pos[seq], [last[seq], *draft]))
                batch.decode()
                for seq in (0, 1):
                    kept = drafts.accept(batch.rows(spans[seq]), proposals[seq], lambda row, d: greedy(row), greedy)
                    if len(kept) - 1 < len(proposals[seq]):
                        speculative.cut_back(two.context, seq, pos[seq] + len(kept))
                    out[seq] += kept
                    pos[seq] += len(kept)
                    last[seq] = kept[-1]
                rounds += 1
    assert out[0][:N] == reference
    assert out[1][:N] == other_reference
