"""Drafts verified in the decode loop through the real llama.cpp on the tiny hybrid (Mamba-2 +
attention + MoE) model: k tokens in one llama_decode, the KV and the recurrent state cut back
after a rejected draft.

Greedy decoding with drafts must give the same tokens as without, whatever the drafts were: right,
wrong at the first token, wrong in the middle, cut back to every depth up to n_rs_seq, two
sequences drafting in one batch, and a reply's limits landing inside a draft.
"""

from __future__ import annotations

import collections

import pytest

from localcascade.engine import drafts, speculative
from localcascade.engine.events import AnswerText, ThinkingText, TurnStats
from localcascade.engine.session import Engine, GenerationOptions
from localcascade.errors import EngineError
from localcascade.planning.plan import Plan

K = 6   # draft tokens per step at most, and snapshots kept
PROMPT = [1, 20, 31, 42, 53, 64, 20, 31, 42, 77, 88, 99, 20, 31]
N = 96
GREEDY = GenerationOptions(think=False, temperature=0.0, max_tokens=N)


def load(path, n_rs_seq: int, n_seq: int = 1) -> Engine:
    return Engine.load(path, Plan(model="tiny", n_ctx=1024 * n_seq, n_batch=256, n_ubatch=128, n_seq=n_seq,
                                  n_rs_seq=n_rs_seq), for_chat=False)


class Scripted:
    """A drafter whose drafts the test writes: ``propose(tokens generated so far)`` -> draft.
    Records the depth of every rollback it caused (drafts proposed minus drafts kept)."""

    def __init__(self, prompt_len: int, propose) -> None:
        self.history: list[int] = []
        self.prompt_len = prompt_len
        self.propose = propose
        self.proposed: list[list[int]] = []
        self.matched = drafts.MAX_NGRAM   # every draft counts as a long match (probes too)

    def extend(self, tokens) -> None:
        self.history.extend(tokens)

    def draft(self, k: int) -> list[int]:
        out = self.history[self.prompt_len:]
        draft = list(self.propose(out))[:k]
        self.proposed.append((len(out), draft))
        return draft

    def rollbacks(self, truth: list[int]) -> set[int]:
        """How far each step rolled the state back: its draft tokens after the first wrong one."""
        depths = set()
        for at, draft in self.proposed:
            right = next((i for i, t in enumerate(draft) if at + i >= len(truth) or truth[at + i] != t), len(draft))
            depths.add(len(draft) - right)
        return depths - {0}


def start(engine: Engine, seq: int, prompt: list[int], options: GenerationOptions, propose=None, *,
          drafting: bool = True):
    """A reply on sequence ``seq``; with ``propose`` its drafts are scripted and never paused."""
    engine.decoder.draft_tokens = engine.draft_tokens if drafting else 0
    events: list = []
    turn = engine.decoder.start(seq, prompt, options, events.append, calls="none")
    if propose is not None:
        turn.drafter = Scripted(len(prompt), propose)
        turn.acceptance = drafts.Acceptance(margin=0.0, probe_tokens=K)   # k drafts every step, however many fail
    return turn, events


def finish(engine: Engine, *turns) -> int:
    steps = 0
    while not all(t.done for t in turns):
        engine.decoder.step()
        steps += 1
    return steps


def reply(engine: Engine, prompt: list[int], options: GenerationOptions = GREEDY, propose=None, *,
          drafting: bool = True):
    """(generated token ids, the text, its TurnStats, steps) of one reply from an empty context."""
    engine.decoder.reset()
    turn, events = start(engine, 0, prompt, options, propose, drafting=drafting)
    steps = finish(engine, turn)
    held = engine.decoder.sequences[0].tokens
    text = "".join(e.text for e in events if isinstance(e, (AnswerText, ThinkingText)))
    stats = next(e for e in events if isinstance(e, TurnStats))
    return held[len(prompt):], text, stats, steps


@pytest.fixture(scope="module")
def engine(tiny_model):
    with load(tiny_model, K) as loaded:
        assert loaded.draft_tokens == K
        yield loaded


@pytest.fixture(scope="module")
def reference(engine):
    return reply(engine, PROMPT, drafting=False)


def test_greedy_with_right_and_corrupted_drafts_is_plain_greedy(engine, reference):
    tokens, text, _, plain_steps = reference
    step = [0]

    def propose(out):
        # The true continuation with the token at `at` corrupted, `at` cycling through 0..K (K: none
        # corrupted): rejections at every depth, so the state rolls back 1 to K tokens, between
        # fully kept drafts.
        at = step[0] % (K + 1)
        step[0] += 1
        draft = list(tokens[len(out): len(out) + K])
        if at < len(draft):
            draft[at] = (draft[at] + 1 + at) % engine.vocab.n_tokens
        return draft

    engine.decoder.reset()
    turn, _ = start(engine, 0, PROMPT, GREEDY, propose)
    assert finish(engine, turn) < plain_steps                           # more than one token per llama_decode
    got, got_text, stats, steps = reply(engine, PROMPT, propose=propose)
    assert got == tokens and got_text == text
    assert stats.accepted_tokens >= len(tokens) // 2
    assert turn.drafter.rollbacks(tokens) == set(range(1, K + 1))       # every depth up to n_rs_seq


def test_greedy_with_ngram_drafts_and_wrong_drafts_is_plain_greedy(engine, reference):
    tokens, text, _, _ = reference
    got, got_text, ngram_stats, _ = reply(engine, PROMPT)                # the default drafter
    assert got == tokens and got_text == text
    wrong = lambda out: [(len(out) * 7919 + j) % engine.vocab.n_tokens for j in range(K)]  # noqa: E731
    got, got_text, stats, _ = reply(engine, PROMPT, propose=wrong)
    assert got == tokens and got_text == text
    assert stats.drafted_tokens >= N // 2 * K // 2 and stats.accepted_tokens <= stats.drafted_tokens // 10


def test_limits_that_land_inside_a_draft_end_the_reply_at_the_same_token(engine, reference):
    tokens = reference[0]
    always_right = lambda out: tokens[len(out): len(out) + K]   # noqa: E731
    for max_tokens in range(1, 2 * K + 3):
        options = GenerationOptions(think=False, temperature=0.0, max_tokens=max_tokens)
        got, _, stats, _ = reply(engine, PROMPT, options, propose=always_right)
        assert got == tokens[:max_tokens] and stats.stop_reason == "length", max_tokens
        assert stats.answer_tokens == max_tokens


def test_a_hybrid_model_without_snapshots_does_not_draft_and_cannot_be_cut_back(tiny_model, reference):
    with load(tiny_model, 0) as engine:
        assert engine.draft_tokens == 0
        got, _, stats, _ = reply(engine, PROMPT)
        assert got == reference[0] and stats.drafted_tokens == 0
        with pytest.raises(EngineError, match="could not cut sequence 0 back"):
            speculative.cut_back(engine.context, 0, len(PROMPT))


def test_a_rollback_deeper_than_the_snapshots_is_refused(tiny_model):
    with load(tiny_model, 2) as engine:
        engine.decoder.evaluate(0, PROMPT)
        with pytest.raises(EngineError, match="snapshots kept: 2"):
            speculative.cut_back(engine.context, 0, len(PROMPT) - 3)
        speculative.cut_back(engine.context, 0, len(PROMPT) - 2)          # two: as deep as it keeps
        with pytest.raises(EngineError, match="once per evaluation"):
            speculative.cut_back(engine.context, 0, len(PROMPT) - 3)      # a second cut before a decode


def test_no_drafts_under_a_grammar(engine):
    options = GenerationOptions(think=False, temperature=0.0, max_tokens=24, grammar='root ::= [a-z ]+')
    _, text, stats, _ = reply(engine, PROMPT, options, propose=lambda out: [5] * K)
    assert stats.drafted_tokens == 0 and set(text) <= set("abcdefghijklmnopqrstuvwxyz ")


def test_two_sequences_in_one_batch_roll_back_independently(tiny_model, engine, reference):
    # As the server's slots do: each reply's last token and drafts in the same llama_decode, each
    # cut back to its own kept length (its own recurrent snapshot).
    other_prompt = [1, 5, 6, 7, 8, 5, 6]
    other = reply(engine, other_prompt, drafting=False)[0]
    truths = [reference[0], other]
    rounds = collections.Counter()

    def corrupting(seq):
        def propose(out):
            rounds[seq] += 1
            draft = list(truths[seq][len(out): len(out) + K])
            if draft and (seq == 0 or rounds[seq] % 2):
                at = (rounds[seq] + seq) % len(draft)
                draft[at] = (draft[at] + 1) % engine.vocab.n_tokens
            return draft
        return propose

    with load(tiny_model, K, n_seq=2) as two:
        turns = [start(two, seq, prompt, GREEDY, corrupting(seq))[0]
                 for seq, prompt in enumerate([PROMPT, other_prompt])]
        finish(two, *turns)
        for seq, prompt in enumerate([PROMPT, other_prompt]):
            assert two.decoder.sequences[seq].tokens[len(prompt):] == truths[seq]
            assert turns[seq].acceptance.drafted > turns[seq].acceptance.accepted > 0


def test_sampled_replies_with_drafts_have_plain_sampling_s_distribution(engine, reference):
    # The first three tokens of a sampled reply (top-k 3: 27 outcomes), over many seeds, with the
    # greedy continuation as every draft (kept with its probability, else replaced by a draw
    # without it) and without drafts: a two-sample chi-square test of the same distribution.
    tokens = reference[0]
    counts = {True: collections.Counter(), False: collections.Counter()}
    seeds = 400
    for drafting in (True, False):
        for seed in range(seeds):
            options = GenerationOptions(think=False, temperature=1.5, top_k=3, max_tokens=3, seed=seed)
            propose = (lambda out: tokens[len(out): len(out) + K]) if drafting else None
            got = reply(engine, PROMPT, options, propose, drafting=drafting)[0]
            counts[drafting][tuple(got)] += 1
    outcomes = set(counts[True]) | set(counts[False])
    chi2 = sum((counts[True][o] - counts[False][o]) ** 2 / (counts[True][o] + counts[False][o]) for o in outcomes)
    dof = len(outcomes) - 1
    assert dof >= 3                                    # the test has something to tell apart
    assert chi2 < dof + 4 * (2 * dof) ** 0.5           # ~p > 0.001 for these degrees of freedom


def test_drafts_from_a_window_of_the_context_keep_greedy_output(engine, reference, monkeypatch):
    # A long context is indexed from its last DRAFT_WINDOW tokens only (the index of 1M tokens would
    # cost seconds and ~0.5 GB): with a window of 5 the reply still drafts from its own text.
    from localcascade.engine import decoder

    monkeypatch.setattr(decoder, "DRAFT_WINDOW", 5)
    tokens, text, _, _ = reference
    engine.decoder.reset()
    turn, _ = start(engine, 0, PROMPT, GREEDY)
    turn.acceptance = drafts.Acceptance(margin=0.0, probe_tokens=K)
    finish(engine, turn)
    assert turn.drafter_base == len(PROMPT) - 5 and len(turn.drafter.history) > 5
    assert engine.decoder.sequences[0].tokens[len(PROMPT):] == tokens
