"""`localcascade pull | list | show | rm`: get models onto this machine and manage them.

Progress and questions go to stderr; results (what was pulled, the list, the
summary) go to stdout, so `localcascade list --json | jq` works.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from localcascade.cli import options
from localcascade.cli.app import app
from localcascade.cli.wording import plan_json
from localcascade.errors import UsageError
from localcascade.units import format_bytes, format_tokens
from localcascade.stderr import say



def _confirm_deletion(question: str, yes: bool) -> None:
    """Deleting asks on a terminal; without one it needs --yes (a script must say so to delete)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question.rstrip('?')}: no terminal to confirm on; pass --yes")
    if not typer.confirm(question, default=True, err=True):
        raise typer.Exit(1)


# -- pull ----------------------------------------------------------------------------------

@app.command()
def pull(
    model: str = typer.Argument("auto", help="Variant (Q4_K_M), REPO:QUANT, hf://REPO/FILE.gguf, or auto: "
                                             "the best variant for this machine.",
                                autocompletion=options.complete_pull_model),
    ctx: Optional[str] = typer.Option(None, "--ctx", help="Context length to plan for: 8192, 32K, 1M."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="Plan for a hardware profile (rtx-4090) instead of this machine."),
    vram: Optional[str] = typer.Option(None, "--vram", help="Plan for this much GPU memory, e.g. 16GiB."),
    ram: Optional[str] = typer.Option(None, "--ram", help="Plan for this much system RAM, e.g. 64GiB."),
    prefer: Optional[str] = options.prefer_option(),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before downloading the variant `auto` chose "
                                                       "(without a terminal nobody is asked)."),
) -> None:
    """Download a model into the Hugging Face cache, resuming and verifying it."""
    from localcascade.cli import downloads
    from localcascade.hardware.resolve import hardware_for
    from localcascade.planning.plan import PlanRequest
    from localcascade.planning.policy import check_preference
    from localcascade.units import parse_tokens

    request = PlanRequest(n_ctx=parse_tokens(ctx) if ctx else None, prefer=check_preference(prefer))
    if model == "auto":
        fetched = downloads.recommend_and_fetch(hardware_for(gpu=gpu, vram=vram, ram=ram), request, yes=yes)
    else:
        fetched = downloads.fetch(model, hardware_for(gpu=gpu, vram=vram, ram=ram), request)
    typer.echo(fetched.summary())


# -- list ----------------------------------------------------------------------------------

@app.command("list")
def list_models(
    as_json: bool = typer.Option(False, "--json", help="One JSON array on stdout."),
) -> None:
    """Models on this machine: the Hugging Face cache's GGUF models and files quantized here."""
    from localcascade.store import models as store

    models = store.list_models()
    stale = store.stale_models()   # registered, but the file is gone: shown so `rm` can forget them
    if as_json:
        typer.echo(json.dumps([m.to_dict() for m in models + stale], indent=2))
        return
    # Interrupted pulls hold disk too; said on stderr so the table stays one model per line.
    for partial in store.partial_downloads():
        say(f"partial download: {format_bytes(partial.size)} of a file from {partial.repo} ({partial.path}); "
             "pulling the same model again continues it, deleting the file drops it")
    if not models and not stale:
        say("no models yet: `localcascade pull` downloads the best one for this machine")
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
        say(f"{m.name}: its file {m.path} is gone; `localcascade rm {m.name}` forgets it")


# -- show ----------------------------------------------------------------------------------

@app.command()
def show(
    model: str = typer.Argument(..., help="A stored model (see `list`), a path, or hf://REPO/FILE.gguf.",
                                autocompletion=options.complete_model_name),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="Plan for a hardware profile (rtx-4090) instead."),
    vram: Optional[str] = typer.Option(None, "--vram", help="Plan for this much GPU memory, e.g. 16GiB."),
    ram: Optional[str] = typer.Option(None, "--ram", help="Plan for this much system RAM, e.g. 64GiB."),
) -> None:
    """Architecture, file facts and the fit plan for this machine of one model."""
    from localcascade.cli.downloads import plan_for_header
    from localcascade.model.gguf_header import read_header
    from localcascade.hardware.resolve import hardware_for
    from localcascade.model.summary import summarize
    from localcascade.resolve.resolver import resolve

    hardware = hardware_for(gpu=gpu, vram=vram, ram=ram)  # a bad --gpu is the user's first mistake to hear of
    found = resolve(model, need="header")
    stored, source = found.stored, found.header_source
    header = read_header(source)
    summary = summarize(header)
    plan, plan_error = plan_for_header(header, hardware)
    kept = _kept_state(header, plan)
    if as_json:
        data = {"model": stored.to_dict() if stored else {"path": source}, "summary": summary.to_dict(),
                "plan": plan_json(plan) if plan else None, "plan_error": plan_error,
                "kept_state": kept}
        typer.echo(json.dumps(data, indent=2))
        return
    _render_show(model, stored, summary, plan, plan_error, kept)




def _kept_state(header, plan) -> dict | None:
    """What the state cache keeps per token and per state for this model, at the plan's KV types."""
    from localcascade.errors import LocalCascadeError
    from localcascade.model.facts import facts_from_header
    from localcascade.planning.memory import kept_state_bytes

    type_k, type_v = (plan.type_k, plan.type_v) if plan is not None else ("f16", "f16")
    try:
        per_token, per_state = kept_state_bytes(facts_from_header(header), type_k, type_v)
    except LocalCascadeError:
        return None     # a header that cannot be planned says so on the fit line
    return {"bytes_per_token": per_token, "bytes_per_state": per_state, "type_k": type_k, "type_v": type_v}


def _render_show(label, stored, s, plan, plan_error, kept=None) -> None:
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
        from localcascade.cli.wording import kept_state_words, plan_line, plan_speed_reason, reason_words

        out(f"  fit            {plan_line(plan)}")
        for reason in [reason_words(r) for r in plan.reasons] + ([plan_speed_reason(plan)] if plan.tokens_per_s else []):
            out(f"                 - {reason}")
    else:
        out(f"  fit            unknown ({plan_error})")
    if kept is not None:
        out(f"  kept state     {kept_state_words(kept['bytes_per_token'], kept['bytes_per_state'])}")


# -- rm ------------------------------------------------------------------------------------

@app.command()
def rm(
    model: str = typer.Argument(..., help="A stored model, as `localcascade list` names it.",
                                autocompletion=options.complete_stored_model),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
) -> None:
    """Delete a model's files (only files the store knows)."""
    from localcascade.store import models as store
    from localcascade.resolve.resolver import resolve

    stored = resolve(model, need="stored").stored
    files = "\n".join(f"  {f}" for f in stored.files)
    if stored.missing:
        say(f"{stored.name}: registered, but its file is gone\n{files}")
        _confirm_deletion(f"Forget {stored.name}?", yes)
        store.remove(stored)
        typer.echo(f"removed {stored.name} (its file was already gone; the record is forgotten)")
        return
    say(f"{stored.name}: {format_bytes(stored.size)} in {stored.where}\n{files}")
    _confirm_deletion(f"Delete {stored.name}?", yes)
    store.remove(stored)
    typer.echo(f"removed {stored.name} ({format_bytes(stored.size)})")
