"""The slash commands: parse one, apply it to the session state, answer with notices.

No terminal I/O here: ``run_command`` returns an ``Outcome`` whose ``Notice`` lines the loop prints,
so every command is tested without a terminal.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from localcascade import safe_io
from localcascade.cli.wording import (context_line, describe_hardware, describe_plan, error_line, last_reply_lines,
                                      thought_for)
from localcascade.engine.options import LIMITS
from localcascade.errors import LocalCascadeError, OptionError, UsageError
from localcascade.repl.state import TRACE_MODES, ReplState
from localcascade.units import format_tokens, parse_tokens

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
    state.options = replace(state.options, think=_on_off(arg, "/think"))
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
            header += f" ({thought_for(state.last_trace_tokens, state.last_trace_seconds)})"
        return Outcome([Notice(header + ":", INFO), Notice(state.last_trace, TRACE)])
    if word not in TRACE_MODES:
        raise UsageError(f"/trace takes show, hide, collapse or last, not {arg.strip()!r}")
    state.trace = word
    extra = "" if state.think else " (thinking is off: /think on to get a trace)"
    return _say(f"trace {word}{extra}")


def _cmd_budget(state: ReplState, arg: str) -> Outcome:
    word = arg.strip().lower()
    budget = state.options.think_budget
    if not word:
        shown = format_tokens(budget) if budget else "off"
        return _say(f"thinking budget is {shown} (/budget N|off)")
    if word == "off":
        state.options = replace(state.options, think_budget=None)
        return _say("thinking budget off: the model thinks as long as it wants")
    state.options = replace(state.options, think_budget=parse_tokens(word))
    extra = "" if state.think else " (applies once /think on)"
    return _say(f"thinking budget {state.options.think_budget} tokens{extra}")


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
    for message in chat.messages:
        if message.get("role") == "system":
            return message.get("content")
    return None


def _number(field: str) -> Callable[[str], float]:
    """The text of a /set value as a number; its limits are checked where the options are built
    (engine/options.py), which words them the same way."""
    def parse(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise OptionError(field, text, LIMITS[field].accepted) from None

    return parse


def _whole(field: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise OptionError(field, text, LIMITS[field].accepted) from None

    return parse


# /set NAME -> (GenerationOptions field, parser): the parser reads the text, GenerationOptions checks the value.
_SETTABLE: dict[str, tuple[str, Callable[[str], object]]] = {
    "temp": ("temperature", _number("temperature")),
    "top_p": ("top_p", _number("top_p")),
    "top_k": ("top_k", _whole("top_k")),
    "max_tokens": ("max_tokens", parse_tokens),
    "seed": ("seed", _whole("seed")),
}
# The chat's names for GenerationOptions' fields, in what it says of a value outside the limits.
_OPTION_NAMES = {**{field: name for name, (field, _) in _SETTABLE.items()}, "think_budget": "/budget"}
_SET_ALIASES = {"temperature": "temp", "top-p": "top_p", "top-k": "top_k", "max-tokens": "max_tokens"}


def _cmd_set(state: ReplState, arg: str) -> Outcome:
    parts = arg.split()
    if not parts:
        lines = []
        for key, (attr, _) in _SETTABLE.items():
            value = getattr(state.options, attr)
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
    state.options = replace(state.options, **{attr: value})
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
    lines = ["no reply yet"] if state.last_stats is None else last_reply_lines(state.last_stats)
    lines.append(
        f"session: {state.turns} replies, {state.total_evaluated_tokens} prompt tokens evaluated, "
        f"{state.total_completion_tokens} generated"
    )
    lines.append(f"context: {context_line(state.chat.context_used, state.chat.context_limit)}")
    return _say(*lines)


def _cmd_info(state: ReplState, arg: str) -> Outcome:
    engine = state.engine
    lines = [f"model: {engine.model_name}  ({engine.model_path})"]
    if engine.plan is not None:
        lines.extend("plan: " + line for line in describe_plan(engine.plan))
    if state.hardware is not None:
        lines.append("hardware: " + describe_hardware(state.hardware))
    lines.append(
        f"session: think {'on' if state.think else 'off'}, trace {state.trace}, "
        f"budget {state.options.think_budget or 'off'}, " + _sampling_line(state)
    )
    lines.append(f"context: {context_line(state.chat.context_used, state.chat.context_limit)}")
    opening = reply_opening(state)
    if opening is not None:
        lines.append(f"next reply opens with: {opening!r}")
    return _say(*lines)


def reply_opening(state: ReplState) -> str | None:
    """What the chat template puts after the next user message: shows /think at work in the prompt
    (``<think>`` left open with thinking on, ``<think></think>`` with it off)."""
    template = state.engine.template
    if template is None:
        return None
    marker = "\u2063next-user-message\u2063"
    messages = list(state.chat.messages) + [{"role": "user", "content": marker}]
    try:
        text = template.render(messages, add_generation_prompt=True, enable_thinking=state.think)
    except LocalCascadeError:
        return None
    return text.split(marker, 1)[1] if marker in text else None


def _sampling_line(state: ReplState) -> str:
    parts = []
    for key, (attr, _) in _SETTABLE.items():
        value = getattr(state.options, attr)
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


def find_command(name: str) -> Command | None:
    """The command a typed name means (aliases such as /exit and /quit included), or None."""
    return _BY_NAME.get(_ALIASES.get(name.lower(), name.lower()))


def run_command(state: ReplState, line: str) -> Outcome:
    """Parse one slash command and apply it. Never raises for bad input: errors become notices."""
    name, _, arg = line.strip().partition(" ")
    command = find_command(name)
    if command is None:
        name = name.lower()
        hint = _closest(name, list(_BY_NAME))
        return _say(f"unknown command {name}{hint} (/help lists them)", kind=ERROR)
    try:
        return command.handler(state, arg)
    except OptionError as err:
        return _say(err.naming(_OPTION_NAMES.get(err.field, err.field)), kind=ERROR)
    except LocalCascadeError as err:
        return _say(error_line(err), kind=ERROR)
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

