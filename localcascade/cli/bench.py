"""`localcascade bench`: prompt and generation tokens/s with the plan used (llama-bench style)."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from localcascade.cli import app, options


@app.command()
def bench(
    model: Optional[str] = typer.Argument(None, help="GGUF file or model name (default: the best one pulled)."),
    prompt_tokens: int = typer.Option(512, "-p", "--n-prompt", help="Prompt tokens per pp test."),
    gen_tokens: int = typer.Option(128, "-n", "--n-gen", help="Generated tokens per tg test."),
    repetitions: int = typer.Option(5, "-r", "--repetitions", help="Repetitions of each test."),
    ctx: Optional[str] = options.ctx_option(default_is="the larger of -p and -n, as llama-bench"),
    ngl: Optional[int] = options.ngl_option(),
    cpu_moe: Optional[int] = options.cpu_moe_option(),
    kv_type: Optional[str] = options.kv_type_option(),
    flash_attn: Optional[bool] = options.flash_attn_option(),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    verbose: bool = options.verbose_option(),
) -> int:
    """Measure prompt processing and generation speed on this machine."""
    from localcascade.engine.bench import run_bench
    from localcascade.units import format_tokens

    if ctx is None:
        ctx = str(max(prompt_tokens, gen_tokens, 1))   # like llama-bench: just enough context
    request = options.plan_request(ctx=ctx, ngl=ngl, cpu_moe=cpu_moe, kv_type=kv_type, flash_attn=flash_attn)
    model_path = options.resolve_model(model, how="`localcascade bench NAME|FILE`")
    engine = options.load_engine(model_path, request, verbose=verbose, for_chat=False,
                                 progress=options.stderr_progress(model_path.name, as_json))
    with engine:
        results = run_bench(engine, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, repetitions=repetitions)
        plan = engine.plan
    if as_json:
        from localcascade.engine.loader import default_threads

        generation, batch = default_threads()   # what the loader gave llama.cpp
        json.dump({"model": engine.model_name, "model_path": str(model_path), "plan": plan.to_dict(),
                   "threads": {"generation": generation, "batch": batch},
                   "results": [r.to_dict() for r in results]}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    print("| model | ctx | ngl | cpu-moe | kv | fa | test | t/s |")
    print("| --- | ---: | ---: | ---: | --- | --- | --- | ---: |")
    for r in results:
        print(f"| {engine.model_name} | {format_tokens(plan.n_ctx)} | {plan.n_gpu_layers} | {plan.n_cpu_moe} "
              f"| {plan.type_k}/{plan.type_v} | {'on' if plan.flash_attn else 'off'} | {r.test} "
              f"| {r.mean:.2f} ± {r.stddev:.2f} |")
    return 0
