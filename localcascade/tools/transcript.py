"""Tool calls as a terminal shows them (ask's stderr, the REPL): plain text, no I/O."""

from __future__ import annotations


def describe_call(index: int, code: str) -> str:
    """A call as the terminal shows it: a header and the code, indented."""
    body = "\n".join("    " + line for line in code.rstrip("\n").splitlines()) or "    (no code)"
    return f"[python call {index}]\n{body}"


def summarize_call(index: int, code: str, result) -> str:
    """One line for a call and its result (the REPL's collapsed form)."""
    lines = len(code.rstrip("\n").splitlines())
    status = result.error or (f"exit {result.exit}" if result.exit else "ok")
    return f"[python call {index}: {lines} line{'s' if lines != 1 else ''} of code, {status}, {result.seconds:.2f} s]"


def describe_result(result) -> str:
    """A call's result as the terminal shows it, cut to a few lines."""
    status = result.error or (f"exit {result.exit}" if result.exit else "ok")
    lines = [f"[python result {status}, {result.seconds:.2f} s]"]
    shown = result.for_model().splitlines()
    lines += ["    " + line for line in shown[:12]]
    if len(shown) > 12:
        lines.append(f"    ... {len(shown) - 12} more lines")
    return "\n".join(lines)
