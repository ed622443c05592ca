"""`localcascade pull | list | show | rm`: get models onto this machine and manage them.

Progress and questions go to stderr; results (what was pulled, the list, the
summary) go to stdout, so `localcascade list --json | jq` works.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from localcascade.cli.app import app
from localcascade.errors import LocalCascadeError, UsageError
from localcascade.model_spec import HubFile
from localcascade.units import format_bytes, format_tokens


def _err(text: str = "") -> None:
    typer.echo(text, err=True)


def _confirm(question: str, yes: bool, *, without_terminal: str) -> None:
    """Ask on a terminal. Without one, ``without_terminal`` says what happens: "proceed" or "refuse"."""
    if yes:
        return
    if not sys.stdin.isatty():
        if without_terminal == "proceed":
            return
        raise UsageError(f"{question.rstrip('?')}: no terminal to confirm on; pass --yes")
    if not typer.confirm(question, default=True, err=True):
        raise typer.Exit(1)


# -- pull ----------------------------------------------------------------------------------

@app.command()
def pull(
    model: str = typer.Argument("auto", help="Variant (Q4_K_M), REPO:QUANT, hf://REPO/FILE.gguf, or auto: "
                                             "the best variant for this machine."),
    ctx: Optional[str] = typer.Option(None, "--ctx", help="Context length to plan for: 8192, 32K, 1M."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="Plan for a hardware profile (rtx-4090) instead of this machine."),
    vram: Optional[str] = typer.Option(None, "--vram", help="Plan for this much GPU memory, e.g. 16GiB."),
    ram: Optional[str] = typer.Option(None, "--ram", help="Plan for this much system RAM, e.g. 64GiB."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before downloading the variant `auto` chose."),
) -> None:
    """Download a model into the Hugging Face cache, resuming and verifying it."""
    from localcascade import hub
    from localcascade.resolver import resolve

    if model == "auto":
        from localcascade.hardware.resolve import hardware_for

        spec = _auto_choice(hardware_for(gpu=gpu, vram=vram, ram=ram), ctx, yes)
    else:
        spec = model
    found = resolve(spec, need="remote")
    ref, remote, stored = found.ref, found.remote, found.stored
    if remote is None:  # offline, and it is here
        _err(f"{stored.name} is already here (offline: not checked against the hub)")
        typer.echo(f"{stored.name}\t{format_bytes(stored.size)}\t{stored.path}")
        return
    shards = f" in {len(remote.files)} files" if len(remote.files) > 1 else ""
    _err(f"{ref.label}: {remote.repo}, {format_bytes(remote.size)}{shards}")
    if model != "auto":  # auto has shown its plan already
        from localcascade.hardware.resolve import hardware_for

        _check_before_download(remote, hardware_for(gpu=gpu, vram=vram, ram=ram), ctx)
    try:
        pulled = hub.pull(remote, show_progress=sys.stderr.isatty())
    except KeyboardInterrupt:
        from localcascade.errors import Interrupted

        raise Interrupted(f"interrupted: `localcascade pull {model}` again continues where this stopped") from None
    if pulled.resumed_bytes:
        _err(f"continued an interrupted download ({format_bytes(pulled.resumed_bytes)} were already here)")
    elif not pulled.downloaded_bytes:
        _err("already downloaded")
    state = "sha256 verified" if all(f.verified for f in pulled.files) else "no published sha256 to check"
    name = ref.spec if ref.kind == "variant" else ref.label
    report_unrecorded(pulled)
    typer.echo(f"{name}\t{format_bytes(pulled.size)}\t{state}\t{pulled.path}")


def _check_before_download(remote, hardware, ctx: Optional[str]) -> None:
    """Read the file's header from the hub first (a few MB of range requests): a file llama.cpp
    cannot use is refused before its gigabytes are fetched, and the user sees how it would fit."""
    from localcascade.errors import GGUFHeaderError
    from localcascade.gguf_header import read_header
    from localcascade.plan import PlanRequest
    from localcascade.units import parse_tokens

    request = PlanRequest(n_ctx=parse_tokens(ctx) if ctx else None)
    try:
        header = read_header(HubFile(remote.repo, remote.revision, remote.files[0].path).uri)
    except GGUFHeaderError as err:
        raise GGUFHeaderError(f"{err}; nothing was downloaded") from None
    except LocalCascadeError as err:  # the hub would not answer a range request: the download decides
        _err(f"  (the header could not be read first: {err})")
        return
    plan, plan_error = _plan_for(header, hardware, request)
    _err(f"  {_plan_line(plan)}" if plan is not None else f"  warning: {plan_error}")


def report_unrecorded(pulled) -> None:
    """The download is complete whatever the store index says: a record that could not be kept
    (read-only LOCALCASCADE_HOME, a broken index) is a note, after which the model is still used."""
    for reason in pulled.notes:
        _err(f"note: the download is complete ({pulled.path}), but its check could not be recorded: {reason}; "
             "`localcascade list` shows it as not verified and the next pull checks it again")


def _auto_choice(hardware, ctx: Optional[str], yes: bool) -> str:
    """Let the planner pick the catalog variant that fits ``hardware`` best; show the plan; confirm.
    Returns the variant's name."""
    from localcascade.catalog import load_catalog
    from localcascade.plan import PlanRequest
    from localcascade.policy import recommend
    from localcascade.units import parse_tokens

    request = PlanRequest(n_ctx=parse_tokens(ctx) if ctx else None)
    choice = recommend(hardware, load_catalog(), request)
    variant, plan = choice.variant, choice.plan
    plan = _plan_from_remote_header(variant, hardware, request) or plan
    _err(f"best for this machine: {variant.quant} ({format_bytes(variant.size_bytes)}) from {variant.repo}")
    _err(f"  {_plan_line(plan)}")
    for reason in plan.reasons:
        _err(f"  - {reason}")
    _confirm(f"Download {variant.quant} ({format_bytes(variant.size_bytes)})?", yes, without_terminal="proceed")
    return variant.quant


def _plan_from_remote_header(variant, hardware, request):
    """The plan from the real file's header, read with range requests; None when the hub does not answer."""
    from localcascade import settings

    if settings.hub_offline():
        return None
    try:
        from localcascade.gguf_header import read_header
        from localcascade.policy import plan_for_model

        header = read_header(HubFile(variant.repo, None, variant.files[0]).uri)
        return plan_for_model(header, hardware, request)
    except LocalCascadeError as err:
        _err(f"(planning from catalog facts: {err})")
        return None


def _plan_line(plan) -> str:
    gpu = f"GPU {format_bytes(plan.gpu_bytes)}, " if plan.gpu_bytes else ""
    return (f"{plan.verdict.replace('_', ' ')} at {format_tokens(plan.n_ctx)} context: "
            f"{gpu}RAM {format_bytes(plan.ram_bytes)}")


# -- list ----------------------------------------------------------------------------------

@app.command("list")
def list_models(
    as_json: bool = typer.Option(False, "--json", help="One JSON array on stdout."),
) -> None:
    """Models on this machine: the Hugging Face cache's GGUF models and files quantized here."""
    from localcascade import store

    models = store.list_models()
    stale = store.stale_models()   # registered, but the file is gone: shown so `rm` can forget them
    if as_json:
        typer.echo(json.dumps([m.to_dict() for m in models + stale], indent=2))
        return
    # Interrupted pulls hold disk too; said on stderr so the table stays one model per line.
    for partial in store.partial_downloads():
        _err(f"partial download: {format_bytes(partial.size)} of a file from {partial.repo} ({partial.path}); "
             "pulling the same model again continues it, deleting the file drops it")
    if not models and not stale:
        _err("no models yet: `localcascade pull` downloads the best one for this machine")
        return
    rows = [("NAME", "SIZE", "WHERE", "VERIFIED", "PATH")]
    for m in models:
        verified = (m.verified_at or "yes")[:10] if m.verified else "no"
        rows.append((m.name, format_bytes(m.size), m.where, verified, str(m.path)))
    for m in stale:
        rows.append((m.name, "-", m.where, "file missing", str(m.path)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    for m in stale:
        _err(f"{m.name}: its file {m.path} is gone; `localcascade rm {m.name}` forgets it")


# -- show ----------------------------------------------------------------------------------

@app.command()
def show(
    model: str = typer.Argument(..., help="A stored model (see `list`), a path, or hf://REPO/FILE.gguf."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="Plan for a hardware profile (rtx-4090) instead."),
    vram: Optional[str] = typer.Option(None, "--vram", help="Plan for this much GPU memory, e.g. 16GiB."),
    ram: Optional[str] = typer.Option(None, "--ram", help="Plan for this much system RAM, e.g. 64GiB."),
) -> None:
    """Architecture, file facts and the fit plan for this machine of one model."""
    from localcascade.gguf_header import read_header
    from localcascade.hardware.resolve import hardware_for
    from localcascade.model_summary import summarize
    from localcascade.resolver import resolve

    hardware = hardware_for(gpu=gpu, vram=vram, ram=ram)  # a bad --gpu is the user's first mistake to hear of
    found = resolve(model, need="header")
    stored, source = found.stored, found.header_source
    header = read_header(source)
    summary = summarize(header)
    plan, plan_error = _plan_for(header, hardware)
    if as_json:
        data = {"model": stored.to_dict() if stored else {"path": source}, "summary": summary.to_dict(),
                "plan": plan.to_dict() if plan else None, "plan_error": plan_error}
        typer.echo(json.dumps(data, indent=2))
        return
    _render_show(model, stored, summary, plan, plan_error)


def _plan_for(header, hardware, request=None):
    try:
        from localcascade.plan import PlanRequest
        from localcascade.policy import plan_for_model

        return plan_for_model(header, hardware, request or PlanRequest()), None
    except LocalCascadeError as err:
        return None, str(err)


def _render_show(label, stored, s, plan, plan_error) -> None:
    out = typer.echo
    out(f"{stored.name if stored else label}")
    out(f"  architecture   {s.architecture or 'unknown'}" + (f" ({s.name})" if s.name else ""))
    out(f"  blocks         {s.block_count}: {s.blocks['mamba']} Mamba-2, {s.blocks['moe']} MoE, "
        f"{s.blocks['attention']} attention")
    if s.pattern:
        out(f"  pattern        {s.pattern}")
    if s.expert_count:
        shared = f", {s.expert_shared_count} shared" if s.expert_shared_count else ""
        out(f"  experts        {s.expert_count} routed, {s.expert_used_count} used per token{shared}")
    if s.context_length:
        out(f"  context        {format_tokens(s.context_length)} tokens")
    out(f"  chat template  {'yes' if s.chat_template else 'no'}")
    out(f"  thinking       {'<think> </think> tokens present' if s.thinking_tokens else 'no thinking tokens'}")
    types = ", ".join(f"{n} {t}" for t, n in s.tensor_types.items())
    out(f"  tensors        {sum(s.tensor_types.values())} ({types})")
    size = format_bytes(s.file_bytes) if s.file_bytes is not None else format_bytes(s.tensor_bytes) + " of weights"
    out(f"  file           {size} in {len(s.files)} file(s)")
    for f in s.files:
        out(f"                 {f}")
    if stored is not None:
        state = f"verified ({stored.check}, {stored.verified_at})" if stored.verified else "not verified"
        out(f"  stored         {stored.where}, {state}")
        if stored.source:
            out(f"  made from      {stored.source}")
    if plan is not None:
        from localcascade.fit_report import speed_reason

        out(f"  fit            {_plan_line(plan)}")
        for reason in plan.reasons + ((speed_reason(plan),) if plan.tokens_per_s else ()):
            out(f"                 - {reason}")
    else:
        out(f"  fit            unknown ({plan_error})")


# -- rm ------------------------------------------------------------------------------------

@app.command()
def rm(
    model: str = typer.Argument(..., help="A stored model, as `localcascade list` names it."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
) -> None:
    """Delete a model's files (only files the store knows)."""
    from localcascade import store
    from localcascade.resolver import resolve

    stored = resolve(model, need="stored").stored
    files = "\n".join(f"  {f}" for f in stored.files)
    if stored.missing:
        _err(f"{stored.name}: registered, but its file is gone\n{files}")
        _confirm(f"Forget {stored.name}?", yes, without_terminal="refuse")
        store.remove(stored)
        typer.echo(f"removed {stored.name} (its file was already gone; the record is forgotten)")
        return
    _err(f"{stored.name}: {format_bytes(stored.size)} in {stored.where}\n{files}")
    _confirm(f"Delete {stored.name}?", yes, without_terminal="refuse")
    store.remove(stored)
    typer.echo(f"removed {stored.name} ({format_bytes(stored.size)})")
