"""N-gram drafts: guesses of the next k tokens taken from text the model is likely to repeat.

Cascade-2 has no multi-token-prediction head and there is no small draft model of its family, so a
draft comes from the prompt and the reply so far: when the last few tokens occurred before, the
tokens that followed them then are proposed next (prompt lookup decoding; llama.cpp's
`ngram-simple` speculative mode does the same by scanning the history backwards, `ngram-map` and
common/ngram-cache keep statistics). The model verifies all k in one batch and keeps the longest
prefix it agrees with, plus one token of its own, so a step yields 1 to k+1 tokens.

Pure Python, no llama.cpp: the decode loop feeds tokens in (``NgramDrafter.extend``), asks for a
draft, evaluates it, and hands the logits rows to ``accept``. ``Acceptance`` tracks per sequence
whether drafting pays and turns it off where it does not (free prose). The rule in ``accept`` keeps
the output's distribution exactly that of plain decoding (greedy: token for token the same).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from localcascade.planning.plan import DRAFT_TOKENS

# Chosen by measurement (docs/performance.md, "Drafts"): longer n-grams first (a 4-token match
# rarely misleads), down to 2 (code and lists repeat short runs); 8 tokens per draft.
MAX_NGRAM = 4
MIN_NGRAM = 2
DRAFT_WINDOW = 65536   # context tokens a reply's drafts are looked up in (the most recent)


class NgramDrafter:
    """The token history of one sequence (prompt and reply) and an index of where each n-gram last
    ended, for n from ``min_n`` to ``max_n``; O(max_n) per token added, O(max_n) per draft."""

    def __init__(self, tokens: Sequence[int] = (), *, min_n: int = MIN_NGRAM, max_n: int = MAX_NGRAM) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"n-gram sizes must satisfy 1 <= min_n <= max_n, got {min_n}, {max_n}")
        self.min_n, self.max_n = min_n, max_n
        self.history: list[int] = []
        self.matched = 0   # the n-gram length the last draft came from (0: none)
        # For each n: n-gram -> the position right after its latest occurrence that has a token after it.
        self._index: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(min_n, max_n + 1)}
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        """Add tokens to the history (prompt tokens, then each token the reply keeps)."""
        history = self.history
        for token in tokens:
            history.append(int(token))
            end = len(history) - 1   # the n-grams ending just before the new token now have a follower
            for n in range(self.min_n, self.max_n + 1):
                if end >= n:
                    self._index[n][tuple(history[end - n:end])] = end

    def truncate(self, length: int) -> None:
        """Forget the history after ``length`` tokens (a rewound conversation); rebuilds the index."""
        if length < len(self.history):
            kept = self.history[:length]
            self.history = []
            self._index = {n: {} for n in range(self.min_n, self.max_n + 1)}
            self.extend(kept)

    def draft(self, k: int = DRAFT_TOKENS) -> list[int]:
        """Up to ``k`` tokens that followed the latest earlier occurrence of the longest n-gram the
        history ends with; [] when none occurred before."""
        history = self.history
        for n in range(self.max_n, self.min_n - 1, -1):
            if len(history) <= n:
                continue
            start = self._index[n].get(tuple(history[-n:]))
            if start is not None:
                self.matched = n
                return history[start:start + k]
        self.matched = 0
        return []


@dataclass
class StepCost:
    """What a step verifying n drafts costs, as a multiple of a plain one-token step, measured as
    the decode loop runs (one per engine: the same weights, machine and load for every sequence).

    A plain step's time is a moving average of steps that verified no draft; a step that verified n
    drafts in t seconds observes ``t / plain`` for n. The multiple is not linear in n (the first
    extra row costs the most: Gemma 270M on a CPU, 1.8x for one draft, 5.1x for eight), and it
    differs by an order of magnitude between machines and models, so each n keeps its own
    measurement; an n not measured yet is read off the nearest measured one, ``per_token`` a step
    for each token beyond it (a prior: 0.5 on a CPU, where a batch row costs a good share of a step).
    """

    per_token: float = 0.1
    smoothing: float = 0.2
    plain_seconds: float | None = None
    ratios: dict[int, float] = field(default_factory=dict)

    def record(self, drafted: int, seconds: float) -> None:
        if seconds <= 0:
            return
        if drafted <= 0:
            self.plain_seconds = seconds if self.plain_seconds is None else (
                (1 - self.smoothing) * self.plain_seconds + self.smoothing * seconds)
            return
        if self.plain_seconds is None:
            return
        observed = max(1.0, seconds / self.plain_seconds)
        known = self.ratios.get(drafted)
        self.ratios[drafted] = observed if known is None else (1 - self.smoothing) * known + self.smoothing * observed

    def __call__(self, n: int) -> float:
        """The cost of a step verifying ``n`` drafts, in plain steps."""
        if n in self.ratios:
            return self.ratios[n]
        below = max((m for m in self.ratios if m < n), default=0)
        above = min((m for m in self.ratios if m > n), default=None)
        at_below = self.ratios.get(below, 1.0)
        if above is None:
            return at_below + self.per_token * (n - below)
        return at_below + (self.ratios[above] - at_below) * (n - below) / (above - below)


def linear_cost(per_token: float) -> Callable[[int], float]:
    return lambda n: 1.0 + per_token * n


def best_length(rate: float, cost: Callable[[int], float] | float, k: int) -> tuple[int, float]:
    """(n, gain): the draft length n <= k that yields the most tokens per unit of step cost, and that
    yield. With each draft token kept with probability ``rate``, a step verifying n drafts yields
    (1 - rate^(n+1)) / (1 - rate) tokens and costs ``cost(n)`` plain steps (a number: that much a
    draft token). A gain under 1 means drafting loses."""
    cost = linear_cost(cost) if isinstance(cost, (int, float)) else cost
    a = min(max(rate, 0.0), 0.999)
    return max(((1 - a ** (n + 1)) / (1 - a) / cost(n), n) for n in range(1, max(1, k) + 1))[::-1]


@dataclass
class Acceptance:
    """Whether, and how long, to draft for one sequence, from what verification kept.

    ``rate`` is a moving average of the chance a draft token is kept (each verified position a trial
    until the first rejection). With ``cost`` (what a step verifying n drafts costs, in plain steps:
    StepCost), the draft length is the one that yields the most tokens per unit of cost
    (``best_length``), and drafting pays while that yield stays ``margin`` above a plain step's.
    When it does not, drafting stops for ``backoff`` steps, then one draft probes again; each failed
    probe doubles the pause (up to ``max_backoff``), a good one ends it. A probe (and the first draft
    of a reply) is ``probe_tokens`` long: where text does not repeat, a rejected probe costs a
    fraction of a rejected full draft.
    """

    cost_per_token: float = 0.1    # the cost model when ``cost`` is not given: linear
    cost: Callable[[int], float] | None = None
    margin: float = 1.1            # demand this much more than a plain step: a draft also costs host time
    smoothing: float = 0.3         # weight of the newest step in the moving average
    max_backoff: int = 256
    probe_tokens: int = 2
    max_tokens: int = DRAFT_TOKENS
    rate: float | None = None      # a draft token's chance to be kept, a moving average; None: the next probe decides
    backoff: int = 0
    _paused: int = field(default=0, repr=False)
    _next_backoff: int = field(default=8, repr=False)
    _probing: bool = field(default=True, repr=False)
    drafted: int = 0               # totals, for reports and benchmarks
    accepted: int = 0
    steps: int = 0

    @property
    def probing(self) -> bool:
        """Whether the next draft is a probe (the reply's first, or the first after a pause)."""
        return self._probing or self.rate is None

    def _cost(self) -> Callable[[int], float]:
        return self.cost if self.cost is not None else linear_cost(self.cost_per_token)

    def draft_length(self, available: int) -> int:
        """How many of ``available`` draft tokens this step should verify: 0 while paused (counting
        the step), a probe's length after a pause, else the length that yields the most tokens per
        unit of step cost at the acceptance seen so far (long drafts only where nearly every token
        is kept, when a verified token costs much)."""
        if self._paused > 0:
            self._paused -= 1
            return 0
        if self.probing:
            return min(available, self.probe_tokens)
        return best_length(self.rate, self._cost(), min(available, self.max_tokens))[0]

    def record(self, drafted: int, accepted: int) -> None:
        """One verification: ``accepted`` of ``drafted`` draft tokens were kept."""
        if drafted <= 0:
            return
        self.steps += 1
        self.drafted += drafted
        self.accepted += accepted
        # Each verified position is a trial until the first rejection: the estimate of the chance a
        # draft token is kept (the share kept of all drafted would undercount long drafts).
        observed = accepted / (accepted + (1 if accepted < drafted else 0)) if accepted else 0.0
        self.rate = observed if self.rate is None else (1 - self.smoothing) * self.rate + self.smoothing * observed
        if best_length(self.rate, self._cost(), self.max_tokens)[1] >= self.margin:
            self._next_backoff = 8
            self._probing = self._probing and accepted < drafted   # a wholly kept probe: full drafts
            return
        # It does not pay: pause, and let the probe after the pause decide afresh.
        self._paused = self.backoff = self._next_backoff
        self._next_backoff = min(2 * self._next_backoff, self.max_backoff)
        self._probing = True
        self.rate = None


def accept(rows: Sequence, drafts: Sequence[int], verify: Callable[[object, int], int],
           sample: Callable[[object], int]) -> list[int]:
    """The tokens a verified draft yields: the drafts the model keeps, then one of its own.

    ``rows[i]`` holds the model's logits for the position of ``drafts[i]`` (``rows[0]`` follows the
    last token already kept); ``rows`` has one more row than ``drafts``, for the position after the
    last draft. ``verify(row, draft)`` is the sampler's rule (nucleus.Workspace.verify): the draft
    itself when kept, else a token drawn from the model's distribution without it. The first token
    that is not the draft ends the step; it comes from the model's own distribution at that
    position, so every kept token is exactly what plain decoding would have drawn there. When every
    draft is kept, the last row gives one more token, sampled as usual.
    """
    if len(rows) != len(drafts) + 1:
        raise ValueError(f"{len(drafts)} drafts need {len(drafts) + 1} logits rows, got {len(rows)}")
    kept: list[int] = []
    for row, draft in zip(rows, drafts):
        token = verify(row, int(draft))
        kept.append(token)
        if token != draft:
            return kept
    kept.append(sample(rows[len(drafts)]))
    return kept
