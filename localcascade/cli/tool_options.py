"""The `--tools` options of `ask` and `run`, and turning them into a PythonTool.

The sandbox is found (and tried) here, before the model loads: a refusal should not
come after minutes of loading. No heavy imports: `localcascade --help` imports this.
"""

from __future__ import annotations

from typing import Optional

import typer

from localcascade.errors import UsageError
from localcascade.stderr import say

TOOL_NAMES = ("python",)
UNSAFE_FLAG = "--tools-unsafe-no-sandbox"


def tools_option():
    return typer.Option(None, "--tools", help="Let the model run code while it answers: python "
                        "(in a sandbox: no network, no files of yours; see the README).")


def unsafe_option():
    return typer.Option(False, UNSAFE_FLAG, help="DANGEROUS: run the model's code as you, without a sandbox "
                        "(resource limits only). Never the default.")


def max_tool_calls_option():
    return typer.Option(None, "--max-tool-calls", help="At most N tool calls per reply (default 8).")


def python_tool(tools: Optional[str], unsafe: bool, max_calls: Optional[int], *, quiet: bool = False):
    """(PythonTool or None, the calls cap); SandboxUnavailableError if no sandbox works here."""
    from localcascade.tools.loop import DEFAULT_MAX_CALLS

    if max_calls is not None and max_calls < 1:
        raise UsageError(f"--max-tool-calls must be at least 1, got {max_calls}")
    if tools is None:
        if unsafe:
            raise UsageError(f"{UNSAFE_FLAG} goes with --tools python")
        if max_calls is not None:
            raise UsageError("--max-tool-calls goes with --tools python")
        return None, DEFAULT_MAX_CALLS
    name = tools.strip().lower()
    if name not in TOOL_NAMES:
        raise UsageError(f"--tools takes {', '.join(TOOL_NAMES)}, not {tools!r}")
    from localcascade.tools.python_tool import PythonTool, find_sandbox

    sandbox = find_sandbox(unsandboxed=unsafe)
    if unsafe and not quiet:
        say("WARNING: the model's code runs WITHOUT a sandbox, as you: it can read, change and "
            "delete your files and use the network")
    return PythonTool(sandbox), max_calls or DEFAULT_MAX_CALLS
