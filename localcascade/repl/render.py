"""Rendering the chat: a streaming reply (its thinking trace apart from its answer), notices, warnings.

Plain terminals (``TERM=dumb``, ``NO_COLOR``, pipes) get plain text with no escape codes; a terminal
that can redraw (``cli.console.can_redraw``) gets the answer re-rendered as markdown block by block,
with a live line for what is still being written.
"""

from __future__ import annotations

import time
from typing import Callable

from rich.console import Console

from localcascade.cli.console import can_redraw, make_console
from localcascade.cli.wording import error_line, plan_brief, thought_for
from localcascade.engine.events import TurnStats
from localcascade.errors import ContextOverflowError
from localcascade.planning.plan import Plan
from localcascade.repl.commands import ERROR, INFO, TRACE, WARN, Outcome
from localcascade.repl.state import ReplState
from localcascade.units import format_tokens

# Above this share of the context window, every reply ends with a warning.
CONTEXT_WARN_FRACTION = 0.85


def chat_console(file=None) -> Console:
    """The chat's console (stdout): the one factory's, wrapping long lines only on a terminal.

    A pipe or a file has no width: rich would break prose at 80 columns; whatever shows it wraps.
    """
    console = make_console(file=file)
    console.soft_wrap = not console.is_terminal
    return console


def print_notices(console: Console, outcome: Outcome) -> None:
    styles = {INFO: "", WARN: "yellow", ERROR: "red", TRACE: "dim"}
    for notice in outcome.notices:
        console.print(notice.text, style=styles.get(notice.kind, ""), markup=False)


def context_warning(used: int, limit: int, larger: Plan | None | bool = None) -> str | None:
    """The warning past 85% of the context; ``larger`` is the next larger plan this machine would
    hold, False when it holds none, None when unknown."""
    if not limit or used / limit <= CONTEXT_WARN_FRACTION:
        return None
    start = f"context {100 * used / limit:.0f}% full ({used}/{limit}): /save FILE then /clear to start over"
    if larger is False:
        return start + f"; this machine holds no larger context of this model than {format_tokens(limit)}"
    if larger is None:
        return start + ", or restart with a larger --ctx if `localcascade fit` says it fits"
    return (start + f", or restart with --ctx {format_tokens(larger.n_ctx)}: this machine holds that "
            f"{plan_brief(larger)}")


def overflow_advice(err: ContextOverflowError) -> list[str]:
    return [
        error_line(err),
        "nothing was dropped: /save FILE keeps this conversation, /clear starts a new one, "
        "or restart with a larger --ctx if `localcascade fit` says it fits",
    ]


class _MarkdownBlocks:
    """Split a streaming answer into finished markdown blocks and the unfinished tail.

    A block ends at a blank line outside a code fence; finished blocks can be
    rendered as markdown at once while the tail is still being written.
    """

    def __init__(self) -> None:
        self.pending = ""

    def feed(self, text: str) -> list[str]:
        self.pending += text
        done = []
        while True:
            cut = self._block_end(self.pending)
            if cut is None:
                return done
            block, self.pending = self.pending[:cut], self.pending[cut:].lstrip("\n")
            if block.strip():
                done.append(block)

    @staticmethod
    def _block_end(text: str) -> int | None:
        in_fence = False
        offset = 0
        lines = text.split("\n")
        for index, line in enumerate(lines[:-1]):     # the last line is still being written
            if line.lstrip().startswith(("```", "~~~")):
                in_fence = not in_fence
            offset += len(line) + 1
            if not in_fence and not line.strip() and index > 0:
                return offset
        return None

    def flush(self) -> str:
        rest, self.pending = self.pending, ""
        return rest


class TurnPrinter:
    """Renders one reply's events: the trace apart from the answer, then the footer."""

    def __init__(self, console: Console, state: ReplState, count_tokens: Callable[[str], int]):
        self.console = console
        self.state = state
        self.count_tokens = count_tokens
        self.fancy = can_redraw(console)
        self.thinking: list[str] = []
        self.answer: list[str] = []
        self.started = time.monotonic()
        self.think_end: float | None = None
        self.trace_closed = False
        self.live = None
        self.blocks = _MarkdownBlocks()
        self.last_refresh = 0.0

    # -- events

    def thinking_text(self, text: str) -> None:
        if not self.thinking and self.state.trace == "show":
            self.console.print("Thinking", style="dim italic")
            text = text.lstrip("\n")
        self.thinking.append(text)
        if self.state.trace == "show":
            self.console.print(text, end="", style="dim", markup=False, soft_wrap=True)
        elif self.fancy:
            self._live_show(f"thinking… {time.monotonic() - self.started:.1f} s", style="dim italic")

    def answer_text(self, text: str) -> None:
        if not self.answer:
            self.close_trace()
            text = text.lstrip("\n")
            if not text:
                return
        self.answer.append(text)
        if not self.fancy:
            self.console.print(text, end="", markup=False, soft_wrap=True)
            return
        for block in self.blocks.feed(text):
            self._print_block(block)
        self._live_show(self.blocks.pending)

    def finish(self, stats: TurnStats | None, *, failed: bool = False) -> None:
        """End of the reply (complete, stopped, or failed)."""
        self.close_trace(stats)
        if stats is not None and self.thinking:
            self.state.last_trace_tokens = stats.thinking_tokens      # exact, where the summary estimated
        if self.fancy:
            rest = self.blocks.flush()
            self._stop_live()
            if rest.strip():
                self._print_block(rest)
        elif self.answer and not "".join(self.answer).endswith("\n"):
            self.console.print()
        if not self.answer and not self.thinking and not failed:
            self.console.print("(no reply)", style="dim")

    def tool_event(self, event) -> None:
        """A tool call starting or finished: shown like the trace (in full, one line, or not at all)."""
        from localcascade.tools.loop import ToolCallFinished, ToolCallStarted
        from localcascade.tools.transcript import describe_call, describe_result, summarize_call

        if isinstance(event, ToolCallStarted):
            self._stop_live()
            if self.state.trace == "show":
                self.console.print(describe_call(event.index, event.code), style="dim", markup=False)
            elif self.fancy:
                self._live_show(f"running python call {event.index}…", style="dim italic")
        elif isinstance(event, ToolCallFinished):
            self._stop_live()
            self.state.last_tool_calls.append((event.index, event.result))
            if self.state.trace == "show":
                self.console.print(describe_result(event.result), style="dim", markup=False)
            elif self.state.trace == "collapse":
                line = summarize_call(event.index, event.result.code, event.result)
                self.console.print(f"{line} (/tools last shows it)", style="dim italic", markup=False)

    # -- trace

    def close_trace(self, stats: TurnStats | None = None) -> None:
        """The thinking is over: summarise it (collapse), end its block (show), remember it (/trace last)."""
        if self.trace_closed or not self.thinking:
            return
        self.trace_closed = True
        self.think_end = time.monotonic()
        trace = "".join(self.thinking).strip()
        tokens = stats.thinking_tokens if stats is not None else self.count_tokens(trace)
        seconds = self.think_end - self.started
        self.state.last_trace, self.state.last_trace_tokens = trace, tokens
        self.state.last_trace_seconds = seconds
        self._stop_live()
        if self.state.trace == "show":
            if not "".join(self.thinking).endswith("\n"):
                self.console.print()
            self.console.print(f"({thought_for(tokens, seconds)})", style="dim italic")
        elif self.state.trace == "collapse":
            self.console.print(f"{thought_for(tokens, seconds)} (/trace last shows it)", style="dim italic")
        if self.state.trace != "hide":
            self.console.print()

    # -- live region (fancy terminals only)

    def _print_block(self, block: str) -> None:
        from rich.markdown import Markdown

        target = self.live.console if self.live is not None else self.console
        target.print(Markdown(block.strip("\n")))
        target.print()

    def _live_show(self, text: str, style: str = "") -> None:
        from rich.live import Live
        from rich.text import Text

        # Only the tail fits on screen; a live region taller than the terminal cannot be redrawn.
        height = max(3, self.console.size.height - 3)
        lines = text.split("\n")[-height:]
        renderable = Text("\n".join(lines), style=style)
        if self.live is None:
            self.live = Live(renderable, console=self.console, auto_refresh=False, transient=True)
            self.live.start()
            self.last_refresh = 0.0
        now = time.monotonic()
        # A refresh per token flickers; fifteen a second reads as smooth.
        self.live.update(renderable, refresh=now - self.last_refresh > 1 / 15)
        if now - self.last_refresh > 1 / 15:
            self.last_refresh = now

    def _stop_live(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

