"""`localcascade ask`: one question, the answer on stdout, for shell pipes.

stdout gets the answer and nothing else (streamed), or one JSON object with
--json. Everything else - load progress, thinking (--show-thinking), stats,
errors - goes to stderr.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from localcascade.cli import options, tool_options
from localcascade.cli.app import app
from localcascade.cli.stop_signals import StopOnSignals
from localcascade.cli.wording import loaded_line, plan_json, reply_stats_line
from localcascade.errors import Interrupted, LocalCascadeError, Terminated, UsageError

# `kill`, `timeout`, systemd and a closed terminal: the reply stops whole, then the command exits.
_TERMINATING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def read_prompt(args: List[str], stdin) -> tuple[str, str | None]:
    """Piped stdin first, then the arguments, joined by a blank line; and the piped document when
    a question follows it (its state is kept: the next question about it reads only the question).

    stdin is read up to the prompt cap (``< /dev/zero`` stops there instead of filling memory).
    """
    from localcascade import safe_io

    parts = []
    if stdin is not None and not stdin.isatty():
        data = safe_io.read_stream(stdin, what="the prompt on stdin", limit=safe_io.PROMPT_MAX_BYTES)
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError as err:
                raise UsageError(f"stdin is not UTF-8 text (byte {err.start})") from None
        if data.strip():
            parts.append(data.strip("\n"))
    words = []
    for arg in args or []:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError("the prompt arguments are not UTF-8 text") from None
        words.append(arg)
    if words and " ".join(words).strip():
        parts.append(" ".join(words))
    if not parts:
        raise UsageError('no prompt: give it as arguments or on stdin (echo "..." | localcascade ask)')
    return "\n\n".join(parts), (parts[0] if len(parts) == 2 else None)


class _ThinkingWriter:
    """Thinking text to stderr, dim on a colour terminal.

    Written as it comes, not through rich: the model's text reaches stderr byte for byte (rich
    would expand its tabs), with only the two codes that dim it around it."""

    def __init__(self) -> None:
        from localcascade.settings import no_color

        self.dim = sys.stderr.isatty() and not no_color()
        self.open = False

    def write(self, text: str) -> None:
        if not self.open:
            self.open = True
            if self.dim:
                sys.stderr.write("\033[2m")
        sys.stderr.write(text)
        sys.stderr.flush()

    def end(self) -> None:
        if self.open:
            sys.stderr.write("\033[0m\n" if self.dim else "\n")
            sys.stderr.flush()
            self.open = False


@app.command()
def ask(
    prompt: Optional[List[str]] = typer.Argument(None, help="The question (stdin, if piped, comes first)."),
    model: Optional[str] = options.model_option(),
    think: bool = options.think_option(),
    think_budget: Optional[int] = options.think_budget_option(),
    system: Optional[str] = options.system_option(),
    temp: Optional[float] = options.temp_option(),
    top_p: Optional[float] = options.top_p_option(),
    top_k: Optional[int] = options.top_k_option(),
    max_tokens: Optional[int] = options.max_tokens_option(),
    seed: Optional[int] = options.seed_option(),
    ctx: Optional[str] = options.ctx_option(),
    ngl: Optional[int] = options.ngl_option(),
    cpu_moe: Optional[int] = options.cpu_moe_option(),
    kv_type: Optional[str] = options.kv_type_option(),
    flash_attn: Optional[bool] = options.flash_attn_option(),
    chat_template: Optional[Path] = options.chat_template_option(),
    draft: str = options.draft_option(),
    grammar_file: Optional[Path] = typer.Option(None, "--grammar-file", help="GBNF grammar FILE the reply must follow."),
    show_thinking: bool = typer.Option(False, "--show-thinking", help="Print the reasoning to stderr."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (answer, reasoning, usage, timings, plan)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Nothing on stderr but errors."),
    tools: Optional[str] = tool_options.tools_option(),
    tools_unsafe: bool = tool_options.unsafe_option(),
    max_tool_calls: Optional[int] = tool_options.max_tool_calls_option(),
    verbose: bool = options.verbose_option(),
) -> int:
    """Answer one prompt; only the answer goes to stdout."""
    gen = options.generation_options(
        think=think, think_budget=think_budget, temp=temp, top_p=top_p, top_k=top_k, max_tokens=max_tokens,
        seed=seed,
    )
    if grammar_file is not None:
        gen.grammar = options.read_grammar_file(grammar_file)
    request = options.plan_request(ctx=ctx, ngl=ngl, cpu_moe=cpu_moe, kv_type=kv_type, flash_attn=flash_attn,
                                   think=think, draft=draft)
    text, document = read_prompt(prompt or [], sys.stdin)
    tool = tool_options.python_tool(tools, tools_unsafe, max_tool_calls, quiet=quiet)

    from localcascade.engine.session import Chat

    started = time.perf_counter()
    try:
        choice, engine = options.open_model(model, request, how="--model NAME|FILE", chat_template=chat_template,
                                            verbose=verbose, grammar=gen.grammar, show_progress=not quiet,
                                            for_tools=tool[0] is not None)
    except KeyboardInterrupt:
        raise Interrupted("interrupted while loading the model") from None
    plan = choice.plan
    load_seconds = time.perf_counter() - started
    with engine:
        if not quiet:
            print(f"localcascade: {loaded_line(engine.model_name, plan, load_seconds)}", file=sys.stderr)
            if request.n_ctx and engine.n_ctx_train and request.n_ctx > engine.n_ctx_train:
                print(
                    f"localcascade: warning: --ctx {request.n_ctx} is more than the {engine.n_ctx_train} tokens "
                    f"{engine.model_name} was trained on; replies may degrade past that",
                    file=sys.stderr,
                )
        chat = Chat(engine, system=system)
        try:
            return _answer(engine, chat, text, gen, as_json, show_thinking, quiet, load_seconds, tool, document)
        except KeyboardInterrupt:
            # Raised as our own error: typer would turn a bare KeyboardInterrupt into a silent 130.
            raise Interrupted("interrupted") from None
        except BrokenPipeError:
            # The reader went away (`| head -1`): stop generating and end quietly. Handled here
            # because click turns an EPIPE escaping the command into exit status 1.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0


def _answer(engine, chat, text, gen, as_json, show_thinking, quiet, load_seconds, tool=(None, 0),
            document=None) -> int:
    """Stream one reply: answer to stdout (or one JSON object), thinking and stats to stderr.

    With a tool, answer text is held until the reply ends: text the model writes before a
    tool call is not the answer (it goes to stderr with the calls, under --show-thinking).
    """
    python_tool, max_calls = tool
    thinking_out = _ThinkingWriter() if show_thinking and not as_json else None
    answer: list[str] = []
    calls: list[dict] = []
    with StopOnSignals(_TERMINATING, _terminate_now) as termination:
        if python_tool is None:
            events = chat.send(text, gen, document=document)
        else:
            from localcascade.tools.loop import run_with_tools

            events = run_with_tools(chat, text, gen, python_tool, max_calls=max_calls)
        termination.turn = events
        if termination.received is not None:
            events.stop()   # the signal came while the reply was being set up
        stats, wrote_answer = _stream(events, answer, calls, thinking_out, as_json, python_tool is not None)
    if thinking_out is not None:
        thinking_out.end()
    if python_tool is not None and answer and not as_json:
        sys.stdout.write("".join(answer).lstrip("\n"))
        sys.stdout.flush()
        wrote_answer = True
    if wrote_answer and not "".join(answer).endswith("\n"):
        sys.stdout.write("\n")
        sys.stdout.flush()
    if as_json:
        result = _result(engine, chat, "".join(answer), stats, load_seconds)
        if python_tool is not None:
            result["tool_calls"] = calls
        json.dump(result, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
        sys.stdout.flush()
    if stats is not None and not quiet:
        print(f"localcascade: {reply_stats_line(stats)}", file=sys.stderr)
    if termination.received is not None:
        raise Terminated(termination.received)   # what was said is out; now the exit status says why
    return _exit_code(stats, "".join(answer), gen.max_tokens, max_calls)


def _stream(events, answer: list[str], calls: list[dict], thinking_out, as_json: bool, with_tool: bool):
    """Write the reply's events as they come; returns (its TurnStats, whether answer text went to stdout)."""
    from localcascade.engine.events import AnswerText, ThinkingText, TurnStats

    stats, wrote_answer = None, False
    for event in events:
        if isinstance(event, ThinkingText):
            if thinking_out is not None:
                thinking_out.write(event.text)
        elif isinstance(event, AnswerText):
            answer.append(event.text)
            if not as_json and not with_tool:
                if thinking_out is not None:
                    thinking_out.end()
                sys.stdout.write(event.text)
                sys.stdout.flush()
                wrote_answer = True
        elif isinstance(event, TurnStats):
            stats = event
        elif with_tool:
            answer[:] = _tool_event(event, answer, calls, thinking_out)
    return stats, wrote_answer


def _terminate_now(signum: int) -> None:
    raise Terminated(signum)


def _tool_event(event, answer: list[str], calls: list[dict], thinking_out) -> list[str]:
    """A tool call starting or finishing: the text so far was not the answer; show the call on stderr."""
    from localcascade.tools import transcript
    from localcascade.tools.loop import ToolCallFinished, ToolCallStarted

    if isinstance(event, ToolCallStarted):
        if thinking_out is not None:
            thinking_out.end()
            said = "".join(answer).strip()
            if said:
                print(said, file=sys.stderr)
            print(transcript.describe_call(event.index, event.code), file=sys.stderr, flush=True)
        return []
    if isinstance(event, ToolCallFinished):
        calls.append(event.result.to_dict())
        if thinking_out is not None:
            print(transcript.describe_result(event.result), file=sys.stderr, flush=True)
        return []
    return answer   # the call's own text as it streams (ToolCallText): shown when it runs


def _exit_code(stats, answer: str, max_tokens: int | None, max_calls: int = 0) -> int:
    if stats is not None and stats.stop_reason == "length" and stats.ended_in_thinking and not answer.strip():
        if max_tokens is not None and stats.completion_tokens >= max_tokens:
            raise LocalCascadeError(
                f"no answer: thinking used all {max_tokens} tokens of --max-tokens; "
                "raise --max-tokens, set a --think-budget below it, or use --no-think"
            )
        raise LocalCascadeError(
            f"no answer: the context ({stats.context_limit} tokens) filled up while thinking; "
            "raise --ctx, set --think-budget, or use --no-think"
        )
    if stats is not None and stats.stop_reason == "tool_limit" and not answer.strip():
        raise LocalCascadeError(
            f"no answer: the model kept calling tools past the limit of {max_calls} per reply (--max-tool-calls)"
        )
    if not answer.strip():
        # Empty stdout with status 0 would pass for an answer in a script.
        if stats is not None and stats.stop_reason == "length":
            limit = (f"--max-tokens ({max_tokens})" if max_tokens is not None and stats.completion_tokens >= max_tokens
                     else f"the context ({stats.context_limit} tokens)")
            raise LocalCascadeError(f"no answer: {limit} ran out before any answer text; raise it")
        after = " after thinking" if stats is not None and stats.thinking_tokens else ""
        raise LocalCascadeError(f"no answer: the model ended its reply{after} without answering")
    return 0


def _result(engine, chat, answer: str, stats, load_seconds: float) -> dict:
    usage = timings = None
    if stats is not None:
        usage = {
            "prompt_tokens": stats.prompt_tokens,
            "evaluated_tokens": stats.evaluated_tokens,
            "cached_tokens": stats.prompt_tokens - stats.evaluated_tokens,
            "thinking_tokens": stats.thinking_tokens,
            "answer_tokens": stats.answer_tokens,
            "completion_tokens": stats.completion_tokens,
            "drafted_tokens": stats.drafted_tokens,
            "accepted_draft_tokens": stats.accepted_tokens,
        }
        timings = {
            "load_s": round(load_seconds, 4),
            "prompt_s": round(stats.prompt_seconds, 4),
            "time_to_first_token_s": round(stats.prompt_seconds, 4),
            "generation_s": round(stats.generation_seconds, 4),
            "prompt_tokens_per_s": round(stats.prompt_tokens_per_s, 2),
            "generation_tokens_per_s": round(stats.generation_tokens_per_s, 2),
        }
    return {
        "model": engine.model_name,
        "model_path": str(engine.model_path),
        "answer": answer,
        "reasoning": chat.last_reasoning,
        "stop_reason": stats.stop_reason if stats is not None else None,
        "usage": usage,
        "timings": timings,
        "plan": plan_json(engine.plan),
    }
