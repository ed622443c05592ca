"""Top-k / top-p / min-p / temperature sampling over a logits vector without sorting the vocabulary, exact up to float32 sums.

llama.cpp's top-p sorts the candidates whenever the 256 most likely tokens hold less than p of the
probability, which for a 131,072-token vocabulary costs ~17 ms a token on a small CPU, more than a
GPU's whole decoding step. The nucleus is fully determined by one number, the weight of its
lightest member, so this module finds that threshold by a weighted selection and sorts at most a
few thousand tokens. Sampling then needs no order at all: any order of the nucleus gives the same
distribution.

Semantics are llama.cpp's sampler chain as the engine builds it (top-k, top-p, min-p, temperature,
dist): top-p and min-p are decided on the temperature-1 probabilities (after top-k), the
temperature only reshapes the probabilities inside the kept set. llama.cpp's own running float32
sum stops a token early or late on flat steps; the nucleus here is the exact one. Of tokens tied
exactly at the end, as many are kept as the nucleus needs, the lowest ids first.

Sums over the whole vocabulary are einsum's vectorized float32 sums (relative error up to ~3e-6
measured on Gemma's logits, a third of the cost of numpy's pairwise sum), so a token whose running
sum lands within that of p can change sides: over 450 Gemma steps the total-variation distance
from the exact float64 nucleus is 5e-7 on average and 2e-4 at most (benchmarks/host_cost.py).
Running sums over the few sorted tokens are float64. Weights are exp() of the logits themselves
where that is safe (one pass fewer than subtracting the largest first); every cut is relative to
the most likely token's weight.

Vocabulary-sized arrays live in a Workspace made once per reply: a fresh 0.5-1 MB array per
token costs page faults that take longer than the arithmetic. No llama.cpp: the engine hands in a
view of llama.cpp's logits buffer.

The same chain runs natively where the package's C extension (_nucleus.c) was built: one pass for
the largest logit, one for exp, sum and a histogram that places the nucleus' end, one for the draw
(~3x faster on a flat 152K-token row; benchmarks/host_cost.py). This numpy code is the fallback
where no C compiler was at hand, and the reference the native pass is tested against.

Verifying a draft token (engine/drafts.py) draws from the same distribution: ``verify`` keeps the
draft with its probability, else draws from the others renormalized, which is exactly a plain draw.
"""

from __future__ import annotations

import numpy as np

from localcascade.errors import EngineError

try:
    from localcascade.engine import _nucleus as _native
except ImportError:   # no C compiler where the package was installed: the numpy path, same distribution
    _native = None

# A set of candidates this small is sorted outright.
_SORT_AT_MOST = 4096
# Cut-offs (weights relative to the most likely token's) that bracket the nucleus' end cheaply. The
# weights above _NEAR are few on a real step (gathered once, up to _COMPACT_AT_MOST of them, and
# sorted); otherwise the end lies between two cuts, and only the weights above the lower are searched.
_NEAR = 1e-4
_COMPACT_AT_MOST = 16384
_ABOVE_NEAR = (1e-2, 1e-3)
_FAR = (1e-5, 1e-6)
# For a flat distribution, a strided sample of about this many weights estimates the nucleus' size.
_SAMPLE = 2048
# Weighted draws over a large nucleus go block by block: one cumulative sum over block sums and one
# inside the chosen block instead of a cumulative sum over every kept token.
_BLOCK = 1024
# exp() of very negative numbers gives denormals, which are slow; weights below e^-80 cannot matter
# (262,144 of them sum to under 1e-29 of the most likely token's).
_LOWEST = -80.0
# Within these bounds exp() of the raw logits is safe: no denormals below, and above, 262,144 weights
# of at most e^60 sum far below float32's limit. Gemma's and Nemotron's logits lie well inside.
_RAW_EXP_LOW, _RAW_EXP_HIGH = -80.0, 60.0


class Workspace:
    """Scratch arrays for one vocabulary size, reused token after token."""

    def __init__(self, n: int, *, native: bool | None = None) -> None:
        """``native``: use the C extension (default: where it was built); False forces numpy."""
        self.n = n
        self.weights = np.empty(n, dtype=np.float32)
        self.scratch = np.empty(n, dtype=np.float32)
        self.mask = np.empty(n, dtype=bool)
        self.native = _native is not None if native is None else native
        if self.native and _native is None:
            raise RuntimeError("the native sampler was not built with this installation")

    def sample(self, logits: np.ndarray, rng: np.random.Generator, *, temperature: float, top_k: int = 0,
               top_p: float = 1.0, min_p: float = 0.0) -> int:
        """One token drawn from the chain's distribution over ``logits`` (float32, one per vocabulary entry)."""
        if temperature <= 0:
            return int(np.argmax(logits))
        if self.native:
            token = self._native_draw(logits, rng.random(), -1, temperature, top_k, top_p, min_p)[0]
            if token < 0:
                raise EngineError("the model's logits hold no finite value to sample from")
            return token
        return self._numpy_sample(logits, rng, temperature, top_k, top_p, min_p)

    def verify(self, logits: np.ndarray, rng: np.random.Generator, draft: int, *, temperature: float,
               top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> int:
        """The token at a position a draft proposed ``draft`` for: ``draft`` itself when accepted.

        Greedy: the argmax (the draft is accepted when it is the argmax). Sampling: ``draft`` with
        its probability p(draft) under the chain, else a draw from the chain's distribution with
        ``draft`` taken out and the rest renormalized. Every token t != draft comes out with
        probability (1 - p(draft)) * p(t) / (1 - p(draft)) = p(t): exactly a plain draw, whatever
        the draft was (the rule of speculative sampling for a draft that is a point mass).
        """
        if temperature <= 0:
            return int(np.argmax(logits))
        accept_u, draw_u = rng.random(), rng.random()
        if self.native:
            token, p_draft = self._native_draw(logits, draw_u, draft, temperature, top_k, top_p, min_p)
        else:
            ids, p = distribution(logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                  workspace=self)
            where = np.flatnonzero(ids == draft)
            p_draft = float(p[where[0]]) if where.size else 0.0
            rest = p.copy()
            rest[where] = 0.0
            running = np.cumsum(rest)
            token = -1 if running[-1] <= 0 else int(ids[min(int(np.searchsorted(
                running, draw_u * running[-1], side="right")), ids.size - 1)])
        if token < 0 and p_draft <= 0.0:
            raise EngineError("the model's logits hold no finite value to sample from")
        return draft if accept_u < p_draft or token < 0 else token

    def _native_draw(self, logits: np.ndarray, u: float, excluded: int, temperature: float, top_k: int,
                     top_p: float, min_p: float) -> tuple[int, float]:
        """(a draw with ``u`` from the chain's distribution less ``excluded``, p(``excluded``)); native."""
        n = logits.shape[0]
        if 0 < top_k < n:
            ids = np.sort(np.argpartition(logits, n - top_k)[n - top_k:])
            where = np.flatnonzero(ids == excluded)
            token, p = _native.sample(np.ascontiguousarray(logits[ids]), self.weights[:top_k], temperature,
                                      top_p, min_p, u, int(where[0]) if where.size else -1)
            return (int(ids[token]) if token >= 0 else -1), p
        return _native.sample(logits, self.weights, temperature, top_p, min_p, u, excluded)

    def _numpy_sample(self, logits: np.ndarray, rng: np.random.Generator, temperature: float, top_k: int,
                      top_p: float, min_p: float) -> int:
        ids, values, e, cut, mass, within, _ = self._cut(logits, top_k, top_p, min_p)
        if within is not None:
            # The usual real-text step: the few weights already gathered hold the nucleus.
            chosen = self._trim_ties(within[e.take(within) >= cut], e, cut, mass)
            weights = e.take(chosen) if temperature == 1.0 else _tempered(values.take(chosen), temperature)
        else:
            keep = np.greater_equal(e, cut, out=self.mask[:e.size])
            if np.count_nonzero(keep) <= _SORT_AT_MOST:
                chosen = self._trim_ties(np.flatnonzero(keep), e, cut, mass)
                weights = e[chosen] if temperature == 1.0 else _tempered(values[chosen], temperature)
            else:
                # A large nucleus is drawn from in place: zero weights outside it cost less than compacting.
                chosen = None
                extra = self._trim_ties(np.flatnonzero(e == cut), e, cut, mass, surplus=True)
                keep[extra] = False
                if temperature != 1.0:
                    e = self._tempered_into(values, temperature)
                weights = np.multiply(e, keep, out=self.scratch[:e.size])
        i = _draw(weights, rng)
        i = i if chosen is None else int(chosen[i])
        return i if ids is None else int(ids[i])

    def kept(self, logits: np.ndarray, *, top_k: int = 0, top_p: float = 1.0,
             min_p: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """The token ids the chain keeps and their temperature-1 weights relative to the most likely
        token's, ids ascending."""
        ids, _, e, cut, mass, _, unit = self._cut(logits, top_k, top_p, min_p)
        chosen = self._trim_ties(np.flatnonzero(e >= cut), e, cut, mass)
        return (chosen if ids is None else ids[chosen]), e[chosen] / np.float32(unit)

    @staticmethod
    def _trim_ties(candidates: np.ndarray, e: np.ndarray, cut: float, mass: float | None, *,
                   surplus: bool = False) -> np.ndarray:
        """``candidates`` (ids, ascending) less the tokens tied at the cut that the nucleus does not
        need to reach ``mass`` (it keeps the first ones, as a stable sort would); with ``surplus``,
        those left-out ids instead."""
        none = candidates[:0]
        if mass is None or cut <= 0.0:
            return none if surplus else candidates
        at_cut = e[candidates] == cut
        if np.count_nonzero(at_cut) <= 1:
            return none if surplus else candidates
        tied = candidates[at_cut]
        above = float(e.sum(where=e > cut, dtype=np.float64))
        needed = max(1, int(np.ceil((mass - above) / cut - 1e-9)))
        if surplus:
            return tied[needed:]
        return np.setdiff1d(candidates, tied[needed:], assume_unique=True)

    def _cut(self, logits: np.ndarray, top_k: int, top_p: float, min_p: float):
        """(top-k ids or None, their logits, their temperature-1 weights, the weight a kept token
        reaches, the weight the nucleus must hold when top-p decides the cut (else None), the ids,
        ascending, of a few weights known to hold every kept one (else None), and the most likely
        token's weight, which every cut is relative to)."""
        n = logits.shape[0]
        ids = None
        values = logits
        if 0 < top_k < n:
            ids = np.sort(np.argpartition(logits, n - top_k)[n - top_k:])
            values = logits[ids]
        e = self.weights[:values.size]
        top, low = float(values.max()), float(values.min())
        if _RAW_EXP_LOW <= low and top <= _RAW_EXP_HIGH:
            # exp() of the logits themselves: one pass fewer than subtracting the largest first.
            np.exp(values, out=e)
            unit = float(np.exp(np.full(1, top, dtype=np.float32))[0])
        else:
            np.subtract(values, top, out=e)
            if low < top + _LOWEST:
                np.maximum(e, _LOWEST, out=e)
            np.exp(e, out=e)
            unit = 1.0
        cut, mass, within = 0.0, None, None
        if top_p < 1.0:
            mass = top_p * _total(e)
            cut, within = self._threshold(e, mass, unit)
        if min_p * unit > cut:
            cut, mass = min_p * unit, None   # p >= min_p * p_max
        return ids, values, e, cut, mass, within, unit

    def _tempered_into(self, values: np.ndarray, temperature: float) -> np.ndarray:
        out = self.scratch[:values.size]
        np.subtract(values, values.max(), out=out)
        np.multiply(out, 1.0 / temperature, out=out)
        np.maximum(out, _LOWEST, out=out)
        return np.exp(out, out=out)

    def _gather(self, e: np.ndarray, cut: float, at_most: int) -> tuple[int, np.ndarray | None, np.ndarray | None, float]:
        """How many weights reach ``cut`` (left in ``self.mask``), and when they are at most
        ``at_most``, their ids (ascending), the weights themselves and their sum (else None, None, 0)."""
        mask = np.greater_equal(e, cut, out=self.mask[:e.size])
        count = int(np.count_nonzero(mask))
        if count > at_most:
            return count, None, None, 0.0
        found_ids = np.flatnonzero(mask)
        found = e.take(found_ids)
        return count, found_ids, found, float(found.sum(dtype=np.float64))

    def _threshold(self, e: np.ndarray, mass: float, unit: float) -> tuple[float, np.ndarray | None]:
        """The largest value v such that the weights >= v sum to at least ``mass``, and the ids of a few
        weights that include all of those (None when they are many).

        ``e`` holds non-negative weights, the largest ``unit``; ``mass`` is at most their sum. The
        tokens with ``e >= v`` are exactly the top-p nucleus: the fewest most likely tokens holding
        ``mass``. Only data-independent passes (compare, count, sum) touch the whole vocabulary:
        compacting a half-selected array costs more than sorting it.
        """
        if e.size <= _SORT_AT_MOST:
            return _threshold_in(e, 0.0, mass), None
        mask = self.mask[:e.size]
        # Most real steps: the nucleus lies among the few weights within 1e-4 of the top one.
        count, near_ids, near, near_mass = self._gather(e, _NEAR * unit, _COMPACT_AT_MOST)
        if near is not None:
            if near_mass >= mass:
                if near.size <= _SORT_AT_MOST:
                    return _threshold_in(near, 0.0, mass), near_ids
                return _flat_threshold(near, mass, 0, 0.0, np.inf), near_ids   # reorders ``near``, a copy
            cuts, (known_count, known_mass, known_cut) = _FAR, (count, near_mass, _NEAR * unit)
        else:
            cuts, (known_count, known_mass, known_cut) = _ABOVE_NEAR, (0, 0.0, np.inf)
        # The heaviest weights, counted and summed exactly, are all kept; look for the end below them.
        for relative_cut in cuts:
            cut = relative_cut * unit
            count, candidate_ids, candidates, candidate_mass = self._gather(e, cut, _SORT_AT_MOST)
            if candidates is not None:
                if candidate_mass >= mass:
                    return _threshold_in(candidates, 0.0, mass), candidate_ids
            else:
                candidate_mass = _total(np.multiply(e, mask, out=self.scratch[:e.size]))
                if candidate_mass >= mass:
                    break   # the end lies between this cut and the one before
            known_count, known_mass, known_cut = count, candidate_mass, cut
        else:
            count = e.size   # the end lies below the lowest cut: search all of them
        if 4 * count < e.size:
            # Search only the weights above the cut (compacting a few is cheaper than selecting among all).
            part = np.compress(mask, e, out=self.scratch[:count])
        else:
            part = self.scratch[:e.size]
            part[:] = e
        return _flat_threshold(part, mass, known_count, known_mass, known_cut), None


def _flat_threshold(part: np.ndarray, mass: float, known_count: int, known_mass: float, known_cut: float) -> float:
    """The threshold of a nucleus too large to sort outright; ``part`` holds the weights (it is reordered).

    A weighted quickselect: an in-place partition (a linear-time selection) splits off the k heaviest
    weights of the undecided part, their exact sum says on which side the end lies, and that side
    becomes the undecided part. The first k comes from a strided sample's estimate of the nucleus'
    size below ``known_cut`` (the ``known_count`` weights at or above it, summing to ``known_mass``,
    are all kept); later ones from what the split proved (every weight on the far side of the
    split is at most, or at least, the weight at it), never splitting off less than half, so the
    part at least halves each step.
    """
    stride = max(1, part.size // _SAMPLE)
    sample = part[::stride]
    sample = np.sort(sample[sample < known_cut])[::-1]
    position = int(np.searchsorted(known_mass + np.cumsum(sample, dtype=np.float64) * stride, mass))
    estimate = known_count + position * stride
    margin = max(_SORT_AT_MOST // 4, estimate // 32)
    # Aim the first split so that the end most likely falls on its smaller side.
    want = estimate - margin if estimate > part.size // 2 else estimate + margin
    want = max(want, known_count - 1)
    above = 0.0      # the sum of the weights heavier than all of ``part`` (all kept)
    while part.size > _SORT_AT_MOST:
        size = part.size
        k = min(max(want, 1), size - 1)
        part.partition(size - k)
        at_split = float(part[size - k])   # the lightest of the k heaviest, the heaviest of the rest
        heavy_mass = _total(part[size - k:])
        if above + heavy_mass >= mass:
            part = part[size - k:]
            # The end is among these k; leaving out the j lightest loses at least j * at_split, so
            # at most excess / at_split of them fall outside and the others are surely kept.
            surely_kept = k - int((above + heavy_mass - mass) / at_split) - 1 if at_split > 0 else 0
            want = max(surely_kept, k // 2)
        else:
            above += heavy_mass
            part = part[:size - k]
            # The rest weigh at most at_split each, so at least deficit / at_split more are needed.
            surely_kept = int((mass - above) / at_split) - 1 if at_split > 0 else 0
            want = max(surely_kept, part.size // 2)
    return _threshold_in(part, above, mass)


def _threshold_in(band: np.ndarray, above: float, mass: float) -> float:
    """The threshold when every weight above ``band``'s largest sums to ``above`` (< ``mass``)."""
    ordered = np.sort(band)[::-1]
    running = above + np.cumsum(ordered, dtype=np.float64)
    k = int(np.searchsorted(running, mass, side="left"))
    return float(ordered[min(k, ordered.size - 1)])


def _total(weights: np.ndarray) -> float:
    """The sum of a large float32 array: einsum's plain vectorized float32 sum, three times faster
    than numpy's pairwise ``sum()``; on Gemma's logits its relative error stays below ~3e-6, so only
    a token whose running sum lands that close to p can change sides."""
    return float(np.einsum("i->", weights))


def _tempered(values: np.ndarray, temperature: float) -> np.ndarray:
    return np.exp(np.maximum((values - values.max()) * (1.0 / temperature), _LOWEST))


def _draw(p: np.ndarray, rng: np.random.Generator) -> int:
    """An index drawn with probability proportional to ``p`` (non-negative, not all zero)."""
    n = p.shape[0]
    if n <= 4 * _BLOCK:
        running = np.cumsum(p, dtype=np.float64)
        return min(int(np.searchsorted(running, rng.random() * running[-1], side="right")), n - 1)
    whole = n - n % _BLOCK
    sums = p[:whole].reshape(-1, _BLOCK).sum(axis=1).astype(np.float64)
    if whole < n:
        sums = np.append(sums, p[whole:].sum(dtype=np.float64))
    running = np.cumsum(sums)
    u = rng.random() * running[-1]
    b = min(int(np.searchsorted(running, u, side="right")), running.size - 1)
    inside = np.cumsum(p[b * _BLOCK:(b + 1) * _BLOCK], dtype=np.float64)
    u -= running[b - 1] if b > 0 else 0.0
    return min(b * _BLOCK + int(np.searchsorted(inside, u, side="right")), n - 1)


def sample(logits: np.ndarray, rng: np.random.Generator, *, temperature: float, top_k: int = 0,
           top_p: float = 1.0, min_p: float = 0.0) -> int:
    """One token from the chain's distribution (a one-off Workspace: the engine keeps one per reply)."""
    return Workspace(logits.shape[0]).sample(logits, rng, temperature=temperature, top_k=top_k,
                                             top_p=top_p, min_p=min_p)


def kept(logits: np.ndarray, *, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The token ids the chain keeps and their temperature-1 weights (unnormalized), ids ascending."""
    return Workspace(logits.shape[0]).kept(logits, top_k=top_k, top_p=top_p, min_p=min_p)


def distribution(logits: np.ndarray, *, temperature: float, top_k: int = 0, top_p: float = 1.0,
                 min_p: float = 0.0, workspace: Workspace | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, probabilities) the chain samples from; temperature 0 is greedy (one id, probability 1).
    The numpy path's, or the native pass' where ``workspace`` is a native one."""
    if temperature <= 0:
        return np.array([int(np.argmax(logits))]), np.array([1.0])
    if workspace is not None and workspace.native:
        n = logits.shape[0]
        ids = np.sort(np.argpartition(logits, n - top_k)[n - top_k:]) if 0 < top_k < n else np.arange(n)
        weights = workspace.weights[:ids.size]
        _native.distribution(np.ascontiguousarray(logits[ids]), weights, temperature, top_p, min_p)
        inside = np.flatnonzero(weights)
        p = weights[inside].astype(np.float64)
        return ids[inside], p / p.sum()
    ids, weights = (workspace or Workspace(logits.shape[0], native=False)).kept(
        logits, top_k=top_k, top_p=top_p, min_p=min_p)
    if temperature != 1.0:
        weights = _tempered(logits[ids], temperature)
    p = weights.astype(np.float64)
    return ids, p / p.sum()
