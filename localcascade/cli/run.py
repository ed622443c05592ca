"""`localcascade run`: pick the model, show the plan, load it, and start the chat (localcascade.repl)."""

from __future__ import annotations

import io
import os
import stat
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from localcascade.cli import options, tool_options
from localcascade.cli.app import app
from localcascade.errors import ModelNotFoundError, UsageError
from localcascade.stderr import say

_NOTHING_TO_READ = ("standard input is closed (or /dev/null) and the chat reads its messages from it: "
                    "run it from a terminal or pipe the messages in (`localcascade ask` answers one prompt)")


@app.command()
def run(
    model_arg: Optional[str] = typer.Argument(None, help="GGUF file or model name.",
                                              autocompletion=options.complete_model_name),
    model: Optional[str] = options.model_option(),
    think: bool = options.think_option(),
    trace: str = typer.Option("collapse", "--trace", help="Show the thinking trace: show, hide or collapse."),
    think_budget: Optional[int] = options.think_budget_option(),
    system: Optional[str] = options.system_option(),
    temp: Optional[float] = options.temp_option(),
    top_p: Optional[float] = options.top_p_option(),
    top_k: Optional[int] = options.top_k_option(),
    max_tokens: Optional[int] = options.max_tokens_option(),
    seed: Optional[int] = options.seed_option(),
    ctx: Optional[str] = options.ctx_option(),
    prefer: Optional[str] = options.prefer_option(),
    ngl: Optional[int] = options.ngl_option(),
    cpu_moe: Optional[int] = options.cpu_moe_option(),
    kv_type: Optional[str] = options.kv_type_option(),
    flash_attn: Optional[bool] = options.flash_attn_option(),
    chat_template: Optional[Path] = options.chat_template_option(),
    draft: str = options.draft_option(),
    grammar_file: Optional[Path] = typer.Option(
        None, "--grammar-file", help="Constrain every reply (thinking included) to a GBNF grammar FILE."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Download the recommended variant without asking "
                             "(without a terminal nobody is asked)."),
    tools: Optional[str] = tool_options.tools_option(),
    tools_unsafe: bool = tool_options.unsafe_option(),
    max_tool_calls: Optional[int] = tool_options.max_tool_calls_option(),
    verbose: bool = options.verbose_option(),
) -> int:
    """Chat with the model in the terminal (the best variant you have, if none is named)."""
    from localcascade.repl.loop import run_repl
    from localcascade.repl.state import TRACE_MODES, ReplState

    if model_arg and model and model_arg != model:
        raise UsageError(f"two models named ({model_arg!r} and --model {model!r}): give one")
    trace = trace.lower()
    if trace not in TRACE_MODES:
        raise UsageError(f"--trace takes show, hide or collapse, not {trace!r}")
    # Validates the sampling values with the same messages as `ask`.
    gen = options.generation_options(
        think=think, think_budget=think_budget, temp=temp, top_p=top_p, top_k=top_k, max_tokens=max_tokens,
        seed=seed,
    )
    request = options.plan_request(ctx=ctx, ngl=ngl, cpu_moe=cpu_moe, kv_type=kv_type, flash_attn=flash_attn,
                                   think=think, prefer=prefer, draft=draft)

    grammar = options.read_grammar_file(grammar_file) if grammar_file is not None else None
    python_tool, max_calls = tool_options.python_tool(tools, tools_unsafe, max_tool_calls)

    from localcascade.hardware.resolve import hardware_for

    hardware = hardware_for()  # this machine, unknown bandwidths filled in
    model_path = _choose_model(model_arg or model, hardware, request, yes)
    if _stdin_is_empty():
        # Before the load, which can take minutes for a model this size, only to read nothing.
        raise UsageError(_NOTHING_TO_READ)

    from localcascade.cli.wording import alternative_words, describe_plan
    from localcascade.engine.session import Chat

    def show_plan(plan) -> None:
        for line in describe_plan(plan):
            say(line)
        for alternative in plan.alternatives:
            say(f"  alternative, {alternative_words(alternative)}")

    _, engine = options.open_model(str(model_path), request, hardware=hardware, before_load=show_plan,
                                   chat_template=chat_template, verbose=verbose, for_tools=python_tool is not None)
    with engine:
        state = ReplState(
            engine=engine,
            chat=Chat(engine, system=system),
            options=replace(gen, grammar=grammar),
            trace=trace,
            hardware=hardware,
            python_tool=python_tool,
            tools=python_tool is not None,
            max_tool_calls=max_calls,
        )
        return run_repl(state)


def _stdin_is_empty() -> bool:
    """stdin closed at start (the CLI puts /dev/null in its place) or /dev/null itself."""
    if sys.stdin is None:
        return True
    try:
        mine, null = os.fstat(sys.stdin.fileno()), os.stat(os.devnull)
    except (OSError, ValueError, io.UnsupportedOperation):
        return False      # not a real file (a test's StringIO): there is something to read
    return stat.S_ISCHR(mine.st_mode) and mine.st_rdev == null.st_rdev


def _choose_model(spec: Optional[str], hardware, request, yes: bool) -> Path:
    """The named model; else the best-fitting variant already pulled; else the recommended one, pulled now."""
    from localcascade.resolve.resolver import NoDefaultModelError, resolve

    try:
        return resolve(spec, need="file", hardware=hardware, request=request).path
    except NoDefaultModelError:
        pass
    if _stdin_is_empty():
        # Gigabytes are not fetched for a chat that has nothing to read.
        raise ModelNotFoundError("no model pulled yet: `localcascade pull` downloads the best variant for this "
                                 "machine (nothing is downloaded now: standard input is closed or /dev/null, so "
                                 "the chat would have nothing to read)")
    say("no Nemotron-Cascade-2 model pulled yet")
    from localcascade.cli.downloads import recommend_and_fetch

    return recommend_and_fetch(hardware, request, yes=yes).path
