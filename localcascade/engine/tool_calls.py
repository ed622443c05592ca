"""Tool calls in a reply: the Qwen3-Coder style XML that Nemotron Nano / Cascade-2 write.

    <tool_call>
    <function=NAME>
    <parameter=P>
    value
    </parameter>
    </function>
    </tool_call>

(the format NVIDIA's Nemotron-3-Nano chat template asks for). Parameter values
are JSON when they parse as JSON (numbers, booleans, objects, quoted strings),
else the text as written: the template writes strings unquoted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*?)</function>", re.DOTALL)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)</parameter>", re.DOTALL)


@dataclass
class ToolCall:
    name: str
    arguments: dict


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """(``text`` with the tool-call blocks removed, the calls in order).

    A block without a well-formed ``<function=...>`` is left in the text: it is not a call
    the client could run, and dropping it would hide what the model said.
    """
    calls: list[ToolCall] = []

    def take(match: re.Match) -> str:
        found = [
            ToolCall(name=fn.group(1).strip(), arguments={
                p.group(1).strip(): _value(p.group(2)) for p in _PARAMETER.finditer(fn.group(2))
            })
            for fn in _FUNCTION.finditer(match.group(1))
        ]
        if not found:
            return match.group(0)
        calls.extend(found)
        return ""

    rest = _BLOCK.sub(take, text)
    return (rest.strip() if calls else text), calls


def _value(raw: str):
    # The format puts the value on its own lines: one newline on each side is framing.
    if raw.startswith("\n"):
        raw = raw[1:]
    if raw.endswith("\n"):
        raw = raw[:-1]
    try:
        return json.loads(raw)
    except ValueError:
        return raw
