"""`localcascade fit`: what fits this (or a hypothetical) machine, per variant and context, before any download."""

from __future__ import annotations

import json
from typing import Optional

import typer

from localcascade.cli.app import app
from localcascade.cli import options
from localcascade.cli.options import complete_model_name
from localcascade.planning.memory import KV_TYPES

FIT_HELP = "Show which variants fit at which context, and recommend one, before anything is downloaded."


@app.command(help=FIT_HELP)
def fit(
    model: Optional[str] = typer.Argument(
        None, help="Catalog variant (Q4_K_M), a model from `list`, REPO (all its models), REPO:QUANT, "
        "hf://REPO/FILE.gguf or a local file; omitted: every catalog variant.",
        autocompletion=complete_model_name),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="A hardware profile, e.g. rtx-4090."),
    vram: Optional[str] = typer.Option(None, "--vram", help="GPU memory, e.g. 24GiB."),
    ram: Optional[str] = typer.Option(None, "--ram", help="System RAM, e.g. 64GiB."),
    ctx: Optional[str] = typer.Option(None, "--ctx", help="Also show (and recommend for) this context, e.g. 64K."),
    kv_type: Optional[str] = typer.Option(
        None, "--kv-type", help=f"KV cache type for K and V: {', '.join(KV_TYPES)} [default: f16 in the table; "
        "the recommendation weighs f16 and q8_0]."),
    think: bool = typer.Option(True, "--think/--no-think",
                               help="Plan for thinking (a 64K context floor) or not (16K)."),
    prefer: Optional[str] = options.prefer_option(),
    gpu_overhead: Optional[str] = typer.Option(
        None, "--gpu-overhead", help="CUDA context and runtime per GPU, not reported by llama.cpp [default: 0.45GiB]."),
    gpu_margin: Optional[str] = typer.Option(
        None, "--gpu-margin", help="VRAM kept free on each GPU [default: 256MiB]."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (schema in the README, section What fits)."),
) -> None:
    from localcascade.hardware.resolve import hardware_for
    from localcascade.resolve.fit_report import fit_report
    from localcascade.planning.placement import limits_from
    from localcascade.units import parse_tokens

    n_ctx = parse_tokens(ctx) if ctx else None
    hardware = hardware_for(gpu=gpu, vram=vram, ram=ram)
    report = fit_report(model, hardware, n_ctx=n_ctx, kv_type=kv_type, think=think, prefer=prefer,
                        limits=limits_from(gpu_overhead=gpu_overhead, gpu_margin=gpu_margin))
    _add_words(report, hardware)
    if as_json:
        typer.echo(json.dumps(report, indent=1))
    else:
        render_table(report)


def _add_words(report: dict, hardware) -> None:
    """The report's records in words, each beside its record (``reason_data``, ``policy_data``): the
    rows' reasons, the recommendation's reasons (with its speed) and how the policy chose, each
    alternative's summary, the rule, and where the speeds come from (JSON and table alike)."""
    from localcascade.cli import wording
    from localcascade.planning.reasons import reason_data

    for variant in report["variants"]:
        for row in variant["rows"]:
            reason = row.pop("reason")
            row["reason"] = wording.reason_words(reason) if reason is not None else ""
            row["reason_data"] = reason_data(reason) if reason is not None else None
    rec = report["recommended"]
    if rec is not None:
        for key, data_key in (("reasons", "reason_data"), ("policy", "policy_data")):
            rec[data_key] = [reason_data(r) for r in rec[key]]
            rec[key] = [wording.reason_words(r) for r in rec[key]]
        rec["reasons"].append(wording.speed_reason(rec["tokens_per_s"] or 0.0, rec["prompt_tokens_per_s"], rec["n_ctx"],
                                                   rec["speed_measured"], *rec["tokens_per_s_range"],
                                                   *rec["prompt_tokens_per_s_range"]))
        rec["reasons"].append(wording.drafts_plan_words(rec["drafts"]["draft_tokens"], rec["drafts"]["snapshot_bytes"]))
        rec["reasons"].append("a kept prompt state: " + wording.kept_state_words(
            rec["kept_state"]["bytes_per_token"], rec["kept_state"]["bytes_per_state"]))
    for alt in report["alternatives"]:
        alt["summary"] = f"{alt['trade']}: {alt['variant']} " + wording.brief_plan(
            alt["n_ctx"], alt["verdict"], alt["cpu_moe_blocks"], alt["n_gpu_layers"], alt["kv_type"],
            alt["tokens_per_s"], alt["speed_measured"], *alt["tokens_per_s_range"])
    policy = report["policy"]
    policy["description"] = wording.rule_words(policy["rule"], policy["machine_rule"], policy["usable_tokens_per_s"])
    report["notes"].append(wording.speed_note(hardware))


def render_table(report: dict) -> None:
    """The human table: hardware, recommendation, notes, then one row per variant x context."""
    from rich.table import Table

    from localcascade.cli import wording
    from localcascade.cli.console import make_console
    from localcascade.units import format_bytes, format_tokens

    console = make_console(min_width=120)
    console.print(wording.usable_hardware_line(report["hardware"]))
    policy = report["policy"]
    console.print(wording.policy_line(policy["context_floor"], report["think"], policy["description"]),
                  soft_wrap=True)
    for line in wording.recommendation_lines(report["recommended"], report["alternatives"],
                                             report.get("requested_n_ctx")):
        console.print(line, soft_wrap=not line.startswith("Recommended:"))
    for note in report.get("notes", []):
        console.print(f"Note: {note}")
    table = Table(show_lines=False)
    for col in ("variant", "context", "verdict", "GPU", "RAM", "tok/s", "range", "prompt tok/s"):
        table.add_column(col, justify="left" if col in ("variant", "verdict") else "right")
    for v in report["variants"]:
        for row in v["rows"]:
            verdict = wording.verdict_cell(row["verdict"], row["cpu_moe_blocks"], row["n_gpu_layers"])
            tps = "-" if row["tokens_per_s"] is None else f"{row['tokens_per_s']:.0f}"
            spread = wording.speed_range(*(row["tokens_per_s_range"] or (None, None))) or "-"
            pps = "-" if row["prompt_tokens_per_s"] is None else f"{row['prompt_tokens_per_s']:.0f}"
            table.add_row(v["variant"], format_tokens(row["n_ctx"]), verdict, format_bytes(row["gpu_bytes"]),
                          format_bytes(row["ram_bytes"]), tps, spread, pps)
    console.print(table)
