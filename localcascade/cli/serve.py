"""`localcascade serve`: plan, load, and serve the model over an OpenAI-compatible HTTP API."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from localcascade.cli import options, tool_options
from localcascade.cli.app import app
from localcascade.errors import UsageError
from localcascade.stderr import say

API_KEY_ENV = "LOCALCASCADE_API_KEY"
MAX_PARALLEL = 64     # llama.cpp allows 256 sequences; past this the per-step Python work dominates
# A key is a short token (OpenAI's are ~170 characters); the file is read whole at start and the key
# compared on every request, so a key file of a gigabyte must not be taken.
API_KEY_MAX_BYTES = 4096


@app.command()
def serve(
    model_arg: Optional[str] = typer.Argument(None, help="GGUF file or model name.",
                                              autocompletion=options.complete_model_name),
    model: Optional[str] = options.model_option(),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default: this machine only)."),
    port: int = typer.Option(8080, "--port", help="Port to listen on (0: any free port, printed at start)."),
    parallel: int = typer.Option(1, "--parallel", help="Conversations decoded together, each with its own --ctx."),
    queue: int = typer.Option(16, "--queue", help="Requests that may wait for a free conversation slot (then 503)."),
    ctx: Optional[str] = options.ctx_option("the plan's"),
    ngl: Optional[int] = options.ngl_option(),
    cpu_moe: Optional[int] = options.cpu_moe_option(),
    kv_type: Optional[str] = options.kv_type_option(),
    flash_attn: Optional[bool] = options.flash_attn_option(),
    chat_template: Optional[Path] = options.chat_template_option(),
    draft: str = options.draft_option(),
    api_key_file: Optional[Path] = typer.Option(
        None, "--api-key-file", help=f"File holding the API key clients must send (or set {API_KEY_ENV})."
    ),
    max_body: str = typer.Option("8MiB", "--max-body", help="Largest request body accepted (413 beyond)."),
    cors_origin: Optional[list[str]] = typer.Option(
        None, "--cors-origin", help="A web page origin (https://app.example) whose scripts may call the server; "
                                    "repeatable; '*' allows any page. Others are refused (403)."),
    allowed_host: Optional[list[str]] = typer.Option(
        None, "--allowed-host", help="Another name clients reach the server by (Host header); repeatable; "
                                     "'*' allows any. Others are refused (403: DNS rebinding)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="llama.cpp threads (default: physical cores)."),
    tools: Optional[str] = tool_options.tools_option(),
    tools_unsafe: bool = tool_options.unsafe_option(),
    max_tool_calls: Optional[int] = tool_options.max_tool_calls_option(),
    verbose: bool = options.verbose_option(),
) -> int:
    """Serve the model over an OpenAI-compatible HTTP API (chat completions, streaming, tools)."""
    from localcascade.units import parse_size

    if model_arg and model and model_arg != model:
        raise UsageError(f"two models named ({model_arg!r} and --model {model!r}): give one")
    if not 1 <= parallel <= MAX_PARALLEL:
        raise UsageError(f"--parallel must be 1 to {MAX_PARALLEL}, got {parallel}")
    if queue < 0:
        raise UsageError(f"--queue must be >= 0, got {queue}")
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0 to 65535, got {port}")
    if threads is not None and not 1 <= threads <= 512:
        raise UsageError(f"--threads must be 1 to 512, got {threads}")
    body_limit = parse_size(max_body)
    if body_limit < 1024:
        raise UsageError(f"--max-body must be at least 1KiB, got {max_body}")
    api_key = _api_key(api_key_file)
    origins = _origins(cors_origin or [])
    # The sandbox is found (and tried) before the port and the model: a refusal must come first.
    tool, max_calls = tool_options.python_tool(tools, tools_unsafe, max_tool_calls)
    from dataclasses import replace

    from localcascade.server.run import listen

    request = options.plan_request(ctx=ctx, ngl=ngl, cpu_moe=cpu_moe, kv_type=kv_type, flash_attn=flash_attn,
                                   draft=draft)
    request = replace(request, n_seq=parallel)
    listener = listen(host, port)   # before the load: a busy port must not cost minutes
    try:
        from localcascade.server.guard import GuardSettings, host_names

        guard = GuardSettings(api_key=api_key, max_body_bytes=body_limit, cors_origins=origins,
                              host_names=host_names(host, tuple(allowed_host or ())),
                              upload_budget_bytes=max(8 * body_limit, 64 * 1024 * 1024))
        return _serve(listener, host, model_arg or model, request, chat_template, guard, queue, verbose,
                      threads, tool, max_calls)
    finally:
        listener.close()


def _serve(listener, host, spec, request, chat_template, guard, queue, verbose, threads, tool, max_calls) -> int:
    from localcascade.cli.wording import describe_plan
    from localcascade.server.app import ServerSettings
    from localcascade.server.run import base_url, is_loopback, serve_forever

    def show_plan(plan) -> None:
        for line in describe_plan(plan):
            say(line)

    choice, engine = options.open_model(spec, request, how="MODEL or --model NAME|FILE", before_load=show_plan,
                                        chat_template=chat_template, verbose=verbose, threads=threads)
    model_path = choice.path
    with engine:
        served = None
        if tool is not None:
            from localcascade.server.generation import ServerTool

            served = ServerTool(tool, max_calls)
        from localcascade.server.tool_choice import template_shows_tools

        tools_shown = template_shows_tools(engine.template)
        call_tokens = None not in (engine.tool_call_open, engine.tool_call_close)
        settings = ServerSettings(model_id=model_path.stem, guard=guard, tool=served, tools_shown=tools_shown,
                                  call_tokens=call_tokens)
        if not tools_shown:
            say("warning: the chat template does not show tools to the model: requests' tools are not seen, "
                 "and tool_choice \"required\" or a named function is refused (--chat-template FILE to fix)")
        if not is_loopback(host) and guard.api_key is None:
            say(f"warning: listening on {host} without an API key: anyone who can reach this port "
                 f"can use the model (set {API_KEY_ENV} or --api-key-file)")
        if served is not None:
            say(f"the model may run python on this machine ({'sandboxed' if tool.sandbox.sandboxed else 'WITHOUT a sandbox'}, "
                 f"at most {max_calls} calls per reply); results are reported as message.tool_results")
        say(f"serving {settings.model_id} at {base_url(listener)} (OpenAI base URL); Ctrl-C stops")
        stopped_by = serve_forever(engine, listener, settings, queue_size=queue)
    if stopped_by is not None:
        say(f"stopped ({stopped_by})")
    return 0


def _api_key(path: Optional[Path]) -> Optional[str]:
    """The key from --api-key-file, else from the environment; a key on the command line would show in ps.

    The file is read through safe_io: a regular file of at most API_KEY_MAX_BYTES (a FIFO, a device
    such as /dev/zero, or a huge file is refused at once). The key must be printable ASCII, as
    clients send it in an HTTP header: another key would be accepted here and never match."""
    from localcascade import safe_io

    if path is not None:
        key = safe_io.read_text_input(path, what="--api-key-file", limit=API_KEY_MAX_BYTES, allow_pipe=False).strip()
        return _checked_key(key, f"--api-key-file {path}")
    key = os.environ.get(API_KEY_ENV)
    if key is None:
        return None
    if len(key.encode("utf-8", "surrogateescape")) > API_KEY_MAX_BYTES:
        raise UsageError(f"{API_KEY_ENV} is longer than {API_KEY_MAX_BYTES} bytes, the most accepted for a key")
    return _checked_key(key.strip(), API_KEY_ENV)


def _checked_key(key: str, source: str) -> str:
    if not key:
        raise UsageError(f"{source} is empty" if source != API_KEY_ENV else f"{API_KEY_ENV} is set but empty")
    bad = next((c for c in key if not (c.isascii() and c.isprintable()) or c.isspace()), None)
    if bad is not None:
        raise UsageError(f"{source}: the key holds {bad!r}; a key must be printable ASCII without spaces "
                         "(clients send it in an HTTP header)")
    return key


def _origins(values: list[str]) -> frozenset[str]:
    from localcascade.server.guard import origin_of

    try:
        return frozenset(origin_of(v) for v in values)
    except ValueError as err:
        raise UsageError(f"--cors-origin {err}") from None
