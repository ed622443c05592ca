"""Quantization targets: the llama.cpp file types quant/ offers, and what each should produce.

The numeric ``llama_ftype`` of a target is not repeated here: the worker looks
it up by name in the bindings (``LLAMA_FTYPE_MOSTLY_<NAME>``), so this table
cannot drift from the C enum. What llama.cpp does not tell us is which tensor
type a target mostly produces; that is what the output is checked against.
"""

from __future__ import annotations

from localcascade.errors import UsageError

# target name -> the ggml type most weight matrices get (when their rows allow it).
MAIN_TYPE = {
    "Q4_0": "Q4_0",
    "Q4_1": "Q4_1",
    "Q5_0": "Q5_0",
    "Q5_1": "Q5_1",
    "Q8_0": "Q8_0",
    "Q2_K": "Q2_K",
    "Q3_K_S": "Q3_K",
    "Q3_K_M": "Q3_K",
    "Q3_K_L": "Q3_K",
    "Q4_K_S": "Q4_K",
    "Q4_K_M": "Q4_K",
    "Q5_K_S": "Q5_K",
    "Q5_K_M": "Q5_K",
    "Q6_K": "Q6_K",
    "IQ4_NL": "IQ4_NL",
    "IQ4_XS": "IQ4_XS",
    "BF16": "BF16",
    "F16": "F16",
}

# What llama.cpp substitutes when a tensor's row length is not a multiple of the
# target's block size (src/llama-quant.cpp: tensor_type_fallback). Nemotron's
# hidden size 2688 makes this the common case, not the exception.
FALLBACK_TYPE = {
    "Q2_K": "Q4_0",
    "Q3_K": "Q4_0",
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
    "IQ4_XS": "IQ4_NL",
}

# Source files must hold unquantized weights (the big matrices in one of these).
UNQUANTIZED_TYPES = frozenset({"F32", "F16", "BF16"})


def normalize_target(name: str) -> str:
    """Return the canonical target name ("q4_k_m" -> "Q4_K_M") or raise UsageError."""
    canonical = name.strip().upper()
    if canonical not in MAIN_TYPE:
        raise UsageError(
            f"unknown quantization type {name!r}; choose one of: {', '.join(sorted(MAIN_TYPE))}"
        )
    return canonical


def accepted_main_types(target: str) -> set[str]:
    """Types the bulk of the output may have for ``target``: its main type or that type's fallback."""
    main = MAIN_TYPE[normalize_target(target)]
    accepted = {main}
    if main in FALLBACK_TYPE:
        accepted.add(FALLBACK_TYPE[main])
    return accepted
