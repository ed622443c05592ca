"""Tool calls in a reply: Qwen3-Coder-style XML blocks, as Nemotron-Cascade-2 writes them.

    <tool_call>
    <function=NAME>
    <parameter=P>
    VALUE
    </parameter>
    </function>
    </tool_call>

Parameter values are parsed as JSON when they parse as JSON (numbers, lists, objects),
else kept as strings: that is how the chat templates render them back (strings as
they are, everything else with ``tojson``). A block holding a JSON object
``{"name": ..., "arguments": {...}}`` (the Hermes form some models fall back to) is read too.
A ``</parameter>`` the model forgot is tolerated; a ``</tool_call>`` is not. JSON nested deeper than
``safe_io.JSON_MAX_DEPTH`` is not parsed (the value stays a string).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from localcascade.safe_io import load_json

_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*?)(?:</function>|\Z)", re.DOTALL)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)(?:</parameter>|(?=<parameter=)|\Z)", re.DOTALL)


@dataclass
class ToolCall:
    name: str
    arguments: dict


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """(``text`` with the tool-call blocks removed and stripped, the calls in order); ``text``
    exactly as it was when it holds no call.

    A block that holds no readable call, or is not closed (a reply cut short), stays in the
    text: it is not a call anyone could run, and dropping it would hide what the model said.
    """
    calls: list[ToolCall] = []

    def take(block: re.Match) -> str:
        found = _calls_in(block.group(1))
        calls.extend(found)
        return "" if found else block.group(0)

    rest = _BLOCK.sub(take, text)
    return (rest.strip(), calls) if calls else (text, calls)


def _calls_in(body: str) -> list[ToolCall]:
    found = []
    for function in _FUNCTION.finditer(body):
        arguments = {}
        for parameter in _PARAMETER.finditer(function.group(2)):
            arguments[parameter.group(1).strip()] = _value(parameter.group(2))
        found.append(ToolCall(function.group(1).strip(), arguments))
    if not found:
        try:
            data = load_json(body)
        except ValueError:
            return []
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            arguments = data.get("arguments", {})
            if isinstance(arguments, str):
                try:
                    arguments = load_json(arguments)
                except ValueError:
                    arguments = {}
            found.append(ToolCall(data["name"], arguments if isinstance(arguments, dict) else {}))
    return found


def _value(raw: str):
    # The template writes "<parameter=P>\n" VALUE "\n</parameter>": one newline each side is framing.
    if raw.startswith("\n"):
        raw = raw[1:]
    if raw.endswith("\n"):
        raw = raw[:-1]
    try:
        # Bounded nesting: a model can write a value nested past Python's recursion limit, and a
        # RecursionError here once killed the server's decoder thread. Deeper values stay text.
        return load_json(raw)
    except ValueError:
        return raw
