"""Sampling: the model card's defaults (profiles/sampling.json) and llama.cpp's sampler chain."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import sys
import tempfile
from functools import lru_cache
from importlib import resources

import numpy as np

from localcascade.engine import nucleus
from localcascade.errors import EngineError, UsageError


@lru_cache(maxsize=1)
def sampling_profile() -> dict:
    """The shipped sampling defaults: {"think": {...}, "no_think": {...}, "think_close_text": str}."""
    text = resources.files("localcascade.profiles").joinpath("sampling.json").read_text(encoding="utf-8")
    return json.loads(text)


# A temperature this low divides logit gaps of float32's resolution (~1e-6 at the logits' scale)
# into differences of 10 or more: the choice is the greedy one to within e^-10.
GREEDY_BELOW = 1e-5


def resolve(options) -> dict:
    """The sampling values for ``options`` (a GenerationOptions, whose values were checked when it
    was built: engine/options.py): user values over the mode's defaults."""
    defaults = sampling_profile()["think" if options.think else "no_think"]
    chosen = {
        "temperature": options.temperature,
        "top_p": options.top_p,
        "top_k": options.top_k,
        "min_p": getattr(options, "min_p", None),
    }
    return {key: defaults.get(key) if value is None else value for key, value in chosen.items()}


class Sampler:
    """The sampler for one reply; ``close()`` frees what it holds in llama.cpp.

    Without a grammar the model card's chain (top-k, top-p, min-p, temperature) runs on the host
    over a view of llama.cpp's logits (nucleus.py: exact, without sorting the vocabulary, which
    llama.cpp's top-p does on flat steps at ~17 ms a token for a 131K vocabulary). A grammar
    needs llama.cpp's own chain, which masks the candidates through the grammar first.
    """

    def __init__(self, vocab: int, options) -> None:
        import llama_cpp

        self._lib = llama_cpp
        values = resolve(options)
        temperature = float(values["temperature"] or 0.0)
        # Below GREEDY_BELOW the weights are the greedy choice's anyway, and dividing by such a
        # temperature overflows float32 (1e-300: inf x 0 = NaN, numpy warnings, no token): greedy.
        self._temperature = 0.0 if temperature < GREEDY_BELOW else temperature
        self._top_k = int(values["top_k"] or 0)
        self._top_p = 1.0 if values["top_p"] is None else float(values["top_p"])
        self._min_p = float(values["min_p"] or 0.0)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self._chain = None
        self._grammar = None  # owned by the chain; kept to ask it what it allows
        grammar = getattr(options, "grammar", None)
        if not grammar:
            self._rng = np.random.default_rng(None if options.seed is None else options.seed & 0xFFFFFFFF)
            self._workspace = nucleus.Workspace(self._n_vocab)
            return
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self._chain = chain
        try:
            g = grammar_sampler(vocab, grammar)
        except UsageError:
            self.close()
            raise
        llama_cpp.llama_sampler_chain_add(chain, g)
        self._grammar = g
        if self._temperature <= 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
            return
        if self._top_k:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(self._top_k))
        if self._top_p < 1.0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(self._top_p, 1))
        if self._min_p:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_min_p(self._min_p, 1))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(self._temperature))
        seed = llama_cpp.LLAMA_DEFAULT_SEED if options.seed is None else options.seed & 0xFFFFFFFF
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))

    @property
    def has_grammar(self) -> bool:
        return bool(self._grammar)

    def sample(self, ctx: int, idx: int = -1) -> int:
        """Pick the next token from the logits of output ``idx`` (default: the last one evaluated)."""
        if self._chain is None:
            return self._workspace.sample(self._row(ctx, idx), self._rng, temperature=self._temperature,
                                          top_k=self._top_k, top_p=self._top_p, min_p=self._min_p)
        token = self._lib.llama_sampler_sample(self._chain, ctx, idx)
        if token < 0:
            raise EngineError("the sampler found no allowed token (a grammar that cannot continue?)")
        return token

    def verify(self, ctx: int, idx: int, draft: int) -> int:
        """The token at output ``idx``, where a draft proposed ``draft`` (``draft`` when kept): the
        chain's distribution exactly, as a plain draw (nucleus.Workspace.verify; drafts.accept's rule)."""
        if self._chain is not None:
            # A grammar's state advances token by token inside llama.cpp: drafts are not verified under one.
            raise EngineError("drafts cannot be verified under a grammar")
        return self._workspace.verify(self._row(ctx, idx), self._rng, draft, temperature=self._temperature,
                                      top_k=self._top_k, top_p=self._top_p, min_p=self._min_p)

    def _row(self, ctx: int, idx: int) -> np.ndarray:
        """A view of llama.cpp's logits of output ``idx`` (valid until the next decode)."""
        pointer = self._lib.llama_get_logits_ith(ctx, idx)
        if not pointer:
            raise EngineError("llama.cpp holds no logits to sample from")
        return np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))

    def accept(self, token: int) -> None:
        """Tell the grammar about a token we fed ourselves (the host chain keeps no state).

        Only for tokens ``allows`` approved: llama.cpp aborts the process when a grammar is
        handed a token it cannot take.
        """
        if self._chain is not None:
            self._lib.llama_sampler_accept(self._chain, token)

    def allows(self, tokens: list[int]) -> bool:
        """Whether the grammar, if any, can take ``tokens`` next; asked of a copy, so nothing changes."""
        if not self._grammar:
            return True
        lib = self._lib
        probe = lib.llama_sampler_clone(self._grammar)
        try:
            for token in tokens:
                candidate = (lib.llama_token_data * 1)(lib.llama_token_data(token, 0.0, 0.0))
                candidates = lib.llama_token_data_array(candidate, 1, -1, False)
                lib.llama_sampler_apply(probe, ctypes.byref(candidates))
                if candidate[0].logit == float("-inf"):  # the grammar masked it out
                    return False
                lib.llama_sampler_accept(probe, token)
            return True
        finally:
            lib.llama_sampler_free(probe)

    def close(self) -> None:
        if self._chain:
            self._lib.llama_sampler_free(self._chain)
            self._chain = None
            self._grammar = None


def grammar_sampler(vocab: int, grammar: str) -> int:
    """A llama.cpp grammar sampler for GBNF ``grammar``; UsageError with the parser's message if it does not parse.

    The parser needs the vocabulary (token pieces), so checking a grammar needs at least a
    vocab-only load of the model (see loader.vocab_only).
    """
    import llama_cpp

    from localcascade.engine.llama_log import LOG

    from localcascade.engine.grammar import check

    if not grammar.strip():
        raise UsageError("the grammar is empty: it would constrain nothing (GBNF expected)")
    check(grammar)   # the limits that keep llama.cpp's parser and sampler alive, before any C code
    mark = LOG.mark()
    with _stderr_captured() as captured:
        g = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
    if not g:
        # The parser reports on stderr, the grammar checks through llama.cpp's log.
        detail = _grammar_error("".join(captured).splitlines() + LOG.since(mark))
        raise UsageError("the grammar does not parse" + (f": {detail}" if detail else " (GBNF expected)"))
    return g


def _grammar_error(lines: list[str]) -> str:
    """One line from what llama.cpp said about a grammar it refused."""
    lines = [line.strip() for line in lines if line.strip() and line.strip() != "failed to parse grammar"]
    for i, line in enumerate(lines):
        prefix = "parse: error parsing grammar: "
        if line.startswith(prefix):
            # "expecting ')' at " is followed by the rest of the input on the next line.
            message = line[len(prefix):].strip()
            rest = lines[i + 1] if i + 1 < len(lines) else ""
            return f"{message} {rest[:40]!r}" if rest and message.endswith(" at") else message
    return lines[0] if lines else ""


def check_grammar(vocab: int, grammar: str) -> None:
    import llama_cpp

    llama_cpp.llama_sampler_free(grammar_sampler(vocab, grammar))


@contextlib.contextmanager
def _stderr_captured():
    """Catch what C code writes to fd 2 (llama.cpp's grammar parser prints its errors there).

    Yields a list that holds the captured text once the block has ended.
    """
    sys.stderr.flush()
    captured: list[str] = []
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", errors="replace"))
