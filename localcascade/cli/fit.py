"""`localcascade fit`: what fits this (or a hypothetical) machine, per variant and context, before any download."""

from __future__ import annotations

import json
from typing import Optional

import typer

from localcascade.cli import app

FIT_HELP = "Show which variants fit at which context, and recommend one, before anything is downloaded."


@app.command(help=FIT_HELP)
def fit(
    model: Optional[str] = typer.Argument(
        None, help="Catalog variant (Q4_K_M), REPO, REPO:QUANT, hf://REPO/FILE.gguf or a local file; "
        "omitted: every catalog variant."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="A hardware profile, e.g. rtx-4090."),
    vram: Optional[str] = typer.Option(None, "--vram", help="GPU memory, e.g. 24GiB."),
    ram: Optional[str] = typer.Option(None, "--ram", help="System RAM, e.g. 64GiB."),
    ctx: Optional[str] = typer.Option(None, "--ctx", help="Also show (and recommend for) this context, e.g. 64K."),
    kv_type: str = typer.Option("f16", "--kv-type", help="KV cache type: f16, q8_0 or q4_0."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (schema in the README, section What fits)."),
) -> None:
    from localcascade.hardware.resolve import hardware_for
    from localcascade.fit_report import fit_report, render_table
    from localcascade.units import parse_tokens

    n_ctx = parse_tokens(ctx) if ctx else None
    hardware = hardware_for(gpu=gpu, vram=vram, ram=ram)
    report = fit_report(model, hardware, n_ctx=n_ctx, kv_type=kv_type)
    if as_json:
        typer.echo(json.dumps(report, indent=1))
    else:
        render_table(report)
