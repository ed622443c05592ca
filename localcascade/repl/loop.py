"""The chat loop: read a line, run it as a command or send it as a message, render the reply.

Ctrl-C during a reply goes through ``cli.stop_signals.StopOnSignals``, as SIGTERM does in ``ask``:
the first calls the turn's ``stop()``, which ends the reply at the next token or between two
chunks of a prompt still being read, and the engine still yields its stats; a second one
interrupts at once. Either way the chat stays open and what was said stays in the conversation.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, replace
from typing import Iterator

from rich.console import Console

from localcascade import settings as lc_settings
from localcascade.cli.stop_signals import StopOnSignals
from localcascade.cli.wording import context_line, error_line, stats_footer
from localcascade.engine.events import AnswerText, ThinkingText, TurnStats
from localcascade.errors import ContextOverflowError, LocalCascadeError
from localcascade.planning.plan import Plan
from localcascade.repl.commands import is_command, not_utf8, run_command
from localcascade.repl.input import InputTooLong, LineReader, UnfinishedBlock
from localcascade.repl.render import (
    CONTEXT_WARN_FRACTION,
    TurnPrinter,
    chat_console,
    context_warning,
    overflow_advice,
    print_notices,
)
from localcascade.repl.state import ReplState
from localcascade.stderr import say


def run_repl(state: ReplState, *, console: Console | None = None, reader: LineReader | None = None) -> int:
    """Talk until /bye, Ctrl-D or a second Ctrl-C at an empty prompt; returns the exit code (0)."""
    console = console or chat_console()
    console.print(f"{state.engine.model_name} ready. /help for commands, Ctrl-D or /bye to leave.",
                  style="dim", markup=False)
    reader = reader or LineReader(lc_settings.data_dir() / "history")
    warned_interrupt = False
    while True:
        try:
            line = reader.read(state.prompt_label())
        except UnfinishedBlock as err:
            # Not sent, as a shell or Python treats an unclosed quote at the end of a script: a
            # missing closing fence more likely means input that was cut off than a finished
            # message. On a terminal, Ctrl-D there is a choice to leave; in a pipe the input is
            # incomplete, so the exit status says so.
            held = f"{err.lines} line{'s' if err.lines != 1 else ''}" if err.lines else "empty"
            say(f'the input ended inside a """ block ({held}), which was not sent; close the block with """ to send it')
            return 0 if getattr(reader, "show_prompt", False) else 1
        except InputTooLong as err:
            console.print(f"error: that input was not sent: it is longer than {err.limit:,} characters "
                          "(pipe long text into `localcascade ask` instead)", style="red", markup=False)
            continue
        except OSError as err:
            say(f"cannot read the chat input: {err.strerror or err}")
            return 1
        except EOFError:
            if reader.show_prompt:
                console.print()      # leave the prompt's line
            return 0
        except KeyboardInterrupt:
            if reader.interrupted_text.strip():
                warned_interrupt = False      # Ctrl-C on a typed line just discards it
                continue
            if warned_interrupt:
                return 0
            warned_interrupt = True
            console.print("(Ctrl-C again, Ctrl-D or /bye to leave)", style="dim")
            continue
        warned_interrupt = False
        if not line.strip():
            continue
        problem = not_utf8(line)
        if problem is not None:
            console.print(f"error: that input was not sent: {problem} (the chat takes UTF-8 text)",
                          style="red", markup=False)
            continue
        if is_command(line):
            outcome = run_command(state, line)
            print_notices(console, outcome)
            if outcome.exit:
                return 0
            continue
        message = line.lstrip()[1:] if line.lstrip().startswith("//") else line
        stream_reply(console, state, message)


@dataclass
class _TurnStart:
    """What was known when a message was sent, to account for a reply the engine could not finish."""

    messages: int                 # messages in the conversation before it
    context_used: int             # tokens the context held (the part the engine can reuse)
    sent: float                   # time.monotonic()
    first_text: float | None = None


def _interrupt_now(signum: int) -> None:
    """A second Ctrl-C: the engine may be busy in a long prompt chunk; stop waiting for it."""
    raise KeyboardInterrupt


def stream_reply(console: Console, state: ReplState, text: str) -> None:
    """Send one message and render the reply as it streams; Ctrl-C stops it and keeps what was said."""
    printer = TurnPrinter(console, state, state.engine.count_tokens)
    stats: TurnStats | None = None
    stopped = False
    events: Iterator = iter(())
    options = state.reply_options()
    before = _TurnStart(len(state.chat.messages), state.chat.context_used, time.monotonic())
    try:
        with StopOnSignals((signal.SIGINT,), _interrupt_now) as ctrl_c:
            state.last_tool_calls = []
            if state.tools and state.python_tool is not None:
                from localcascade.tools.loop import run_with_tools

                events = run_with_tools(state.chat, text, options, state.python_tool, max_calls=state.max_tool_calls)
            else:
                events = state.chat.send(text, options)
            ctrl_c.turn = events
            if ctrl_c.received is not None:
                events.stop()     # Ctrl-C came while the reply was being set up
            for event in events:
                if isinstance(event, ThinkingText):
                    printer.thinking_text(event.text)
                elif isinstance(event, AnswerText):
                    printer.answer_text(event.text)
                elif isinstance(event, TurnStats):
                    stats = event
                else:
                    printer.tool_event(event)
                if before.first_text is None and not isinstance(event, TurnStats):
                    before.first_text = time.monotonic()
            # The turn was stopped (it ends at the next token, or between prompt chunks) and the
            # engine still yielded its TurnStats, so the interrupted reply is counted like any other.
            stopped = ctrl_c.received is not None
    except KeyboardInterrupt:
        stopped = True        # a second Ctrl-C: the engine was cut off before its TurnStats
    except ContextOverflowError as err:
        printer.finish(None, failed=True)
        for line in overflow_advice(err):
            console.print(line, style="yellow", markup=False)
        return
    except LocalCascadeError as err:
        # The engine failed this turn (not the session): say so and keep the conversation going.
        printer.finish(None, failed=True)
        console.print(f"error: {error_line(err)}", style="red", markup=False)
        return
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()        # the engine keeps what was said so far in the history
    printer.finish(stats)
    if stopped:
        if stats is None and len(state.chat.messages) > before.messages:
            stats = _estimated_stats(state, printer, before)      # the reply is in the history
        if stats is not None:
            stats = replace(stats, stop_reason="interrupted")
        # With stats the footer below says how full the context is; without, this line does.
        where = "" if stats is not None else \
            f" context {context_line(state.chat.context_used, state.chat.context_limit)}"
        console.print(f"[reply stopped; what was said is kept]{where}", style="yellow", markup=False)
    if stats is not None:
        state.record(stats)
        console.print(stats_footer(stats), style="dim", markup=False)
        if stats.stop_reason == "length" and stats.ended_in_thinking:
            console.print(
                "(max_tokens ran out while thinking, before any answer: /set max_tokens N, "
                "or /budget N to cap the thinking)",
                style="dim",
            )
        elif stats.stop_reason == "length":
            console.print("(reply cut at max_tokens: /set max_tokens N for longer replies)", style="dim")
    warning = context_warning(state.chat.context_used, state.chat.context_limit, _larger_plan(state))
    if warning:
        console.print(warning, style="yellow", markup=False)


def _estimated_stats(state: ReplState, printer: TurnPrinter, start: _TurnStart) -> TurnStats:
    """TurnStats for a reply cut off before the engine's own: counted from what was shown, and
    from how far the context grew, so /stats and the session totals still include it."""
    count = state.engine.count_tokens
    thinking = count("".join(printer.thinking).strip()) if printer.thinking else 0
    answer = count("".join(printer.answer).strip()) if printer.answer else 0
    used = state.chat.context_used
    prompt = max(0, used - thinking - answer)
    now = time.monotonic()
    first = start.first_text if start.first_text is not None else now
    return TurnStats(
        prompt_tokens=prompt,
        evaluated_tokens=max(0, prompt - start.context_used),
        thinking_tokens=thinking,
        answer_tokens=answer,
        prompt_seconds=first - start.sent,
        generation_seconds=now - first,
        context_used=used,
        context_limit=state.chat.context_limit,
        stop_reason="interrupted",
    )


def _larger_plan(state: ReplState) -> Plan | None | bool:
    """The next larger plan for the warning (once the context is nearly full; remembered)."""
    chat = state.chat
    if not chat.context_limit or chat.context_used / chat.context_limit <= CONTEXT_WARN_FRACTION:
        return None
    if state.hardware is None or state.engine.plan is None:
        return None
    if state.larger_plan is None:
        from localcascade.resolve.plans import larger_plan

        try:
            state.larger_plan = larger_plan(state.engine.model_path, state.engine.plan, state.hardware) or False
        except LocalCascadeError:
            return None
    return state.larger_plan
