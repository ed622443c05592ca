"""From the engine's answer text to what a client sees: content, stop strings, tool calls.

Text is released as soon as it cannot be part of a stop string or of a
``<tool_call>`` block; a block is held back whole and parsed into OpenAI
``tool_calls`` when the reply ends (streaming included), so ``content`` never
holds tool-call XML, as it never holds think tags.
"""

from __future__ import annotations

import uuid

from localcascade.engine.tool_calls import ToolCall, parse_tool_calls

TOOL_OPEN = "<tool_call>"


class AnswerFilter:
    """Feed answer text in pieces; get back the content that may be shown now."""

    def __init__(self, *, stop: tuple[str, ...] = (), parse_tools: bool = False) -> None:
        self.stop = stop
        self.parse_tools = parse_tools
        self.stopped = False           # a stop string was met: the reply must end
        self._pending = ""             # could still turn into a stop string or a tool call
        self._tools = ""               # from the first <tool_call> on
        self._shown: list[str] = []

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if self._tools:
            self._tools += text
            return ""
        buf = self._pending + text
        self._pending = ""
        cut = min((i for i in (buf.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            buf = buf[:cut]
        if self.parse_tools:
            at = buf.find(TOOL_OPEN)
            if at >= 0:
                self._tools = buf[at:]
                return self._show(buf[:at])
        if self.stopped:
            return self._show(buf)
        keep = self._partial_marker(buf)
        self._pending = buf[len(buf) - keep:] if keep else ""
        return self._show(buf[:len(buf) - keep])

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(content not yet shown, the tool calls) once the reply (or one round of it) has ended.

        The filter is empty again after it: a reply continued after its calls ran on the
        server (``serve --tools python``) feeds the next round's text into it.
        """
        rest = "" if self.stopped else self._pending
        self._pending = ""
        calls: list[ToolCall] = []
        if self._tools:
            text, calls = parse_tool_calls(self._tools)
            self._tools = ""
            rest += text
        return self._show(rest), calls

    @property
    def content(self) -> str:
        """Everything shown, as the non-streaming reply's ``content``."""
        return "".join(self._shown).strip()

    def _show(self, text: str) -> str:
        if text:
            self._shown.append(text)
        return text

    def _partial_marker(self, buf: str) -> int:
        """Length of the longest end of ``buf`` that starts a stop string or a tool-call block."""
        markers = self.stop + ((TOOL_OPEN,) if self.parse_tools else ())
        best = 0
        for marker in markers:
            for n in range(min(len(marker) - 1, len(buf)), best, -1):
                if marker.startswith(buf[-n:]):
                    best = n
                    break
        return best


def openai_tool_calls(calls: list[ToolCall]) -> list[dict]:
    import json

    return [
        {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
         "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
        for c in calls
    ]
