"""From the engine's answer text to what a client sees: content, stop strings, tool calls.

Text is released as soon as it cannot be part of a stop string or of a
``<tool_call>`` block; a block is held back whole and parsed into OpenAI
``tool_calls`` when the reply ends (streaming included), so ``content`` never
holds tool-call XML, as it never holds think tags: a block that does not parse (or
that a stop string or the token limit cut short) is dropped, not shown raw.
Stop strings apply to the whole reply, inside tool-call blocks too, as they would to
any text the model writes; ``max_calls`` (``parallel_tool_calls: false``) ends the
reply when the model starts a call beyond that many.
"""

from __future__ import annotations

import re
import uuid

from localcascade.engine.tool_calls import ToolCall, parse_tool_calls

TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"
_BLOCK = re.compile(r"<tool_call>.*?(?:</tool_call>|\Z)", re.DOTALL)


class AnswerFilter:
    """Feed answer text in pieces; get back the content that may be shown now."""

    def __init__(self, *, stop: tuple[str, ...] = (), parse_tools: bool = False, max_calls: int | None = None) -> None:
        self.stop = stop
        self.parse_tools = parse_tools
        self.max_calls = max_calls
        self.stopped = False           # a stop string (or the call limit) was met: the reply must end
        self.dropped_blocks = 0        # tool-call blocks that did not parse, kept out of the content
        self._pending = ""             # could still turn into a stop string or a tool call
        self._tools = ""               # from the first <tool_call> on
        self._shown: list[str] = []

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if self._tools:
            self._hold(self._tools + text)
            return ""
        buf = self._pending + text
        self._pending = ""
        cut = self._stop_at(buf)
        if cut >= 0:
            self.stopped = True
            buf = buf[:cut]
        if self.parse_tools:
            at = buf.find(TOOL_OPEN)
            if at >= 0:
                self._hold(buf[at:])
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
            unread = _BLOCK.findall(text)
            if unread:
                self.dropped_blocks += len(unread)
                text = _BLOCK.sub("", text).strip()
            rest += text
        return self._show(rest), calls

    def _stop_at(self, text: str) -> int:
        return min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)

    def _hold(self, tools: str) -> None:
        """Keep the tool-call part, cut at a stop string or after the last call allowed."""
        cut = self._stop_at(tools)
        if cut >= 0:
            self.stopped = True
            tools = tools[:cut]
        if self.max_calls is not None:
            end = 0
            for _ in range(self.max_calls):
                at = tools.find(TOOL_CLOSE, end)
                if at < 0:
                    break
                end = at + len(TOOL_CLOSE)
            else:
                # The calls allowed are complete: the reply ends if the model starts another (a reply
                # that just ends after them is left to end, so its conversation stays reusable).
                more = tools.find(TOOL_OPEN, end)
                if more >= 0:
                    self.stopped = True
                    tools = tools[:more]
        self._tools = tools

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
