"""Checks on GBNF grammar text before llama.cpp parses it.

llama.cpp's grammar parser (src/llama-grammar.cpp, parse_alternates -> parse_sequence) recurses once
per level of parentheses on the C stack: a grammar nested some thousands of levels deep overflows it
and the process dies with SIGSEGV, not an error. Hand-written and schema-generated grammars nest a
few levels; anything past ``MAX_NESTING`` is refused here.
"""

from __future__ import annotations

from localcascade.errors import UsageError

MAX_NESTING = 256


def nesting_depth(text: str) -> int:
    """The deepest parenthesis nesting outside string literals, character classes and comments."""
    depth = deepest = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in "\"[":  # a literal or a class: skip to its unescaped end
            close = '"' if c == '"' else "]"
            i += 1
            while i < n and text[i] != close:
                i += 2 if text[i] == "\\" else 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth -= 1
        i += 1
    return deepest


def check_grammar(text: str, what: str = "the grammar") -> None:
    """Refuse grammar text llama.cpp's parser would crash on (UsageError, one line)."""
    depth = nesting_depth(text)
    if depth > MAX_NESTING:
        raise UsageError(f"{what} nests parentheses {depth} levels deep; llama.cpp's parser takes at most "
                         f"{MAX_NESTING}")
