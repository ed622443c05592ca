"""How plans, hardware and statistics are put into words, for every command that shows them.

`fit`, `show`, `pull`, `run` (and its chat), `ask`, `bench` and `serve` all describe the same
things: a Plan (where a model goes and what it costs, and why: the planner's reasons are data,
``planning/reasons.py``), the machine, and what a reply or a benchmark measured. Their sentences
live here, so one wording change reaches every command and the commands stay thin. Only plain
strings come out: which stream and style they get is the caller's business. No heavy imports:
`localcascade --help` imports the command modules (reasons are told apart by their ``kind``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

from localcascade.units import format_bytes, format_duration, format_tokens

if TYPE_CHECKING:
    from localcascade.engine.events import TurnStats
    from localcascade.hardware.facts import Hardware
    from localcascade.planning.plan import Alternative, Plan
    from localcascade.planning.reasons import NothingFits, Picked, Placed, Reason


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


def plan_json(plan: Plan) -> dict:
    """``Plan.to_dict()`` with its reasons and alternatives in words too (``reasons``, ``alternatives``),
    beside the records they come from (``reason_data``, ``alternative_data``): `show`, `ask` and
    `bench` print this under --json."""
    data = plan.to_dict()
    data["reasons"] = [reason_words(r) for r in plan.reasons]
    data["alternatives"] = [alternative_words(a) for a in plan.alternatives]
    return data


# --- why a plan is what it is (planning/reasons.py's records) -----------------------------------------


def _context(n_ctx: int, n_seq: int) -> str:
    """A plan's context: "64K", or "32K x 4 conversations" for the server's --parallel."""
    if n_seq > 1:
        return f"{format_tokens(n_ctx // n_seq)} x {n_seq} conversations"
    return format_tokens(n_ctx)


def _blocks(n: int) -> str:
    return f"{n} MoE block{'s' if n != 1 else ''}"


def placed_words(r: Placed) -> str:
    """Where a placement puts the model: "Q4_K_M fits fully on the RTX 4090 at 256K with 1.20 GiB free"."""
    name, ctx = r.model, _context(r.n_ctx, r.n_seq)
    if r.verdict == "full_gpu":
        return f"{name} fits fully on the {r.gpu_name} at {ctx} with {format_bytes(r.gpu_usable_bytes - r.gpu_bytes)} free"
    if r.verdict == "experts_in_ram":
        return (f"{name} at {ctx} needs the experts of {_blocks(r.moe_blocks_in_ram)} in RAM (--n-cpu-moe "
                f"{r.n_cpu_moe}: {format_bytes(r.ram_weight_bytes)} of weights in RAM)")
    if r.verdict == "partial":
        return f"{name} at {ctx} fits with {r.n_gpu_layers} of {r.n_layers} layers on the {r.gpu_name}"
    if r.verdict == "cpu_only":
        why = (" (the installed llama-cpp-python has no GPU offload: see `localcascade doctor`)"
               if r.gpu_offload_missing else "")
        return f"{name} at {ctx} runs on the CPU only, {format_bytes(r.ram_bytes)} of RAM{why}"
    return (f"{name} at {ctx} does not fit: it needs {format_bytes(r.ram_bytes)} of RAM on the CPU alone, "
            f"{format_bytes(r.ram_usable_bytes)} is usable")


def _where(verdict: str, moe_blocks_in_ram: int, n_gpu_layers: int) -> str:
    if verdict == "experts_in_ram":
        return f"the experts of {_blocks(moe_blocks_in_ram)}"
    if verdict == "partial":
        return f"{n_gpu_layers} layers on the GPU"
    return verdict.replace("_", " ")


def picked_words(r: Picked) -> str:
    """How the policy's rule chose: "the best quality that runs fully on the GPU, at 256K"."""
    usable = f"{r.usable_tokens_per_s:.0f}"
    why = {
        "best_quality_usable": f"the best quality that runs at {usable}+ tokens/s",
        "none_usable": (f"no plan reaches {usable} tokens/s on this machine: the fastest that fits, "
                        f"~{r.tokens_per_s or 0:.1f} tokens/s"),
        "best_quality_full_gpu": "the best quality that runs fully on the GPU",
        "least_in_ram": ("nothing runs fully on the GPU at this context: the plan that keeps the least of the "
                         f"model in system RAM ({_where(r.verdict, r.moe_blocks_in_ram, r.n_gpu_layers)}), "
                         "then the best quality"),
        "fastest": "the fastest plan, then the best quality",
    }[r.how]
    if r.full_gpu is not None:   # the unified-memory rule
        why = ("fully on the GPU, " if r.full_gpu else "nothing runs fully on the GPU: ") + why
    return f"{why}, at {format_tokens(r.n_ctx)}"


def reason_words(reason: Reason) -> str:
    """One of a plan's reasons (or of the policy's notes) in a sentence."""
    kind = reason.kind
    if kind == "placed":
        return placed_words(reason)
    if kind == "picked":
        return picked_words(reason)
    if kind == "as_requested":
        return "placement as requested"
    if kind == "gpu_estimated":
        return "GPU compute and CUDA overhead are estimates; CPU buffers are calibrated"
    if kind == "floor_lowered":
        return (f"nothing fits at {format_tokens(reason.floor)} (the floor for a "
                f"{'thinking' if reason.think else 'non-thinking'} chat): {format_tokens(reason.n_ctx)} is the "
                "largest context that fits")
    if kind == "longest_held":
        return f"{format_tokens(reason.n_ctx)} is the longest context this machine holds"
    raise ValueError(f"no words for a reason of kind {kind!r}")


def brief_plan(n_ctx: int, verdict: str, moe_blocks_in_ram: int, n_gpu_layers: int, kv_type: str,
               tokens_per_s: float | None, measured: bool, low: float | None = None, high: float | None = None) -> str:
    """ "at 256K, full GPU, KV f16, ~180 t/s (est., 120-240)": what a plan trades, in a line.

    Takes the numbers, not a Plan, because `fit` words its JSON alternatives (which carry the same fields).
    """
    where = {"full_gpu": "full GPU", "cpu_only": "CPU only"}.get(verdict)
    if where is None and verdict == "experts_in_ram":
        where = f"{_blocks(moe_blocks_in_ram)} in RAM"
    elif where is None:
        where = f"{n_gpu_layers} layers on the GPU"
    spread = ""
    if not measured and low is not None and high is not None:
        spread = f", {low:.0f}-{high:.0f}"
    speed = f"~{tokens_per_s or 0:.0f} t/s" + ("" if measured else f" (est.{spread})")
    return f"at {format_tokens(n_ctx)}, {where}, KV {kv_type}, {speed}"


def plan_brief(plan: Plan) -> str:
    return brief_plan(plan.n_ctx, plan.verdict, plan.moe_blocks_in_ram, plan.n_gpu_layers, plan.type_k,
                      plan.tokens_per_s, plan.speed_measured, plan.tokens_per_s_low, plan.tokens_per_s_high)


def alternative_words(alternative: Alternative, variant: str | None = None) -> str:
    """ "longer context: at 256K, 2 MoE blocks in RAM, KV f16, ~90 t/s (est., 50-130)"; with the
    variant's name where the alternative is another variant's plan."""
    return f"{alternative.trade}: {variant + ' ' if variant else ''}{plan_brief(alternative.plan)}"


def does_not_fit_words(err: NothingFits, flag: Callable[[str, object], str]) -> str:
    """The planner's refusal in a line; ``flag(setting, value)`` says how this front end sets a value
    (the CLI: "--ctx 16K"), for the offers of what would fit."""
    r = err.reason
    if err.requested is not None:
        n_gpu_layers, n_cpu_moe = err.requested
        return (f"{r.model} at {_context(r.n_ctx, r.n_seq)} with n_gpu_layers={n_gpu_layers}, "
                f"n_cpu_moe={n_cpu_moe} needs {format_bytes(r.gpu_bytes)} of GPU memory "
                f"({format_bytes(r.gpu_usable_bytes)} usable) and {format_bytes(r.ram_bytes)} of RAM "
                f"({format_bytes(r.ram_usable_bytes)} usable)")
    line = placed_words(r)
    if err.models:
        line = f"none of {', '.join(err.models)} fits this machine: {line}"
    if err.offers_checked:
        if err.offers:
            line += "; what fits: " + " or ".join(f"{flag('parallel', n)} {flag('context', format_tokens(c))}"
                                                  for c, n in err.offers)
        else:
            line += "; not even one conversation at 4K fits"
    return line


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


# The machine's rules and the preferences (planning/policy.py), in words: `fit` prints the one it used.
RULES = {
    "full-gpu-first": "the best quality that runs fully on the GPU; else the fewest expert blocks in "
                      "system RAM, then the best quality",
    "unified-memory": "unified memory: fully on the GPU first, then the best quality at {usable}+ tokens/s",
    "cpu-only": "CPU only: the best quality at {usable}+ tokens/s, else the fastest",
    "quality": "prefer quality: the best quality at {usable}+ tokens/s, else the fastest",
    "speed": "prefer speed: the fastest, then the best quality",
    "context": "prefer context: the longest context this machine holds, then {machine}",
}


def rule_words(rule: str, machine_rule: str, usable_tokens_per_s: float) -> str:
    """The rule `fit` used: the user's preference (the context one ends with the machine's rule) or the machine's."""
    usable = f"{usable_tokens_per_s:.0f}"
    machine = RULES[machine_rule].format(usable=usable, machine="")
    return RULES[rule].format(usable=usable, machine=machine)


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


# --- errors ---------------------------------------------------------------------------------------

# How the command line sets what a lower layer's error is about (the server words these its own way,
# server/http_errors.py): the lower layers raise the figures and never name a flag.
CLI_FLAGS = {"context": "--ctx", "parallel": "--parallel", "cpu_moe": "--cpu-moe", "prefer": "--prefer",
             "chat_template": "--chat-template FILE", "tool": "--tools python", "prompt_tokens": "-p",
             "gen_tokens": "-n", "gpu": "--gpu", "vram": "--vram", "ram": "--ram", "name": "--name",
             "replace": "--force"}


def cli_flag(setting: str, value: object = None) -> str:
    """ "--ctx 16K": the command line's way to set ``setting`` (to ``value``)."""
    flag = CLI_FLAGS[setting]
    return flag if value is None else f"{flag} {value}"


# The command line's flags for GenerationOptions' fields (min-p has none: a server request sets it).
CLI_OPTION_FLAGS = {"temperature": "--temp", "top_p": "--top-p", "top_k": "--top-k", "max_tokens": "--max-tokens",
                    "think_budget": "--think-budget", "seed": "--seed"}


def error_line(err: Exception) -> str:
    """A typed error in the command line's words, naming the flag that changes what it is about:
    the one line `localcascade: ...` shows (and the chat's error line)."""
    from localcascade import errors
    from localcascade.planning.reasons import NothingFits

    if isinstance(err, NothingFits):
        return does_not_fit_words(err, cli_flag)
    if isinstance(err, errors.OptionError):
        return err.naming(CLI_OPTION_FLAGS.get(err.field, err.field))   # "--temp takes a number from 0 to 2, not 3.0"
    if isinstance(err, errors.ContextOverflowError) and err.prompt_tokens is not None:
        return f"{err}: shorten the input or load with a larger {cli_flag('context')}"
    if isinstance(err, errors.UnknownPreferenceError):
        return f"{cli_flag('prefer')} takes {', '.join(err.choices)}, not {err.value!r}"
    if isinstance(err, errors.ExpertLayersError):
        return (f"{cli_flag('cpu_moe', err.value)} is more than the {err.n_layer} layers of {err.model}: "
                f"give 0 to {err.n_layer} ({err.n_layer} keeps every layer's experts in RAM)")
    if isinstance(err, errors.ContextPastTrainingError):
        return (f"{cli_flag('context', format_tokens(err.n_ctx))} per conversation is more than the "
                f"{format_tokens(err.trained)} tokens {err.model} was trained on: give "
                f"{cli_flag('context', format_tokens(err.trained))} or less")
    if isinstance(err, errors.NoChatTemplateError):
        return f"{err.model} has no chat template; give one with {cli_flag('chat_template')}"
    if isinstance(err, errors.NoToolCallTokensError):
        return (f"{err.model} has no {' or '.join(err.missing)} token, so it cannot call tools: "
                f"{cli_flag('tool')} needs a model trained for tool calls")
    if isinstance(err, errors.HardwareChoiceError):
        if err.setting is None:
            return f"give either {cli_flag('gpu')} (a hardware profile) or {cli_flag('vram')} (a size), not both"
        return f"{cli_flag(err.setting)} must be a size above zero, got {err.text!r}"
    if isinstance(err, errors.NameTakenError):
        if err.path is None:
            return (f"cannot register a model as {err.name!r}: it is the name of a catalog variant; "
                    f"choose another name ({cli_flag('name')})")
        return (f"a model named {err.name!r} is already registered ({err.path}); choose another name "
                f"({cli_flag('name')}), or replace it ({cli_flag('replace')})")
    if isinstance(err, errors.BenchSizeError):
        if err.n_ctx is None:
            return (f"give a positive prompt ({cli_flag('prompt_tokens')}) or generation "
                    f"({cli_flag('gen_tokens')}) token count")
        return f"the context ({err.n_ctx} tokens) is smaller than the test; raise {cli_flag('context')}"
    return str(err)


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


def drafts_plan_words(draft_tokens: int, snapshot_bytes: int) -> str:
    """What drafting a plan reserves, for `fit`."""
    if not draft_tokens:
        return "token by token: verifying drafts pays little unless every expert stays on the GPU (--draft ngram asks for it)"
    kept = f", {format_bytes(snapshot_bytes)} of state snapshots reserved for it" if snapshot_bytes else ""
    return f"drafts up to {draft_tokens} tokens a step where text repeats{kept} (--draft none frees them)"


def kept_state_words(bytes_per_token: int, bytes_per_state: int) -> str:
    """What the prompt-state cache keeps for a model, for `fit` and `show`."""
    recurrent = f" + {format_bytes(bytes_per_state)} of recurrent state" if bytes_per_state else ""
    return (f"{bytes_per_token:,} B per cached token{recurrent} per checkpoint "
            "(`localcascade cache` holds them)")


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
