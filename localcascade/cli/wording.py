"""How plans, hardware and statistics are put into words, for every command that shows them.

`fit`, `show`, `pull`, `run` (and its chat), `ask`, `bench` and `serve` all describe the same
things: a Plan (where a model goes and what it costs), the machine, and what a reply or a
benchmark measured. Their sentences live here, so one wording change reaches every command and
the commands stay thin. Only plain strings come out: which stream and style they get is the
caller's business. No heavy imports: `localcascade --help` imports the command modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from localcascade.units import format_bytes, format_duration, format_tokens

if TYPE_CHECKING:
    from localcascade.engine.events import TurnStats
    from localcascade.hardware.facts import Hardware
    from localcascade.planning.plan import Plan


# --- plans ----------------------------------------------------------------------------------------


def describe_plan(plan: Plan) -> list[str]:
    """The plan in two short lines: what loads where and how fast, then how it is offloaded."""
    where = f"GPU {format_bytes(plan.gpu_bytes)} + RAM {format_bytes(plan.ram_bytes)}"
    if plan.gpu_bytes == 0:
        where = f"RAM {format_bytes(plan.ram_bytes)} (CPU only)"
    speed = ""
    if plan.tokens_per_s:
        speed = ", " + speed_words(plan.tokens_per_s, plan.speed_measured, plan.tokens_per_s_low,
                                   plan.tokens_per_s_high)
        if plan.prompt_tokens_per_s:
            speed += f", a full context reads in ~{format_duration(plan.prompt_seconds())}"
    context = format_tokens(plan.n_ctx)
    if plan.n_seq > 1:   # the server's --parallel: the context is shared out, --ctx each
        context = f"{format_tokens(plan.n_ctx // plan.n_seq)} x {plan.n_seq} conversations"
    first = f"{plan.model}, context {context}, {where}{speed}"
    offload = f"{plan.n_gpu_layers} GPU layers"
    if plan.n_cpu_moe:
        offload += f", experts of {plan.moe_blocks_in_ram} MoE blocks in RAM (--n-cpu-moe {plan.n_cpu_moe})"
    second = (
        f"{plan.verdict.replace('_', ' ')}: {offload}, KV {plan.type_k}/{plan.type_v}, "
        f"flash attention {'on' if plan.flash_attn else 'off'}"
    )
    return [first, second]


def plan_line(plan: Plan) -> str:
    """The plan in one line, for `pull` and `show`: "full gpu at 16K context: GPU 23.67 GiB, RAM 750.8 MiB"."""
    gpu = f"GPU {format_bytes(plan.gpu_bytes)}, " if plan.gpu_bytes else ""
    return (f"{plan.verdict.replace('_', ' ')} at {format_tokens(plan.n_ctx)} context: "
            f"{gpu}RAM {format_bytes(plan.ram_bytes)}")


def verdict_cell(verdict: str, moe_blocks_in_ram: int, n_gpu_layers: int) -> str:
    """A verdict with the number that qualifies it, for `fit`'s table: "experts_in_ram (2 blocks)"."""
    if verdict == "experts_in_ram":
        return f"{verdict} ({moe_blocks_in_ram} block{'s' if moe_blocks_in_ram != 1 else ''})"
    if verdict == "partial":
        return f"{verdict} ({n_gpu_layers} layers)"
    return verdict


def speed_range(low: float | None, high: float | None) -> str:
    """ "87-202": the range an estimate claims; empty for a point (a measured figure)."""
    if low is None or high is None or round(low) == round(high):
        return ""
    return f"{low:.0f}-{high:.0f}"


def speed_words(tokens_per_s: float, measured: bool, low: float | None = None, high: float | None = None) -> str:
    """ "~153 tokens/s (estimated, 87-202)" or "~30 tokens/s (measured)"."""
    spread = speed_range(low, high)
    label = "measured" if measured else "estimated"
    return f"~{tokens_per_s:.0f} tokens/s ({label}{', ' + spread if spread else ''})"


def speed_reason(tokens_per_s: float, prompt_tokens_per_s: float | None, n_ctx: int, measured: bool,
                 low: float | None = None, high: float | None = None, prompt_low: float | None = None,
                 prompt_high: float | None = None) -> str:
    """A plan's speed in words: generation and prompt reading (each with the range an estimate
    claims), and how long reading a full context takes.

    Takes the numbers, not a Plan, because `fit` words its JSON rows (which carry the same fields).
    """
    reading = ""
    if prompt_tokens_per_s:
        reading = (f"; reading a full {format_tokens(n_ctx)} prompt takes "
                   f"~{format_duration(n_ctx / prompt_tokens_per_s)}")
    generating = speed_words(tokens_per_s, measured, low, high).replace(" tokens/s ", " tokens/s generating ", 1)
    spread = speed_range(prompt_low, prompt_high)
    return (f"{generating}, ~{prompt_tokens_per_s or 0:.0f} reading a prompt"
            f"{f' ({spread})' if spread else ''}{reading}")


def plan_speed_reason(plan: Plan) -> str:
    return speed_reason(plan.tokens_per_s or 0.0, plan.prompt_tokens_per_s, plan.n_ctx, plan.speed_measured,
                        plan.tokens_per_s_low, plan.tokens_per_s_high, plan.prompt_tokens_per_s_low,
                        plan.prompt_tokens_per_s_high)


def speed_note(hardware: Hardware) -> str:
    """Where the tok/s figures come from, said once under `fit`'s table."""
    c = hardware.calibration
    if c is not None and hardware.source == "detected":
        gpu = "; GPU parts of a plan stay estimates" if hardware.gpus else ""
        return (f"speeds: measured on this machine by `localcascade bench` on {c.model} ({c.measured_at[:10]}), "
                f"for models it can speak for (docs/fit.md); the others are estimates with a range{gpu}")
    if hardware.source == "detected":
        return "speeds: estimates; `localcascade bench MODEL` measures this machine and fit then uses its figures"
    return "speeds: estimates for this hardware (profiles are never measured here)"


def policy_line(context_floor: int, think: bool, rule_description: str) -> str:
    """The policy `fit` used, in a line: the context floor, then the machine's rule or the user's preference."""
    return (f"Policy: at least {format_tokens(context_floor)} of context "
            f"({'thinking' if think else 'no thinking'}), then {rule_description}")


def recommendation_lines(recommended: dict | None, alternatives: Iterable[dict], requested_n_ctx: int | None) -> list[str]:
    """`fit`'s recommendation (a JSON-ready dict) with its reasons and alternatives."""
    if not recommended:
        at = f" at {format_tokens(requested_n_ctx)}" if requested_n_ctx else ""
        return [f"Recommended: nothing fits this machine{at}"]
    lines = [f"Recommended: {recommended['variant']} at {format_tokens(recommended['n_ctx'])}, "
             f"KV {recommended['kv_type']} ({recommended['verdict']})"]
    lines += [f"  - {reason}" for reason in recommended["reasons"] + recommended["policy"]]
    lines += [f"  Alternative, {alt['summary']}" for alt in alternatives]
    return lines


# --- hardware -------------------------------------------------------------------------------------


def describe_hardware(hardware: Hardware) -> str:
    """The machine in one line, for the chat's /info: "NVIDIA ... 24.00 GiB; RAM 64.00 GiB; <CPU>"."""
    gpus = ", ".join(f"{gpu.name} {format_bytes(gpu.vram_total_bytes)}" for gpu in hardware.gpus)
    return f"{gpus or 'no GPU'}; RAM {format_bytes(hardware.ram_total_bytes)}; {hardware.cpu.model}"


def usable_hardware_line(hardware: dict) -> str:
    """What a plan may use (free VRAM, available RAM), from `Hardware.to_dict()`, for `fit`."""
    gpus = ", ".join(f"{g['name']} ({format_bytes(g['vram_free_bytes'])} usable)" for g in hardware["gpus"])
    return f"Hardware: {gpus or 'no GPU'}; RAM {format_bytes(hardware['ram_available_bytes'])} available"


# --- loading, replies and benchmarks ----------------------------------------------------------------


def loaded_line(model_name: str, plan: Plan, load_seconds: float) -> str:
    """`ask`'s line once the model is in memory."""
    return (f"{model_name}: ctx {plan.n_ctx}, {plan.n_gpu_layers} GPU layers, "
            f"KV {plan.type_k}/{plan.type_v}, loaded in {load_seconds:.1f}s")


def reply_stats_line(stats: TurnStats) -> str:
    """`ask`'s statistics of its one reply."""
    return (f"{stats.prompt_tokens} prompt tokens ({stats.prompt_tokens_per_s:.1f} t/s), "
            f"{stats.thinking_tokens} thinking + {stats.answer_tokens} answer tokens "
            f"({stats.generation_tokens_per_s:.1f} t/s){drafts_words(stats)}, stop: {stats.stop_reason}")


def drafts_words(stats: TurnStats) -> str:
    """What drafting did in a reply, where it drafted at all."""
    if not stats.drafted_tokens:
        return ""
    return f", drafts: {stats.accepted_tokens} of {stats.drafted_tokens} kept"


def last_reply_lines(stats: TurnStats) -> list[str]:
    """The chat's /stats of the last reply, in two aligned lines."""
    return [
        f"last reply: {stats.prompt_tokens} prompt tokens ({stats.evaluated_tokens} evaluated) "
        f"at {stats.prompt_tokens_per_s:.1f} t/s",
        f"            {stats.thinking_tokens} thinking + {stats.answer_tokens} answer tokens "
        f"at {stats.generation_tokens_per_s:.1f} t/s{drafts_words(stats)}, stopped: {stats.stop_reason}",
    ]


def stats_footer(stats: TurnStats) -> str:
    """The chat's line after each reply, short enough for 80 columns."""
    used, limit = stats.context_used, stats.context_limit
    share = f" ({100 * used / limit:.0f}%)" if limit else ""
    return (
        f"prompt {stats.prompt_tokens_per_s:.1f} t/s · reply {stats.completion_tokens} tok "
        f"at {stats.generation_tokens_per_s:.1f} t/s · context {used}/{limit}{share}"
    )


def context_line(used: int, limit: int) -> str:
    share = f" ({100 * used / limit:.0f}%)" if limit else ""
    return f"{used}/{limit} tokens{share}"


def thought_for(tokens: int | None, seconds: float | None) -> str:
    """How long a thinking trace was: "thought for 412 tokens, 3.1 s"."""
    parts = []
    if tokens is not None:
        parts.append(f"{tokens} token{'s' if tokens != 1 else ''}")
    if seconds is not None:
        parts.append(f"{seconds:.1f} s")
    return "thought for " + ", ".join(parts)


def bench_table(model_name: str, plan: Plan, results: Iterable) -> list[str]:
    """`bench`'s results as llama-bench's markdown table, one row per test."""
    lines = ["| model | ctx | ngl | cpu-moe | kv | fa | test | t/s |",
             "| --- | ---: | ---: | ---: | --- | --- | --- | ---: |"]
    for r in results:
        lines.append(f"| {model_name} | {format_tokens(plan.n_ctx)} | {plan.n_gpu_layers} | {plan.n_cpu_moe} "
                     f"| {plan.type_k}/{plan.type_v} | {'on' if plan.flash_attn else 'off'} | {r.test} "
                     f"| {r.mean:.2f} ± {r.stddev:.2f} |")
    return lines
