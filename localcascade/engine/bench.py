"""llama-bench style throughput: prompt processing (ppN) and generation (tgN) tokens per second.

Like llama-bench, both tests start from an empty context and feed random
tokens (no sampling): pp evaluates N tokens in batches, tg evaluates N tokens
one at a time, which is what generation costs per token.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass

from localcascade.errors import BenchSizeError, UsageError


@dataclass(frozen=True)
class BenchResult:
    test: str                 # "pp512", "tg128"
    n_tokens: int
    tokens_per_s: tuple[float, ...]   # one per repetition

    @property
    def mean(self) -> float:
        return statistics.fmean(self.tokens_per_s)

    @property
    def stddev(self) -> float:
        return statistics.stdev(self.tokens_per_s) if len(self.tokens_per_s) > 1 else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["tokens_per_s"] = list(self.tokens_per_s)
        data["mean"] = self.mean
        data["stddev"] = self.stddev
        return data


def run_bench(engine, *, prompt_tokens: int = 512, gen_tokens: int = 128, repetitions: int = 5,
              seed: int = 0) -> list[BenchResult]:
    """Time ppN and tgN on ``engine`` (an Engine), after one untimed warm-up run of each."""
    if repetitions < 1:
        raise UsageError(f"repetitions must be >= 1, got {repetitions}")
    if prompt_tokens < 0 or gen_tokens < 0 or prompt_tokens + gen_tokens == 0:
        raise BenchSizeError(prompt_tokens, gen_tokens)
    if max(prompt_tokens, gen_tokens) > engine.n_ctx:
        raise BenchSizeError(prompt_tokens, gen_tokens, engine.n_ctx)
    rng = random.Random(seed)
    n_vocab = engine.vocab.n_tokens

    def tokens(n: int) -> list[int]:
        return [rng.randrange(n_vocab) for _ in range(n)]

    def pp_once() -> float:
        engine.reset()
        batch = tokens(prompt_tokens)
        start = time.perf_counter()
        engine.decoder.evaluate(0, batch)
        return prompt_tokens / (time.perf_counter() - start)

    def tg_once() -> float:
        engine.reset()
        stream = tokens(gen_tokens)
        start = time.perf_counter()
        for token in stream:
            engine.decoder.evaluate(0, [token])
        return gen_tokens / (time.perf_counter() - start)

    results = []
    for name, count, once in (("pp", prompt_tokens, pp_once), ("tg", gen_tokens, tg_once)):
        if count == 0:
            continue
        once()   # warm-up: first-touch of mmapped weights, thread pool start
        samples = tuple(once() for _ in range(repetitions))
        results.append(BenchResult(f"{name}{count}", count, samples))
    engine.reset()
    return results
