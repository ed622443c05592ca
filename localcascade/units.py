"""Byte sizes and token counts as people write them ("24GiB", "32K") and as we print them."""

from __future__ import annotations

import re

from localcascade.errors import UsageError

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
# No machine has a petabyte of memory: a larger size is a typo, and a long enough digit string
# even overflows float to infinity, which int() cannot take.
MAX_SIZE_BYTES = 1024**5
# llama.cpp keeps context, batch and token counts in 32-bit fields, some of them signed.
MAX_TOKENS = 2**31 - 1


def _quoted(text: str, limit: int = 40) -> str:
    """The user's text for a one-line message, shortened: a pasted megabyte stays one short line."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_size(text: str) -> int:
    """Parse a byte size: "24GiB", "24 GB", "1.5TiB", "512MiB", "1024" (bytes)."""
    match = _SIZE_RE.match(text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise UsageError(f"cannot read size {_quoted(text)}: write it like 24GiB, 16GB or 512MiB")
    value = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if value > MAX_SIZE_BYTES:
        raise UsageError(f"size {_quoted(text)} is larger than 1 PiB: write it like 24GiB, 16GB or 512MiB")
    return int(value)


_TOKENS_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmM]?)\s*$")


def parse_tokens(text: str) -> int:
    """Parse a context length: "4096", "32K" (=32768), "1M" (=1048576)."""
    match = _TOKENS_RE.match(text)
    if not match:
        raise UsageError(f"cannot read token count {_quoted(text)}: write it like 8192, 32K or 1M")
    scale = {"": 1, "k": 1024, "m": 1024**2}[match.group(2).lower()]
    value = float(match.group(1)) * scale
    if value > MAX_TOKENS:
        raise UsageError(f"token count {_quoted(text)} is too large: at most {MAX_TOKENS} (2047M)")
    value = int(value)
    if value <= 0:
        raise UsageError(f"token count must be positive, got {text!r}")
    return value


def format_bytes(n: int | float) -> str:
    """Binary units, as llama.cpp and nvidia-smi print them: 23.03 GiB, 512.0 MiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            if unit == "B":
                return f"{value:.0f} B"
            return f"{value:.2f} {unit}" if unit == "GiB" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"


def format_tokens(n: int) -> str:
    """Context lengths the way people say them: 4K, 128K, 1M, or the exact count."""
    if n >= 1024**2 and n % 1024**2 == 0:
        return f"{n // 1024**2}M"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}K"
    return str(n)


def format_duration(seconds: float) -> str:
    """A duration for people: "40 s", "12 min", "3.5 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
