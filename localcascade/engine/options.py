"""The limits of a reply's generation options, checked once: where a GenerationOptions is built.

`ask`/`run` flags, the chat's /set and /budget, and a server request all end in one
GenerationOptions; its construction (``__post_init__``, which ``dataclasses.replace`` runs too)
checks every value here and raises OptionError naming the field and what it takes. Each front
end words that one error with its own name for the field: the command line its flag (exit 2),
the chat its /set name, the server the request's field (a 400 with ``param``).

The limits: temperature 0 to 2 (OpenAI's range; 0 is greedy, and a vanishing one samples greedily
too, engine/sampling.py), top-p above 0 up to 1, min-p 0 to 1, top-k 0 (none) or more, the token
counts from 1 (max tokens) or 0 (thinking budget), the whole numbers up to llama.cpp's int32, and
finite numbers only (NaN would compare false with every bound and sample nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from localcascade.errors import OptionError

INT32_MAX = 2**31 - 1


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Limit:
    accepted: str                      # what the option takes, as every front end's message says it
    within: Callable[[Any], bool]


LIMITS: dict[str, Limit] = {
    "temperature": Limit("a number from 0 to 2", lambda v: _number(v) and 0 <= v <= 2),
    "top_p": Limit("a number above 0, at most 1", lambda v: _number(v) and 0 < v <= 1),
    "min_p": Limit("a number from 0 to 1", lambda v: _number(v) and 0 <= v <= 1),
    "top_k": Limit(f"a whole number from 0 (no top-k) to {INT32_MAX}", lambda v: _whole(v) and 0 <= v <= INT32_MAX),
    "max_tokens": Limit(f"a whole number from 1 to {INT32_MAX}", lambda v: _whole(v) and 1 <= v <= INT32_MAX),
    "think_budget": Limit(f"a whole number from 0 to {INT32_MAX}", lambda v: _whole(v) and 0 <= v <= INT32_MAX),
    "seed": Limit("a whole number", _whole),     # the sampler takes its low 32 bits
}


def check(options: Any) -> None:
    """OptionError for the first set value of ``options`` (a GenerationOptions) outside its limits;
    None means "the default" and is always accepted."""
    for field, limit in LIMITS.items():
        value = getattr(options, field, None)
        if value is not None and not limit.within(value):
            raise OptionError(field, value, limit.accepted)
