"""The ``python`` tool: its schema for the chat template, and running one call in the sandbox.

``PythonTool.execute(code) -> ToolResult`` is the whole interface a front end (ask, the REPL,
a server) needs: it never raises for any code (a lone surrogate, a NUL, megabytes of it) or
anything the code does; a crash, a limit hit, a timeout or code that cannot run is a result
with ``error`` set, which goes back to the model like any other. Only Ctrl-C propagates.
Each call starts a fresh interpreter (no state is kept between calls): simpler to contain,
and nothing of one call can wait for the next.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Callable

from localcascade.errors import SandboxUnavailableError
from localcascade.tools.sandbox import Limits, RunOutcome, Sandbox, Unsandboxed

NAME = "python"
STOPPED_BY_USER = "stopped by the user"
# What goes back to the model from each stream: enough for a result, bounded for the context.
MODEL_CHARS_PER_STREAM = 4000


@lru_cache(maxsize=1)
def schema() -> dict:
    """The tool as given to the chat template (``tools=[schema()]``)."""
    data = json.loads(resources.files("localcascade.tools").joinpath("python_tool.json").read_text(encoding="utf-8"))
    data.pop("_comment", None)
    return data


@dataclass(frozen=True)
class ToolResult:
    code: str
    stdout: str
    stderr: str
    result: str | None      # repr of the last expression's value, if it had one
    exit: int | None        # the interpreter's exit status; None when it was stopped
    seconds: float
    error: str | None       # why it was stopped, for the user and the model; None if it ran to the end

    def to_dict(self) -> dict:
        """The JSON shape of ``ask --json``'s ``tool_calls`` entries."""
        return {"code": self.code, "stdout": self.stdout, "stderr": self.stderr, "result": self.result,
                "exit": self.exit, "seconds": round(self.seconds, 3), "error": self.error}

    def for_model(self) -> str:
        """The tool message's content: what the code printed, its value, and why it stopped."""
        parts = []
        if self.stdout:
            parts.append(_cut(self.stdout))
        if self.stderr:
            parts.append("[stderr]\n" + _cut(self.stderr))
        if self.result is not None:
            parts.append(f"[result] {_cut(self.result)}")
        if self.error:
            parts.append(f"[error] {self.error}")
        elif self.exit not in (0, None):
            parts.append(f"[exit status {self.exit}]")
        return "\n".join(parts) if parts else "[no output]"


def _cut(text: str) -> str:
    if len(text) <= MODEL_CHARS_PER_STREAM:
        return text.rstrip("\n")
    return text[:MODEL_CHARS_PER_STREAM] + f"\n[... {len(text) - MODEL_CHARS_PER_STREAM} more characters cut]"


def find_sandbox(*, unsandboxed: bool = False) -> Sandbox:
    """This machine's sandbox, checked to work; SandboxUnavailableError naming what to install."""
    if unsandboxed:
        return Unsandboxed()
    if sys.platform.startswith("linux"):
        from localcascade.tools.linux_sandbox import bubblewrap

        return bubblewrap()
    if sys.platform == "darwin":
        from localcascade.tools.macos_sandbox import seatbelt

        return seatbelt()
    raise SandboxUnavailableError(
        f"--tools python has no sandbox on {sys.platform} (bubblewrap on Linux, sandbox-exec on macOS); "
        "--tools-unsafe-no-sandbox runs the model's code as you, with resource limits only"
    )


class PythonTool:
    """Runs the model's Python code in ``sandbox`` under ``limits``."""

    name = NAME

    def __init__(self, sandbox: Sandbox | None = None, limits: Limits | None = None) -> None:
        self.sandbox = sandbox if sandbox is not None else find_sandbox()
        self.limits = limits or Limits()

    def describe(self) -> str:
        """One line for users: the sandbox, and how the call's memory is held."""
        return f"{self.sandbox.name}; {self.sandbox.memory_bound(self.limits)}"

    def execute(self, code: str, *, should_stop: Callable[[], bool] | None = None) -> ToolResult:
        """Run ``code``; Ctrl-C (KeyboardInterrupt) stops it and propagates. Never raises otherwise.

        ``should_stop`` is polled while the code runs (a front end's own stop request): when it
        says yes the code is killed and the result's error is STOPPED_BY_USER.
        """
        refused = _refusal(code, self.limits)
        if refused is not None:
            return _not_run(code, refused)
        try:
            outcome = self.sandbox.run(code, self.limits, should_stop=should_stop)
        except Exception as err:  # noqa: BLE001 - documented: the model gets an error, never the caller
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            return _not_run(code, f"could not run the code: {reason or type(err).__name__}")
        return ToolResult(
            code=code,
            stdout=outcome.stdout.decode("utf-8", errors="replace"),
            stderr=outcome.stderr.decode("utf-8", errors="replace"),
            result=outcome.result.decode("utf-8", errors="replace") if outcome.result else None,
            exit=outcome.exit_code,
            seconds=outcome.seconds,
            error=_explain(outcome, self.limits),
        )


def _refusal(code, limits: Limits) -> str | None:
    """Why ``code`` cannot be run at all (what no interpreter would take), or None."""
    from localcascade.units import format_bytes

    if not isinstance(code, str):
        return f"the code must be text, not {type(code).__name__}"
    if len(code) > limits.code_bytes:   # characters <= bytes: a cheap first look
        return f"the code is longer than {format_bytes(limits.code_bytes)}"
    try:
        size = len(code.encode("utf-8"))
    except UnicodeEncodeError as err:
        return f"the code is not valid text: a lone surrogate (U+{ord(code[err.start]):04X}) at character {err.start}"
    if size > limits.code_bytes:
        return f"the code is longer than {format_bytes(limits.code_bytes)}"
    if "\0" in code:
        return f"the code holds a NUL character at character {code.index(chr(0))}"
    return None


def _not_run(code, error: str) -> ToolResult:
    text = code if isinstance(code, str) else repr(code)
    shown = text.encode("utf-8", errors="replace").decode("utf-8")[:MODEL_CHARS_PER_STREAM]
    return ToolResult(code=shown, stdout="", stderr="", result=None, exit=None, seconds=0.0, error=error)


def _explain(outcome: RunOutcome, limits: Limits) -> str | None:
    from localcascade.units import format_bytes

    why = outcome.stopped
    if why is None:
        return None
    if why == "wall time":
        return f"stopped after {limits.wall_seconds:g} s (the wall-time limit)"
    if why == "CPU time":
        return f"stopped: used its {limits.cpu_seconds} s of CPU time"
    if why == "output":
        return f"stopped: printed more than {format_bytes(limits.output_bytes)}"
    if why == "file size":
        return f"stopped: wrote a file past {format_bytes(limits.file_bytes)}"
    if why == "interrupted":
        return STOPPED_BY_USER
    if why == "memory":
        return f"stopped: its processes used more than {format_bytes(limits.memory_bytes)} of memory together"
    if why == "killed":
        return "killed (a resource limit was hit)"
    return f"ended by {why}"
