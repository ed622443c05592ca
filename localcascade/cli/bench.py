"""`localcascade bench`: prompt and generation tokens/s with the plan used (llama-bench style)."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from localcascade.cli import options
from localcascade.cli.app import app
from localcascade.cli.wording import plan_json
from localcascade.stderr import say


@app.command()
def bench(
    model: Optional[str] = typer.Argument(None, help="GGUF file or model name (default: the best one pulled).",
                                          autocompletion=options.complete_model_name),
    prompt_tokens: int = typer.Option(512, "-p", "--n-prompt", help="Prompt tokens per pp test."),
    gen_tokens: int = typer.Option(128, "-n", "--n-gen", help="Generated tokens per tg test."),
    repetitions: int = typer.Option(5, "-r", "--repetitions", help="Repetitions of each test."),
    ctx: Optional[str] = options.ctx_option(default_is="the larger of -p and -n, as llama-bench"),
    ngl: Optional[int] = options.ngl_option(),
    cpu_moe: Optional[int] = options.cpu_moe_option(),
    kv_type: Optional[str] = options.kv_type_option(),
    flash_attn: Optional[bool] = options.flash_attn_option(),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate",
                                   help="Store the measured speeds for fit, run and show (CPU-only runs)."),
    verbose: bool = options.verbose_option(),
) -> int:
    """Measure prompt processing and generation speed on this machine."""
    from localcascade.cli.wording import bench_table
    from localcascade.engine.bench import run_bench

    if ctx is None:
        ctx = str(max(prompt_tokens, gen_tokens, 1))   # like llama-bench: just enough context
    request = options.plan_request(ctx=ctx, ngl=ngl, cpu_moe=cpu_moe, kv_type=kv_type, flash_attn=flash_attn)
    choice, engine = options.open_model(model, request, how="`localcascade bench NAME|FILE`", verbose=verbose,
                                        for_chat=False, show_progress=not as_json)
    model_path = choice.path
    with engine:
        results = run_bench(engine, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, repetitions=repetitions)
        plan = engine.plan
    stored = _store_calibration(model_path, engine.model_name, plan, results) if calibrate else None
    if stored is not None and not as_json:
        say(stored)
    if as_json:
        from localcascade.engine.loader import default_threads

        generation, batch = default_threads()   # what the loader gave llama.cpp
        json.dump({"model": engine.model_name, "model_path": str(model_path), "plan": plan_json(plan),
                   "threads": {"generation": generation, "batch": batch},
                   "results": [r.to_dict() for r in results], "calibration": stored}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    for line in bench_table(engine.model_name, plan, results):
        print(line)
    return 0


def _store_calibration(model_path, model_name: str, plan, results) -> str | None:
    """Turn a CPU-only run with both tests into this machine's speed calibration; say what was stored.

    None when the run cannot calibrate (layers on a GPU, a test skipped); a line saying why when
    the file cannot be written (the measurement itself still stands).
    """
    from datetime import datetime, timezone

    from localcascade.engine.loader import default_threads
    from localcascade.errors import LocalCascadeError
    from localcascade.model.gguf_header import read_header
    from localcascade.hardware import calibration, cpu, llama_build
    from localcascade.hardware.facts import Hardware
    from localcascade.hardware.resolve import fill_unknown_bandwidths
    from localcascade.model.facts import facts_from_header
    from localcascade.planning.speed import calibrate

    rates = {r.test[:2]: r.mean for r in results}
    if plan.n_gpu_layers != 0 or not rates.get("tg") or not rates.get("pp"):
        return None
    # The bandwidth fit assumes for this machine, so that fit reproduces the measured speeds.
    bandwidth = fill_unknown_bandwidths(Hardware()).ram_bandwidth_bytes_per_s
    measured = calibrate(
        facts_from_header(read_header(model_path)), tg_tokens_per_s=rates["tg"], pp_tokens_per_s=rates["pp"],
        cores=default_threads()[0], ram_bandwidth=bandwidth, model=model_name,
        llama_cpp_version=llama_build.build().version, cpu_model=cpu.cpu().model,
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    try:
        where = calibration.save(measured)
    except OSError as err:
        return f"speeds not stored for fit/run/show: {err.strerror or err}"
    except LocalCascadeError as err:
        return f"speeds not stored for fit/run/show: {err}"
    return f"speeds stored in {where}: fit, run and show now predict this machine's tokens/s from them"
