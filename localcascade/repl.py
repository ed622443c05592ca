"""The interactive chat behind `localcascade run`.

Two halves, kept apart so each is easy to read:

* **State and commands** (``ReplState``, ``run_command``): what the session
  settings are (thinking mode, how the trace is shown, budget, sampling) and
  what each slash command does to them and to the conversation. No terminal
  I/O here: a command returns ``Notice`` lines for the terminal half to print.
* **The terminal** (``TurnPrinter``, ``LineReader``, ``run_repl``): reading
  lines with prompt-toolkit (history, multi-line input, completion) and
  rendering a streaming reply with rich. Plain terminals (``TERM=dumb``,
  ``NO_COLOR``, pipes) get plain text with no escape codes. With ``NO_COLOR``
  on a real terminal the one exception is prompt-toolkit's input line, drawn
  without colour but with the cursor codes line editing needs.

The engine does the model work; this module never imports llama_cpp.
"""

from __future__ import annotations

import difflib
import json
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from localcascade import safe_io
from localcascade import settings as lc_settings
from localcascade.engine.events import AnswerText, ThinkingText, TurnStats
from localcascade.errors import ContextOverflowError, LocalCascadeError, UsageError
from localcascade.plan import Plan
from localcascade.units import format_duration, format_bytes, format_tokens, parse_tokens

TRACE_MODES = ("show", "hide", "collapse")

# Above this share of the context window, every reply ends with a warning.
CONTEXT_WARN_FRACTION = 0.85


# --------------------------------------------------------------------------
# Session state
# --------------------------------------------------------------------------


@dataclass
class Sampling:
    """Sampling overrides; None leaves the choice to the engine (the model card's defaults)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    seed: int | None = None


@dataclass
class ReplState:
    """Everything a slash command can change, plus what the session has seen so far."""

    engine: object                      # localcascade.engine.session.Engine
    chat: object                        # localcascade.engine.session.Chat
    think: bool = True                  # the model's thinking mode (template enable_thinking)
    trace: str = "collapse"             # how the thinking trace is shown: show | hide | collapse
    think_budget: int | None = None
    sampling: Sampling = field(default_factory=Sampling)
    hardware: object | None = None      # localcascade.hardware.facts.Hardware, for /info
    larger_plan: object | None = None   # the next larger context's Plan (False: none fits), once asked
    grammar: str | None = None          # GBNF every reply must follow (--grammar-file)
    python_tool: object | None = None   # localcascade.tools.python_tool.PythonTool, once a sandbox was found
    tools: bool = False                 # the model may call python (/tools on|off, run --tools python)
    max_tool_calls: int = 8
    last_tool_calls: list = field(default_factory=list)   # (index, ToolResult) of the last reply
    last_trace: str | None = None
    last_trace_tokens: int | None = None
    last_trace_seconds: float | None = None
    last_stats: TurnStats | None = None
    turns: int = 0
    total_prompt_tokens: int = 0
    total_evaluated_tokens: int = 0
    total_completion_tokens: int = 0

    def options(self):
        """The GenerationOptions for the next turn."""
        from localcascade.engine.session import GenerationOptions

        return GenerationOptions(
            think=self.think,
            think_budget=self.think_budget,
            temperature=self.sampling.temperature,
            top_p=self.sampling.top_p,
            top_k=self.sampling.top_k,
            max_tokens=self.sampling.max_tokens,
            seed=self.sampling.seed,
            grammar=self.grammar,
        )

    def prompt_label(self) -> str:
        """The prompt line: both toggles at a glance, e.g. ``[think on · trace collapse] >>> ``."""
        think = "on" if self.think else "off"
        budget = f" · budget {format_tokens(self.think_budget)}" if self.think and self.think_budget else ""
        tools = " · tools python" if self.tools else ""
        return f"[think {think}{budget} · trace {self.trace}{tools}] >>> "

    def record(self, stats: TurnStats) -> None:
        self.last_stats = stats
        self.turns += 1
        self.total_prompt_tokens += stats.prompt_tokens
        self.total_evaluated_tokens += stats.evaluated_tokens
        self.total_completion_tokens += stats.completion_tokens


# --------------------------------------------------------------------------
# Slash commands: parse, apply to the state, answer with notices
# --------------------------------------------------------------------------

INFO, WARN, ERROR, TRACE = "info", "warn", "error", "trace"


@dataclass(frozen=True)
class Notice:
    """One line (or block) a command wants printed; ``kind`` picks the style."""

    text: str
    kind: str = INFO


@dataclass
class Outcome:
    notices: list[Notice] = field(default_factory=list)
    exit: bool = False


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    help: str
    handler: Callable[[ReplState, str], Outcome]
    choices: tuple[str, ...] = ()       # first-argument words offered by tab completion


def _say(*lines: str, kind: str = INFO) -> Outcome:
    return Outcome([Notice(line, kind) for line in lines])


def _on_off(arg: str, what: str) -> bool:
    word = arg.strip().lower()
    if word in {"on", "yes", "true", "1"}:
        return True
    if word in {"off", "no", "false", "0"}:
        return False
    raise UsageError(f"{what} takes on or off, not {arg.strip()!r}")


def _cmd_think(state: ReplState, arg: str) -> Outcome:
    if not arg.strip():
        return _say(f"thinking is {'on' if state.think else 'off'} (/think on|off)")
    state.think = _on_off(arg, "/think")
    if state.think:
        return _say("thinking on: the model reasons before it answers")
    return _say("thinking off: the model answers directly")


def _cmd_trace(state: ReplState, arg: str) -> Outcome:
    word = arg.strip().lower()
    if not word:
        return _say(f"trace is {state.trace} (/trace show|hide|collapse|last)")
    if word == "last":
        if not state.last_trace:
            return _say("no thinking trace yet in this conversation")
        header = "last thinking trace"
        if state.last_trace_tokens is not None:
            header += f" ({_thought_for(state.last_trace_tokens, state.last_trace_seconds)})"
        return Outcome([Notice(header + ":", INFO), Notice(state.last_trace, TRACE)])
    if word not in TRACE_MODES:
        raise UsageError(f"/trace takes show, hide, collapse or last, not {arg.strip()!r}")
    state.trace = word
    extra = "" if state.think else " (thinking is off: /think on to get a trace)"
    return _say(f"trace {word}{extra}")


def _cmd_budget(state: ReplState, arg: str) -> Outcome:
    word = arg.strip().lower()
    if not word:
        shown = format_tokens(state.think_budget) if state.think_budget else "off"
        return _say(f"thinking budget is {shown} (/budget N|off)")
    if word == "off":
        state.think_budget = None
        return _say("thinking budget off: the model thinks as long as it wants")
    state.think_budget = parse_tokens(word)
    extra = "" if state.think else " (applies once /think on)"
    return _say(f"thinking budget {state.think_budget} tokens{extra}")


def _cmd_tools(state: ReplState, arg: str) -> Outcome:
    word = arg.strip().lower()
    if not word:
        return _say(f"tools are {'on: the model may run python in a sandbox' if state.tools else 'off'} "
                    "(/tools on|off|last)")
    if word == "last":
        if not state.last_tool_calls:
            return _say("no tool call in the last reply")
        from localcascade.tools.transcript import describe_call, describe_result

        notices = []
        for index, result in state.last_tool_calls:
            notices += [Notice(describe_call(index, result.code), TRACE), Notice(describe_result(result), TRACE)]
        return Outcome(notices)
    state.tools = _on_off(arg, "/tools")
    if not state.tools:
        return _say("tools off: the model answers without running code")
    if state.python_tool is None:
        from localcascade.tools.python_tool import PythonTool

        try:
            state.python_tool = PythonTool()   # finds and tries the sandbox; refuses without one
        except LocalCascadeError:
            state.tools = False
            raise
    name = getattr(state.python_tool.sandbox, "name", "?")
    return _say(f"tools on: the model may run python ({name}; at most {state.max_tool_calls} calls a reply)")


def _cmd_system(state: ReplState, arg: str) -> Outcome:
    text = arg.strip()
    current = _system_text(state.chat)
    if not text:
        if current:
            return _say(f"system prompt: {current}", "(/system TEXT replaces it, /system off removes it)")
        return _say("no system prompt (/system TEXT sets one)")
    if text.lower() == "off":
        state.chat.set_system(None)
        return _say("system prompt removed")
    state.chat.set_system(text)
    return _say("system prompt set")


def _system_text(chat) -> str | None:
    for message in getattr(chat, "messages", []):
        if message.get("role") == "system":
            return message.get("content")
    return None


# name -> (field, parser); parsers raise UsageError with the accepted form.
def _parse_float(low: float, high: float, name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"{name} takes a number from {low:g} to {high:g}, not {text!r}") from None
        if not low <= value <= high:
            raise UsageError(f"{name} takes a number from {low:g} to {high:g}, not {text!r}")
        return value

    return parse


def _parse_int(low: int, name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise UsageError(f"{name} takes a whole number, not {text!r}") from None
        if value < low:
            raise UsageError(f"{name} must be at least {low}, not {text!r}")
        return value

    return parse


_SETTABLE: dict[str, tuple[str, Callable[[str], object]]] = {
    "temp": ("temperature", _parse_float(0.0, 5.0, "temp")),
    "top_p": ("top_p", _parse_float(0.0, 1.0, "top_p")),
    "top_k": ("top_k", _parse_int(0, "top_k")),
    "max_tokens": ("max_tokens", parse_tokens),
    "seed": ("seed", _parse_int(0, "seed")),
}
_SET_ALIASES = {"temperature": "temp", "top-p": "top_p", "top-k": "top_k", "max-tokens": "max_tokens"}


def _cmd_set(state: ReplState, arg: str) -> Outcome:
    parts = arg.split()
    if not parts:
        lines = []
        for key, (attr, _) in _SETTABLE.items():
            value = getattr(state.sampling, attr)
            lines.append(f"{key:<10} {'default' if value is None else value}")
        return _say(*lines, "(/set NAME VALUE, or /set NAME default)")
    key = _SET_ALIASES.get(parts[0].lower(), parts[0].lower())
    if key not in _SETTABLE:
        hint = _closest(key, list(_SETTABLE))
        raise UsageError(f"/set knows {', '.join(_SETTABLE)}, not {parts[0]!r}{hint}")
    if len(parts) != 2:
        raise UsageError(f"usage: /set {key} VALUE (or /set {key} default)")
    attr, parse = _SETTABLE[key]
    value = None if parts[1].lower() in {"default", "off", "none"} else parse(parts[1])
    state.sampling = replace(state.sampling, **{attr: value})
    return _say(f"{key} = {'default' if value is None else value}")


def _cmd_clear(state: ReplState, arg: str) -> Outcome:
    state.chat.clear()
    state.last_trace = state.last_trace_tokens = state.last_trace_seconds = None
    return _say("new conversation (same model, same settings)")


def _cmd_save(state: ReplState, arg: str, *, replace_file: bool = False) -> Outcome:
    command = "/save!" if replace_file else "/save"
    if not arg.strip():
        raise UsageError(f"usage: {command} FILE")
    path = Path(arg.strip()).expanduser()
    if path.is_dir():
        raise UsageError(f"cannot save to {path}: it is a folder; name a file in it")
    # A conversation file is easy to lose by typing a name twice: replacing one takes /save!.
    if not replace_file and (path.exists() or path.is_symlink()):
        raise UsageError(f"{path} already exists: /save! {arg.strip()} replaces it, or /save another name")
    data = json.dumps(state.chat.to_dict(), indent=2, ensure_ascii=False)
    try:
        # Even /save! only ever replaces a regular file: never a device node, a folder or a link.
        safe_io.write_text_atomic(path, data + "\n", what="the conversation", overwrite=replace_file)
    except OSError as err:
        raise UsageError(f"cannot save to {path}: {err.strerror or err}") from None
    count = len(state.chat.messages)
    return _say(f"saved {count} message{'s' if count != 1 else ''} to {path}")


def _cmd_save_replacing(state: ReplState, arg: str) -> Outcome:
    return _cmd_save(state, arg, replace_file=True)


def _cmd_load(state: ReplState, arg: str) -> Outcome:
    if not arg.strip():
        raise UsageError("usage: /load FILE")
    path = Path(arg.strip()).expanduser()
    # Capped and never blocking: `/load /dev/zero` or a FIFO must not take the conversation with it.
    text = safe_io.read_text_input(path, what="conversation file", limit=safe_io.CONVERSATION_MAX_BYTES)
    try:
        data = safe_io.load_json(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not a saved conversation (bad JSON: {err.msg}, line {err.lineno})") from None
    except ValueError as err:
        raise UsageError(f"{path} is not a saved conversation ({err})") from None
    if not_utf8(json.dumps(data, ensure_ascii=False)) is not None:
        # JSON escapes can spell lone surrogates, which no tokenizer takes: refuse them here, not mid-reply.
        raise UsageError(f"{path} is not a saved conversation (its text is not valid Unicode)")
    try:
        chat = type(state.chat).from_dict(state.engine, data)
    except LocalCascadeError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise UsageError(f"{path} is not a saved conversation ({err})") from None
    state.chat = chat
    state.last_trace = getattr(chat, "last_reasoning", None)
    state.last_trace_tokens = state.last_trace_seconds = None
    turns = sum(1 for m in chat.messages if m.get("role") == "user")
    return _say(f"loaded {len(chat.messages)} messages ({turns} turns) from {path}")


def _cmd_stats(state: ReplState, arg: str) -> Outcome:
    lines = []
    stats = state.last_stats
    if stats is None:
        lines.append("no reply yet")
    else:
        lines.append(
            f"last reply: {stats.prompt_tokens} prompt tokens ({stats.evaluated_tokens} evaluated) "
            f"at {stats.prompt_tokens_per_s:.1f} t/s"
        )
        lines.append(
            f"            {stats.thinking_tokens} thinking + {stats.answer_tokens} answer tokens "
            f"at {stats.generation_tokens_per_s:.1f} t/s, stopped: {stats.stop_reason}"
        )
    lines.append(
        f"session: {state.turns} replies, {state.total_evaluated_tokens} prompt tokens evaluated, "
        f"{state.total_completion_tokens} generated"
    )
    lines.append(f"context: {_context_line(state.chat)}")
    return _say(*lines)


def _context_line(chat) -> str:
    used, limit = chat.context_used, chat.context_limit
    share = f" ({100 * used / limit:.0f}%)" if limit else ""
    return f"{used}/{limit} tokens{share}"


def _cmd_info(state: ReplState, arg: str) -> Outcome:
    engine = state.engine
    lines = [f"model: {getattr(engine, 'model_name', '?')}  ({getattr(engine, 'model_path', '?')})"]
    plan = getattr(engine, "plan", None)
    if plan is not None:
        lines.extend("plan: " + line for line in describe_plan(plan))
    if state.hardware is not None:
        lines.append("hardware: " + describe_hardware(state.hardware))
    lines.append(
        f"session: think {'on' if state.think else 'off'}, trace {state.trace}, "
        f"budget {state.think_budget or 'off'}, " + _sampling_line(state.sampling)
    )
    lines.append(f"context: {_context_line(state.chat)}")
    opening = reply_opening(state)
    if opening is not None:
        lines.append(f"next reply opens with: {opening!r}")
    return _say(*lines)


def reply_opening(state: ReplState) -> str | None:
    """What the chat template puts after the next user message: shows /think at work in the prompt
    (``<think>`` left open with thinking on, ``<think></think>`` with it off)."""
    template = getattr(state.engine, "template", None)
    if template is None:
        return None
    marker = "\u2063next-user-message\u2063"
    messages = list(state.chat.messages) + [{"role": "user", "content": marker}]
    try:
        text = template.render(messages, add_generation_prompt=True, enable_thinking=state.think)
    except LocalCascadeError:
        return None
    return text.split(marker, 1)[1] if marker in text else None


def _sampling_line(sampling: Sampling) -> str:
    parts = []
    for key, (attr, _) in _SETTABLE.items():
        value = getattr(sampling, attr)
        parts.append(f"{key} {'default' if value is None else value}")
    return ", ".join(parts)


def _cmd_help(state: ReplState, arg: str) -> Outcome:
    width = max(len(cmd.usage) for cmd in COMMANDS)
    lines = [f"{cmd.usage:<{width}}  {cmd.help}" for cmd in COMMANDS]
    lines += [
        "",
        'Multi-line input: start and end with """, or press Alt-Enter (Esc Enter) for a new line.',
        "Ctrl-C stops a reply; at an empty prompt, Ctrl-C twice or Ctrl-D leaves.",
        "Start a message with // to send a line that begins with /.",
    ]
    return _say(*lines)


def _cmd_bye(state: ReplState, arg: str) -> Outcome:
    return Outcome(exit=True)


COMMANDS: tuple[Command, ...] = (
    Command("/think", "/think on|off", "the model's thinking mode", _cmd_think, ("on", "off")),
    Command("/trace", "/trace show|hide|collapse|last", "how the thinking trace is shown",
            _cmd_trace, ("show", "hide", "collapse", "last")),
    Command("/budget", "/budget N|off", "cap thinking at N tokens", _cmd_budget, ("off",)),
    Command("/system", "/system TEXT|off", "set or remove the system prompt", _cmd_system, ("off",)),
    Command("/tools", "/tools on|off|last", "let the model run python in a sandbox", _cmd_tools,
            ("on", "off", "last")),
    Command("/set", "/set temp|top_p|top_k|max_tokens|seed V", "sampling settings",
            _cmd_set, tuple(_SETTABLE)),
    Command("/clear", "/clear", "start a new conversation", _cmd_clear),
    Command("/save", "/save FILE", "save the conversation as JSON (never over an existing file)", _cmd_save),
    Command("/save!", "/save! FILE", "save it, replacing FILE if it exists", _cmd_save_replacing),
    Command("/load", "/load FILE", "load a saved conversation", _cmd_load),
    Command("/stats", "/stats", "tokens, speed, context used", _cmd_stats),
    Command("/info", "/info", "model, plan, hardware, settings", _cmd_info),
    Command("/help", "/help", "this list", _cmd_help),
    Command("/bye", "/bye", "leave", _cmd_bye),
)
_BY_NAME = {cmd.name: cmd for cmd in COMMANDS}
_ALIASES = {"/exit": "/bye", "/quit": "/bye", "/?": "/help"}


def _closest(word: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return f"; did you mean {match[0]}?" if match else ""


def is_command(line: str) -> bool:
    """A slash command, as opposed to a message (``//text`` sends ``/text`` as a message)."""
    stripped = line.lstrip()
    return stripped.startswith("/") and not stripped.startswith("//")


def run_command(state: ReplState, line: str) -> Outcome:
    """Parse one slash command and apply it. Never raises for bad input: errors become notices."""
    name, _, arg = line.strip().partition(" ")
    name = _ALIASES.get(name.lower(), name.lower())
    command = _BY_NAME.get(name)
    if command is None:
        hint = _closest(name, list(_BY_NAME))
        return _say(f"unknown command {name}{hint} (/help lists them)", kind=ERROR)
    try:
        return command.handler(state, arg)
    except LocalCascadeError as err:
        return _say(str(err), kind=ERROR)
    except (OSError, ValueError) as err:
        # A file or a path the command could not use (a NUL in a name, a full disk...): the
        # conversation must outlive it.
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        return _say(f"{command.name} failed: {reason}", kind=ERROR)


def not_utf8(text: str) -> str | None:
    """Why ``text`` cannot be sent as UTF-8 (the bytes a pipe could not decode), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        char = ord(text[err.start])
        # stdin decodes with surrogateescape: U+DC80..U+DCFF stand for the undecodable bytes.
        if 0xDC80 <= char <= 0xDCFF:
            return f"byte 0x{char - 0xDC00:02x} is not UTF-8"
        return f"U+{char:04X} is not a character"
    return None


# --------------------------------------------------------------------------
# Words for plans, hardware and turns
# --------------------------------------------------------------------------


def describe_plan(plan: Plan) -> list[str]:
    """The plan in two short lines: what loads where, and what it should do."""
    where = f"GPU {format_bytes(plan.gpu_bytes)} + RAM {format_bytes(plan.ram_bytes)}"
    if plan.gpu_bytes == 0:
        where = f"RAM {format_bytes(plan.ram_bytes)} (CPU only)"
    speed = ""
    if plan.tokens_per_s:
        label = "measured" if plan.speed_measured else "estimated"
        speed = f", ~{plan.tokens_per_s:.0f} tokens/s ({label})"
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


def describe_hardware(hardware) -> str:
    gpus = ", ".join(
        f"{gpu.name} {format_bytes(gpu.vram_total_bytes)}" for gpu in getattr(hardware, "gpus", ())
    )
    ram = format_bytes(getattr(hardware, "ram_total_bytes", 0))
    cpu = getattr(getattr(hardware, "cpu", None), "model", "unknown CPU")
    return f"{gpus or 'no GPU'}; RAM {ram}; {cpu}"


def _thought_for(tokens: int | None, seconds: float | None) -> str:
    parts = []
    if tokens is not None:
        parts.append(f"{tokens} token{'s' if tokens != 1 else ''}")
    if seconds is not None:
        parts.append(f"{seconds:.1f} s")
    return "thought for " + ", ".join(parts)


def stats_footer(stats: TurnStats) -> str:
    """One line after each reply, short enough for 80 columns."""
    used, limit = stats.context_used, stats.context_limit
    share = f" ({100 * used / limit:.0f}%)" if limit else ""
    return (
        f"prompt {stats.prompt_tokens_per_s:.1f} t/s · reply {stats.completion_tokens} tok "
        f"at {stats.generation_tokens_per_s:.1f} t/s · context {used}/{limit}{share}"
    )


def context_warning(used: int, limit: int, larger: Plan | None | bool = None) -> str | None:
    """The warning past 85% of the context; ``larger`` is the next larger plan this machine would
    hold, False when it holds none, None when unknown."""
    if not limit or used / limit <= CONTEXT_WARN_FRACTION:
        return None
    start = f"context {100 * used / limit:.0f}% full ({used}/{limit}): /save FILE then /clear to start over"
    if larger is False:
        return start + f"; this machine holds no larger context of this model than {format_tokens(limit)}"
    if larger is None:
        return start + ", or restart with a larger --ctx if `localcascade fit` says it fits"
    from localcascade.policy import describe_briefly

    return (start + f", or restart with --ctx {format_tokens(larger.n_ctx)}: this machine holds that "
            f"{describe_briefly(larger)}")


def overflow_advice(err: ContextOverflowError) -> list[str]:
    return [
        f"{err}",
        "nothing was dropped: /save FILE keeps this conversation, /clear starts a new one, "
        "or restart with a larger --ctx if `localcascade fit` says it fits",
    ]


# --------------------------------------------------------------------------
# The terminal: rendering a reply
# --------------------------------------------------------------------------


def make_console(file=None):
    """A rich console that writes no escape codes on dumb terminals, pipes, or with NO_COLOR."""
    from rich.console import Console

    plain = lc_settings.no_color()
    console = Console(
        file=file,
        no_color=plain,
        color_system=None if plain else "auto",
        highlight=False,
        emoji=False,
    )
    # A pipe or a file has no width: rich would break prose at 80 columns; whatever shows it wraps.
    console.soft_wrap = not console.is_terminal
    return console


def _fancy(console) -> bool:
    """Can we move the cursor (live regions, markdown re-rendering)? Not on dumb terminals or pipes,
    and not with NO_COLOR: rich's live region writes cursor codes whatever its colour system."""
    return (
        console.is_terminal
        and not console.is_dumb_terminal
        and not lc_settings.dumb_terminal()
        and not lc_settings.no_color()
    )


class _MarkdownBlocks:
    """Split a streaming answer into finished markdown blocks and the unfinished tail.

    A block ends at a blank line outside a code fence; finished blocks can be
    rendered as markdown at once while the tail is still being written.
    """

    def __init__(self) -> None:
        self.pending = ""

    def feed(self, text: str) -> list[str]:
        self.pending += text
        done = []
        while True:
            cut = self._block_end(self.pending)
            if cut is None:
                return done
            block, self.pending = self.pending[:cut], self.pending[cut:].lstrip("\n")
            if block.strip():
                done.append(block)

    @staticmethod
    def _block_end(text: str) -> int | None:
        in_fence = False
        offset = 0
        lines = text.split("\n")
        for index, line in enumerate(lines[:-1]):     # the last line is still being written
            if line.lstrip().startswith(("```", "~~~")):
                in_fence = not in_fence
            offset += len(line) + 1
            if not in_fence and not line.strip() and index > 0:
                return offset
        return None

    def flush(self) -> str:
        rest, self.pending = self.pending, ""
        return rest


class TurnPrinter:
    """Renders one reply's events: the trace apart from the answer, then the footer."""

    def __init__(self, console, state: ReplState, count_tokens: Callable[[str], int]):
        self.console = console
        self.state = state
        self.count_tokens = count_tokens
        self.fancy = _fancy(console)
        self.thinking: list[str] = []
        self.answer: list[str] = []
        self.started = time.monotonic()
        self.think_end: float | None = None
        self.trace_closed = False
        self.live = None
        self.blocks = _MarkdownBlocks()
        self.last_refresh = 0.0

    # -- events

    def thinking_text(self, text: str) -> None:
        if not self.thinking and self.state.trace == "show":
            self.console.print("Thinking", style="dim italic")
            text = text.lstrip("\n")
        self.thinking.append(text)
        if self.state.trace == "show":
            self.console.print(text, end="", style="dim", markup=False, soft_wrap=True)
        elif self.fancy:
            self._live_show(f"thinking… {time.monotonic() - self.started:.1f} s", style="dim italic")

    def answer_text(self, text: str) -> None:
        if not self.answer:
            self.close_trace()
            text = text.lstrip("\n")
            if not text:
                return
        self.answer.append(text)
        if not self.fancy:
            self.console.print(text, end="", markup=False, soft_wrap=True)
            return
        for block in self.blocks.feed(text):
            self._print_block(block)
        self._live_show(self.blocks.pending)

    def finish(self, stats: TurnStats | None, *, failed: bool = False) -> None:
        """End of the reply (complete, stopped, or failed)."""
        self.close_trace(stats)
        if stats is not None and self.thinking:
            self.state.last_trace_tokens = stats.thinking_tokens      # exact, where the summary estimated
        if self.fancy:
            rest = self.blocks.flush()
            self._stop_live()
            if rest.strip():
                self._print_block(rest)
        elif self.answer and not "".join(self.answer).endswith("\n"):
            self.console.print()
        if not self.answer and not self.thinking and not failed:
            self.console.print("(no reply)", style="dim")

    def tool_event(self, event) -> None:
        """A tool call starting or finished: shown like the trace (in full, one line, or not at all)."""
        from localcascade.tools.loop import ToolCallFinished, ToolCallStarted
        from localcascade.tools.transcript import describe_call, describe_result, summarize_call

        if isinstance(event, ToolCallStarted):
            self._stop_live()
            if self.state.trace == "show":
                self.console.print(describe_call(event.index, event.code), style="dim", markup=False)
            elif self.fancy:
                self._live_show(f"running python call {event.index}…", style="dim italic")
        elif isinstance(event, ToolCallFinished):
            self._stop_live()
            self.state.last_tool_calls.append((event.index, event.result))
            if self.state.trace == "show":
                self.console.print(describe_result(event.result), style="dim", markup=False)
            elif self.state.trace == "collapse":
                line = summarize_call(event.index, event.result.code, event.result)
                self.console.print(f"{line} (/tools last shows it)", style="dim italic", markup=False)

    # -- trace

    def close_trace(self, stats: TurnStats | None = None) -> None:
        """The thinking is over: summarise it (collapse), end its block (show), remember it (/trace last)."""
        if self.trace_closed or not self.thinking:
            return
        self.trace_closed = True
        self.think_end = time.monotonic()
        trace = "".join(self.thinking).strip()
        tokens = stats.thinking_tokens if stats is not None else self.count_tokens(trace)
        seconds = self.think_end - self.started
        self.state.last_trace, self.state.last_trace_tokens = trace, tokens
        self.state.last_trace_seconds = seconds
        self._stop_live()
        if self.state.trace == "show":
            if not "".join(self.thinking).endswith("\n"):
                self.console.print()
            self.console.print(f"({_thought_for(tokens, seconds)})", style="dim italic")
        elif self.state.trace == "collapse":
            self.console.print(f"{_thought_for(tokens, seconds)} (/trace last shows it)", style="dim italic")
        if self.state.trace != "hide":
            self.console.print()

    # -- live region (fancy terminals only)

    def _print_block(self, block: str) -> None:
        from rich.markdown import Markdown

        target = self.live.console if self.live is not None else self.console
        target.print(Markdown(block.strip("\n")))
        target.print()

    def _live_show(self, text: str, style: str = "") -> None:
        from rich.live import Live
        from rich.text import Text

        # Only the tail fits on screen; a live region taller than the terminal cannot be redrawn.
        height = max(3, self.console.size.height - 3)
        lines = text.split("\n")[-height:]
        renderable = Text("\n".join(lines), style=style)
        if self.live is None:
            self.live = Live(renderable, console=self.console, auto_refresh=False, transient=True)
            self.live.start()
            self.last_refresh = 0.0
        now = time.monotonic()
        # A refresh per token flickers; fifteen a second reads as smooth.
        self.live.update(renderable, refresh=now - self.last_refresh > 1 / 15)
        if now - self.last_refresh > 1 / 15:
            self.last_refresh = now

    def _stop_live(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


class _StopRequest:
    """Ctrl-C while a reply streams: the first asks the reply to stop at the next token, a second
    (the engine may be busy reading a long prompt) interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.previous = None

    def __enter__(self) -> "_StopRequest":
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:           # not the main thread: leave Ctrl-C as it is
            self.previous = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


@dataclass
class _TurnStart:
    """What was known when a message was sent, to account for a reply the engine could not finish."""

    messages: int                 # messages in the conversation before it
    context_used: int             # tokens the context held (the part the engine can reuse)
    sent: float                   # time.monotonic()
    first_text: float | None = None


def _estimated_stats(state: ReplState, printer: "TurnPrinter", start: _TurnStart) -> TurnStats:
    """TurnStats for a reply cut off before the engine's own: counted from what was shown, and
    from how far the context grew, so /stats and the session totals still include it."""
    count = state.engine.count_tokens
    thinking = count("".join(printer.thinking).strip()) if printer.thinking else 0
    answer = count("".join(printer.answer).strip()) if printer.answer else 0
    used = state.chat.context_used
    prompt = max(0, used - thinking - answer)
    now = time.monotonic()
    first = start.first_text if start.first_text is not None else now
    return TurnStats(
        prompt_tokens=prompt,
        evaluated_tokens=max(0, prompt - start.context_used),
        thinking_tokens=thinking,
        answer_tokens=answer,
        prompt_seconds=first - start.sent,
        generation_seconds=now - first,
        context_used=used,
        context_limit=state.chat.context_limit,
        stop_reason="interrupted",
    )


def stream_reply(console, state: ReplState, text: str) -> None:
    """Send one message and render the reply as it streams; Ctrl-C stops it and keeps what was said."""
    printer = TurnPrinter(console, state, state.engine.count_tokens)
    stats: TurnStats | None = None
    stopped = False
    events: Iterator = iter(())
    options = state.options()
    before = _TurnStart(len(state.chat.messages), state.chat.context_used, time.monotonic())
    try:
        with _StopRequest() as stop:
            state.last_tool_calls = []
            if state.tools and state.python_tool is not None:
                from localcascade.tools.loop import run_with_tools

                events = run_with_tools(state.chat, text, options, state.python_tool,
                                        max_calls=state.max_tool_calls, should_stop=lambda: stop.requested)
            else:
                events = state.chat.send(text, options)
            for event in events:
                if isinstance(event, ThinkingText):
                    printer.thinking_text(event.text)
                elif isinstance(event, AnswerText):
                    printer.answer_text(event.text)
                elif isinstance(event, TurnStats):
                    stats = event
                else:
                    printer.tool_event(event)
                if before.first_text is None and not isinstance(event, TurnStats):
                    before.first_text = time.monotonic()
                if stop.requested and not stopped:
                    stopped = True
                    # The turn ends at the next token and the engine still yields its
                    # TurnStats, so the interrupted reply is counted like any other.
                    events.stop()
    except KeyboardInterrupt:
        stopped = True        # a second Ctrl-C: the engine was cut off before its TurnStats
    except ContextOverflowError as err:
        printer.finish(None, failed=True)
        for line in overflow_advice(err):
            console.print(line, style="yellow", markup=False)
        return
    except LocalCascadeError as err:
        # The engine failed this turn (not the session): say so and keep the conversation going.
        printer.finish(None, failed=True)
        console.print(f"error: {err}", style="red", markup=False)
        return
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()        # the engine keeps what was said so far in the history
    printer.finish(stats)
    if stopped:
        if stats is None and len(state.chat.messages) > before.messages:
            stats = _estimated_stats(state, printer, before)      # the reply is in the history
        if stats is not None:
            stats = replace(stats, stop_reason="interrupted")
        where = "" if stats is not None else f" context {_context_line(state.chat)}"   # else in the footer
        console.print(f"[reply stopped; what was said is kept]{where}", style="yellow", markup=False)
    if stats is not None:
        state.record(stats)
        console.print(stats_footer(stats), style="dim", markup=False)
        if stats.stop_reason == "length" and stats.ended_in_thinking:
            console.print(
                "(max_tokens ran out while thinking, before any answer: /set max_tokens N, "
                "or /budget N to cap the thinking)",
                style="dim",
            )
        elif stats.stop_reason == "length":
            console.print("(reply cut at max_tokens: /set max_tokens N for longer replies)", style="dim")
    warning = context_warning(state.chat.context_used, state.chat.context_limit, _larger_plan(state))
    if warning:
        console.print(warning, style="yellow", markup=False)


def _larger_plan(state: ReplState) -> Plan | None | bool:
    """The next larger plan for the warning (once the context is nearly full; remembered)."""
    chat = state.chat
    if not chat.context_limit or chat.context_used / chat.context_limit <= CONTEXT_WARN_FRACTION:
        return None
    if state.hardware is None or getattr(state.engine, "plan", None) is None:
        return None
    if state.larger_plan is None:
        from localcascade.planning import larger_plan

        try:
            state.larger_plan = larger_plan(state.engine.model_path, state.engine.plan, state.hardware) or False
        except LocalCascadeError:
            return None
    return state.larger_plan


# --------------------------------------------------------------------------
# The terminal: reading input
# --------------------------------------------------------------------------

MULTILINE_FENCE = '"""'


class _SlashCompleter:
    """Tab completion of slash commands and their first argument."""

    def __new__(cls):
        from prompt_toolkit.completion import Completer, Completion

        class SlashCompleter(Completer):
            def get_completions(self, document, complete_event):
                text = document.text_before_cursor
                if not text.startswith("/") or "\n" in text:
                    return
                name, space, arg = text.partition(" ")
                if not space:
                    for cmd in COMMANDS:
                        if cmd.name.startswith(name.lower()):
                            yield Completion(cmd.name, start_position=-len(name), display_meta=cmd.help)
                    return
                command = _BY_NAME.get(_ALIASES.get(name.lower(), name.lower()))
                if command is None or " " in arg:
                    return
                for choice in command.choices:
                    if choice.startswith(arg.lower()):
                        yield Completion(choice, start_position=-len(arg))

        return SlashCompleter()


class UnfinishedBlock(EOFError):
    """The input ended inside a \"\"\" block; ``lines`` is how many lines it held."""

    def __init__(self, lines: int):
        super().__init__(lines)
        self.lines = lines


class InputTooLong(Exception):
    """A typed or piped line past the reader's cap; it was dropped, not sent."""

    def __init__(self, limit: int):
        super().__init__(limit)
        self.limit = limit


# A line typed or pasted at the terminal: prompt-toolkit re-renders and copies the whole line on
# every key it processes (and an unbracketed paste is one key per character), so its cost grows
# with the square of the line. 64 Ki characters (~16K tokens) stays well under a second; longer
# text is piped (`localcascade ask < file`), where a line may be as long as a prompt.
TYPED_LINE_MAX_CHARS = 64 * 1024
# Redraws of the input line at most this often: a paste arrives as thousands of keys at once.
_MIN_REDRAW_S = 0.05


class LineReader:
    """Reads one message at a time: prompt-toolkit on a terminal, plain lines from a pipe.

    ``read(prompt)`` returns the text, raises EOFError on Ctrl-D / end of input
    and KeyboardInterrupt on Ctrl-C (``interrupted_text`` says what was typed).
    """

    def __init__(self, history_path: Path | None = None, *, interactive: bool | None = None,
                 show_prompt: bool | None = None):
        if interactive is None:
            # A dumb terminal (an editor's shell buffer) gets plain lines: prompt-toolkit writes
            # cursor codes even in its dumb mode, and such terminals cannot show them.
            interactive = _stdin_is_terminal() and not lc_settings.dumb_terminal()
        self.interactive = interactive
        # Lines piped in are not typed by anyone: a prompt would only end up in the output,
        # glued to the reply that follows it.
        self.show_prompt = interactive or (_stdin_is_terminal() if show_prompt is None else show_prompt)
        if not interactive and hasattr(sys.stdin, "reconfigure"):
            # Bytes that are not UTF-8 must reach run_repl as text it can refuse line by line;
            # a strict decoder would raise from readline and end the chat.
            sys.stdin.reconfigure(errors="surrogateescape")
        self.session = None
        self.interrupted_text = ""
        self.dropped = 0            # characters typed past TYPED_LINE_MAX_CHARS on this line
        if self.interactive:
            self.session = self._make_session(history_path)
            self.session.app.min_redraw_interval = _MIN_REDRAW_S

    def _make_session(self, history_path: Path | None):
        from prompt_toolkit import PromptSession
        from prompt_toolkit.filters import Condition
        from prompt_toolkit.history import FileHistory, InMemoryHistory
        from prompt_toolkit.key_binding import KeyBindings
        from prompt_toolkit.keys import Keys

        history = InMemoryHistory()
        if history_path is not None:
            try:
                history_path.parent.mkdir(parents=True, exist_ok=True)
                history_path.touch(exist_ok=True)
                history = FileHistory(str(history_path))
            except OSError:
                pass          # a read-only home still gets a working session, without history

        bindings = KeyBindings()

        @bindings.add("escape", "enter")
        def _newline(event):          # Alt-Enter (sent as Esc Enter): a new line, not "send"
            event.current_buffer.insert_text("\n")

        def full() -> bool:
            from prompt_toolkit.application import get_app

            return len(get_app().current_buffer.text) >= TYPED_LINE_MAX_CHARS

        # Past the cap, keys are counted, not inserted, and no undo state is saved for them
        # (prompt-toolkit saves a copy of the whole line per undo step).
        @bindings.add(Keys.Any, filter=Condition(full), save_before=lambda event: False)
        def _drop(event):
            self.dropped += len(event.data)

        @bindings.add(Keys.BracketedPaste)
        def _paste(event):            # a bracketed paste is one key: insert only what fits
            data = event.data.replace("\r\n", "\n").replace("\r", "\n")
            room = max(0, TYPED_LINE_MAX_CHARS - len(event.current_buffer.text))
            self.dropped += max(0, len(data) - room)
            event.current_buffer.insert_text(data[:room])

        from prompt_toolkit.output import ColorDepth

        return PromptSession(
            # NO_COLOR: a monochrome input line. Editing it still takes cursor moves and attribute
            # resets (prompt-toolkit cannot edit a line without them); TERM=dumb gets plain lines.
            color_depth=ColorDepth.MONOCHROME if lc_settings.no_color() else None,
            history=history,
            completer=_SlashCompleter(),
            complete_while_typing=False,
            key_bindings=bindings,
            prompt_continuation=lambda width, line_number, wrap_count: "... ".rjust(width),
            enable_suspend=True,
        )

    def _line(self, prompt: str) -> str:
        if self.session is None:
            if self.show_prompt:
                sys.stdout.write(prompt)
                sys.stdout.flush()
            if sys.stdin is None:             # started with stdin closed
                raise EOFError
            return self._piped_line()
        self.dropped = 0
        try:
            line = self.session.prompt(prompt)
        except KeyboardInterrupt:
            self.interrupted_text = self.session.default_buffer.text
            raise
        if self.dropped:
            raise InputTooLong(TYPED_LINE_MAX_CHARS)
        return line

    @staticmethod
    def _piped_line() -> str:
        """One line of piped input, at most a prompt's worth: `run < /dev/zero` has no newline."""
        limit = safe_io.PROMPT_MAX_BYTES
        line = sys.stdin.readline(limit + 1)
        if not line:
            raise EOFError
        if len(line) > limit and not line.endswith("\n"):
            while True:  # skip the rest of the line, a bounded piece at a time
                rest = sys.stdin.readline(1024 * 1024)
                if not rest or rest.endswith("\n"):
                    break
            raise InputTooLong(limit)
        return line.rstrip("\n")

    def read(self, prompt: str) -> str:
        self.interrupted_text = ""
        first = self._line(prompt)
        if not first.lstrip().startswith(MULTILINE_FENCE):
            return first
        # A """ block: everything up to the closing """ is one message.
        body = first.lstrip()[len(MULTILINE_FENCE):]
        if body.rstrip().endswith(MULTILINE_FENCE) and body.strip() != "":
            return body.rstrip()[: -len(MULTILINE_FENCE)]
        lines = [body] if body else []
        while True:
            try:
                line = self._line("... ")
            except EOFError:
                raise UnfinishedBlock(len(lines)) from None
            if line.rstrip().endswith(MULTILINE_FENCE):
                lines.append(line.rstrip()[: -len(MULTILINE_FENCE)])
                return "\n".join(lines).strip("\n")
            lines.append(line)


def _stdin_is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


# --------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------


def _print_notices(console, outcome: Outcome) -> None:
    styles = {INFO: "", WARN: "yellow", ERROR: "red", TRACE: "dim"}
    for notice in outcome.notices:
        console.print(notice.text, style=styles.get(notice.kind, ""), markup=False)


def run_repl(state: ReplState, *, console=None, reader: LineReader | None = None) -> int:
    """Talk until /bye, Ctrl-D or a second Ctrl-C at an empty prompt; returns the exit code (0)."""
    console = console or make_console()
    console.print(
        f"{getattr(state.engine, 'model_name', 'model')} ready. /help for commands, "
        "Ctrl-D or /bye to leave.",
        style="dim",
        markup=False,
    )
    reader = reader or LineReader(lc_settings.data_dir() / "history")
    warned_interrupt = False
    while True:
        try:
            line = reader.read(state.prompt_label())
        except UnfinishedBlock as err:
            # Not sent, as a shell or Python treats an unclosed quote at the end of a script: a
            # missing closing fence more likely means input that was cut off than a finished
            # message. On a terminal, Ctrl-D there is a choice to leave; in a pipe the input is
            # incomplete, so the exit status says so.
            held = f"{err.lines} line{'s' if err.lines != 1 else ''}" if err.lines else "empty"
            print(f'localcascade: the input ended inside a """ block ({held}), which was not sent; '
                  'close the block with """ to send it', file=sys.stderr)
            return 0 if getattr(reader, "show_prompt", False) else 1
        except InputTooLong as err:
            console.print(f"error: that input was not sent: it is longer than {err.limit:,} characters "
                          "(pipe long text into `localcascade ask` instead)", style="red", markup=False)
            continue
        except OSError as err:
            print(f"localcascade: cannot read the chat input: {err.strerror or err}", file=sys.stderr)
            return 1
        except EOFError:
            if reader.show_prompt:
                console.print()      # leave the prompt's line
            return 0
        except KeyboardInterrupt:
            if reader.interrupted_text.strip():
                warned_interrupt = False      # Ctrl-C on a typed line just discards it
                continue
            if warned_interrupt:
                return 0
            warned_interrupt = True
            console.print("(Ctrl-C again, Ctrl-D or /bye to leave)", style="dim")
            continue
        warned_interrupt = False
        if not line.strip():
            continue
        problem = not_utf8(line)
        if problem is not None:
            console.print(f"error: that input was not sent: {problem} (the chat takes UTF-8 text)",
                          style="red", markup=False)
            continue
        if is_command(line):
            outcome = run_command(state, line)
            _print_notices(console, outcome)
            if outcome.exit:
                return 0
            continue
        message = line.lstrip()[1:] if line.lstrip().startswith("//") else line
        stream_reply(console, state, message)
