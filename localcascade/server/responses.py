"""OpenAI's Responses API (``POST /v1/responses``) over the same machinery as chat completions.

A Responses request is turned into the chat request it means (``to_chat``): ``instructions``
become a system message, ``input`` items become messages (``function_call`` items the
assistant's tool calls, ``function_call_output`` items ``tool`` messages), ``text.format``
becomes ``response_format``, ``reasoning.effort`` ``reasoning_effort``, ``max_output_tokens``
``max_completion_tokens``. The reply is generated, filtered and accounted exactly as a chat
completion's (app.py's _Reply); this module only writes it out as Responses output items
(``reasoning`` with the thinking text, ``message``, ``function_call``) and, streaming, as the
documented event sequence: ``response.created``, ``response.in_progress``, for each item
``response.output_item.added`` ... its deltas ... ``response.output_item.done``, then
``response.completed`` (``response.incomplete`` when the token limit cut it).

``previous_response_id``: finished responses are kept in memory (``ResponseStore``, bounded
by count and size, oldest dropped first) as the conversation they end; a request naming one
continues that conversation. An id the server does not hold (never made, dropped, or made
before a restart) is a 400 that says so. ``store: false`` keeps a response out of it.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import uuid
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from localcascade.errors import UsageError
from localcascade.server.schema import ChatRequest, content_text, quoted

# The Responses API's text parts (its input and output items name them apart; chat says "text").
_TEXT_PARTS = ("input_text", "output_text", "text")

MAX_STORED = 256                       # responses kept for previous_response_id
MAX_STORED_CHARS = 32 * 1024 * 1024    # and their conversations' text, all together


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class ContentPart(_Model):
    type: str
    text: Optional[str] = None


class InputItem(_Model):
    """One ``input`` item: a message (``type`` "message" or absent), function_call,
    function_call_output or reasoning."""

    type: Optional[str] = None
    role: Optional[Literal["user", "system", "developer", "assistant"]] = None
    content: Union[str, list[ContentPart], None] = None
    call_id: Optional[str] = None
    name: Optional[str] = None
    arguments: Optional[str] = None
    output: Union[str, list[ContentPart], None] = None
    summary: Optional[list[ContentPart]] = None


class FunctionTool(_Model):
    type: str
    name: Optional[str] = None
    description: Optional[str] = None
    parameters: Optional[dict] = None
    strict: Optional[bool] = None


class TextFormat(_Model):
    type: Literal["text", "json_object", "json_schema"]
    name: Optional[str] = None
    schema_: Optional[dict] = Field(default=None, alias="schema")
    strict: Optional[bool] = None


class TextConfig(_Model):
    format: Optional[TextFormat] = None


class Reasoning(_Model):
    effort: Optional[str] = None
    summary: Optional[str] = None


class ResponsesRequest(_Model):
    model: Optional[str] = None
    input: Union[str, list[InputItem]]
    instructions: Optional[str] = None
    previous_response_id: Optional[str] = None
    store: bool = True
    stream: bool = False
    max_output_tokens: Optional[int] = None      # these limits are GenerationOptions' (engine/options.py)
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    tools: Optional[list[FunctionTool]] = None
    tool_choice: Union[str, dict, None] = None
    parallel_tool_calls: Optional[bool] = None
    text: Optional[TextConfig] = None
    reasoning: Optional[Reasoning] = None
    metadata: Optional[dict] = None
    # llama-server's extensions, as on chat completions
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    chat_template_kwargs: Optional[dict] = None
    thinking_budget_tokens: Optional[int] = Field(default=None, ge=-1)
    grammar: Optional[str] = None


class ResponseStore:
    """Finished responses' conversations, for ``previous_response_id`` (thread-safe, bounded)."""

    def __init__(self, max_items: int = MAX_STORED, max_chars: int = MAX_STORED_CHARS) -> None:
        self.max_items = max_items
        self.max_chars = max_chars
        self._items: collections.OrderedDict[str, tuple[list[dict], int]] = collections.OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def put(self, response_id: str, messages: list[dict]) -> None:
        size = len(json.dumps(messages))
        if size > self.max_chars:
            return
        with self._lock:
            self._items[response_id] = (messages, size)
            self._chars += size
            while len(self._items) > self.max_items or self._chars > self.max_chars:
                _, (_, dropped) = self._items.popitem(last=False)
                self._chars -= dropped

    def get(self, response_id: str) -> list[dict]:
        with self._lock:
            found = self._items.get(response_id)
            if found is not None:
                self._items.move_to_end(response_id)
        if found is None:
            raise UsageError(f"previous_response_id {quoted(response_id)} is not held by this server: it keeps "
                             f"the last {self.max_items} responses in memory (until it restarts); send the conversation "
                             "as input items instead")
        return [dict(m) for m in found[0]]


def conversation(req: ResponsesRequest, store: ResponseStore) -> list[dict]:
    """The chat messages ``req`` continues with: the previous response's conversation plus its input
    (without ``instructions``, which apply to this request only, as OpenAI's do)."""
    messages = store.get(req.previous_response_id) if req.previous_response_id else []
    if isinstance(req.input, str):
        return messages + [{"role": "user", "content": req.input}]
    names = {c["id"]: c["function"]["name"] for m in messages for c in m.get("tool_calls") or ()}
    reasoning = None
    for i, item in enumerate(req.input):
        where = f"input[{i}]"
        kind = item.type or "message"
        if kind == "message":
            if item.role is None:
                raise UsageError(f"{where}: a message needs a role")
            message = {"role": item.role, "content": content_text(item.content, where, _TEXT_PARTS)}
            if item.role == "assistant" and reasoning:
                message["reasoning_content"], reasoning = reasoning, None
            messages.append(message)
        elif kind == "function_call":
            if not item.call_id or not item.name:
                raise UsageError(f"{where}: a function_call needs its call_id and name")
            last = messages[-1] if messages else None
            if last is None or last["role"] != "assistant" or _followed_by_tool(messages):
                last = {"role": "assistant", "content": ""}
                messages.append(last)
            if reasoning:
                last["reasoning_content"], reasoning = reasoning, None
            last.setdefault("tool_calls", []).append(
                {"id": item.call_id, "type": "function",
                 "function": {"name": item.name, "arguments": item.arguments or "{}"}})
            names[item.call_id] = item.name
        elif kind == "function_call_output":
            if not item.call_id:
                raise UsageError(f"{where}: a function_call_output needs the call_id it answers")
            tool = {"role": "tool", "content": content_text(item.output, where, _TEXT_PARTS), "tool_call_id": item.call_id}
            if item.call_id in names:
                tool["name"] = names[item.call_id]
            messages.append(tool)
        elif kind == "reasoning":
            # Our own reasoning items carry the thought as content; OpenAI's as a summary.
            parts = item.content if isinstance(item.content, list) and item.content else item.summary or ()
            reasoning = "".join(part.text or "" for part in parts) or None
        else:
            raise UsageError(f"{where}: input items of type {quoted(kind)} are not served (messages, function_call, "
                             "function_call_output and reasoning are)")
    return messages


def _followed_by_tool(messages: list[dict]) -> bool:
    return bool(messages) and messages[-1]["role"] == "tool"


# The chat request's fields that this API calls otherwise: what a 400 about one names.
RESPONSES_FIELDS = {"max_completion_tokens": "max_output_tokens"}


def to_chat(req: ResponsesRequest, messages: list[dict]) -> ChatRequest:
    """The chat completion request ``req`` means, over ``messages`` (see ``conversation``)."""
    if req.instructions:
        messages = [{"role": "system", "content": req.instructions}] + messages
    if not messages:
        raise UsageError("input is empty: give a string or at least one item")
    tools = None
    if req.tools:
        tools = []
        for i, tool in enumerate(req.tools):
            if tool.type != "function" or not tool.name:
                raise UsageError(f"tools[{i}]: only function tools (with a name) are served, not {quoted(tool.type)}")
            tools.append({"type": "function", "function": tool.model_dump(
                include={"name", "description", "parameters"}, exclude_none=True)})
    body: dict = {
        "messages": messages,
        "max_completion_tokens": req.max_output_tokens,    # RESPONSES_FIELDS names it back in a 400
        "temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k, "min_p": req.min_p,
        "seed": req.seed, "stop": req.stop, "tools": tools, "tool_choice": req.tool_choice,
        "parallel_tool_calls": req.parallel_tool_calls, "chat_template_kwargs": req.chat_template_kwargs,
        "thinking_budget_tokens": req.thinking_budget_tokens, "grammar": req.grammar,
        "reasoning_effort": req.reasoning.effort if req.reasoning else None,
    }
    fmt = req.text.format if req.text else None
    if fmt is not None and fmt.type != "text":
        body["response_format"] = {"type": fmt.type}
        if fmt.type == "json_schema":
            body["response_format"]["json_schema"] = {"name": fmt.name, "schema": fmt.schema_, "strict": fmt.strict}
    return ChatRequest.model_validate({k: v for k, v in body.items() if v is not None}, strict=False)


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


class ResponseWriter:
    """Writes one reply (app.py's _Reply: reasoning, content, calls, usage) as a Responses ``response``
    object and, streaming, as its events; ``messages`` is the conversation it answers (stored)."""

    def __init__(self, req: ResponsesRequest, reply, messages: list[dict], store: ResponseStore) -> None:
        self.req = req
        self.reply = reply
        self.messages = messages
        self.store = store
        self.id = _id("resp")
        self.created_at = int(time.time())
        self._sequence = 0
        self._items: list[dict] = []          # output items, in order, as streamed so far
        self._open: dict | None = None        # the reasoning or message item receiving deltas

    # -- the response object ----------------------------------------------------------------------

    def response(self, status: str = "completed", output: list[dict] | None = None) -> dict:
        """The response object; ``output`` defaults to the finished reply's items."""
        req, reply = self.req, self.reply
        if output is None:
            output = self._output()
        incomplete = status == "completed" and reply.finish_reason == "length"
        body = {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": "incomplete" if incomplete else status,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "error": None, "model": reply.model_id, "output": output,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "previous_response_id": req.previous_response_id,
            "parallel_tool_calls": req.parallel_tool_calls is not False,
            "tool_choice": req.tool_choice or "auto",
            "tools": [t.model_dump(exclude_none=True) for t in req.tools or ()],
            "reasoning": {"effort": req.reasoning.effort if req.reasoning else None, "summary": None},
            "text": {"format": req.text.format.model_dump(by_alias=True, exclude_none=True)
                     if req.text and req.text.format else {"type": "text"}},
            "temperature": req.temperature, "top_p": req.top_p, "store": req.store, "truncation": "disabled",
            "metadata": req.metadata or {}, "usage": None,
        }
        if status != "in_progress" and reply.stats is not None:
            usage = reply.usage()
            body["usage"] = {
                "input_tokens": usage["prompt_tokens"],
                "input_tokens_details": {"cached_tokens": usage["prompt_tokens_details"]["cached_tokens"]},
                "output_tokens": usage["completion_tokens"],
                "output_tokens_details": {"reasoning_tokens": usage["completion_tokens_details"]["reasoning_tokens"]},
                "total_tokens": usage["total_tokens"],
                "evaluated_input_tokens": usage["evaluated_prompt_tokens"],
            }
        return body

    def _output(self) -> list[dict]:
        reply = self.reply
        output = []
        reasoning = "".join(reply.reasoning).strip()
        if reasoning:
            output.append(_reasoning_item(_id("rs"), reasoning, "completed"))
        content = reply.filter.content
        if content or not reply.calls:
            output.append(_message_item(_id("msg"), content, "completed"))
        output.extend(self._call_item(call) for call in reply.calls)
        return output

    @staticmethod
    def _call_item(call: dict) -> dict:
        return {"id": "fc_" + call["id"].split("_", 1)[-1], "type": "function_call", "status": "completed",
                "call_id": call["id"], "name": call["function"]["name"], "arguments": call["function"]["arguments"]}

    def finished(self, output: list[dict] | None = None) -> dict:
        """The final response object (and the conversation kept for previous_response_id)."""
        if self.req.store:
            reply = self.reply
            answer: dict = {"role": "assistant", "content": reply.filter.content}
            if reply.calls:
                answer["tool_calls"] = reply.calls
            self.store.put(self.id, self.messages + [answer])
        return self.response(output=output)

    # -- streaming: app.py's _sse calls start, delta..., end or failed, close -------------------------

    def _event(self, kind: str, **fields) -> str:
        data = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

    def start(self) -> list[str]:
        return [self._event("response.created", response=self.response("in_progress", [])),
                self._event("response.in_progress", response=self.response("in_progress", []))]

    def delta(self, delta: dict) -> list[str]:
        lines = []
        if "reasoning_content" in delta:
            lines += self._open_item("reasoning")
            lines.append(self._event("response.reasoning_text.delta", item_id=self._open["id"],
                                     output_index=len(self._items) - 1, content_index=0,
                                     delta=delta["reasoning_content"]))
            self._open["text"] += delta["reasoning_content"]
        if delta.get("content"):
            lines += self._open_item("message")
            lines.append(self._event("response.output_text.delta", item_id=self._open["id"],
                                     output_index=len(self._items) - 1, content_index=0,
                                     delta=delta["content"], logprobs=[]))
            self._open["text"] += delta["content"]
        return lines

    def end(self) -> list[str]:
        lines = self._close_item()
        reply = self.reply
        if not reply.calls and not any(item["type"] == "message" for item in self._items):
            lines += self._open_item("message") + self._close_item()     # an empty answer is still a message
        for call in reply.calls:
            item = self._call_item(call)
            index = len(self._items)
            self._items.append(item)
            lines.append(self._event("response.output_item.added", output_index=index,
                                     item=dict(item, arguments="", status="in_progress")))
            lines.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                     output_index=index, delta=item["arguments"]))
            lines.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                     output_index=index, arguments=item["arguments"], name=item["name"]))
            lines.append(self._event("response.output_item.done", output_index=index, item=item))
        response = self.finished(list(self._items))
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return lines + [self._event(kind, response=response)]

    def failed(self, message: str, kind: str, code: str | None) -> list[str]:
        failed = dict(self.response("in_progress", list(self._items)), status="failed",
                      error={"code": code or kind, "message": message})
        return [self._event("error", code=code or kind, message=message, param=None),
                self._event("response.failed", response=failed)]

    def close(self) -> list[str]:
        return []

    def _open_item(self, kind: str) -> list[str]:
        """Start a reasoning or message item unless it is the one open; the previous one is closed."""
        if self._open is not None and self._open["type"] == kind:
            return []
        lines = self._close_item()
        if kind == "reasoning":
            item = _reasoning_item(_id("rs"), None, "in_progress")
        else:
            item = _message_item(_id("msg"), None, "in_progress")
        index = len(self._items)
        self._items.append(item)
        self._open = {"type": kind, "text": "", "index": index, "id": item["id"]}
        part = {"type": "reasoning_text", "text": ""} if kind == "reasoning" else _output_text("")
        return lines + [self._event("response.output_item.added", output_index=index, item=item),
                        self._event("response.content_part.added", item_id=item["id"], output_index=index,
                                    content_index=0, part=part)]

    def _close_item(self) -> list[str]:
        if self._open is None:
            return []
        kind, index, item_id = self._open["type"], self._open["index"], self._open["id"]
        # The thinking and the answer are shown stripped, as in the non-streaming response.
        text = self._open["text"].strip()
        self._open = None
        if kind == "reasoning":
            item = _reasoning_item(item_id, text, "completed")
            done = self._event("response.reasoning_text.done", item_id=item["id"], output_index=index,
                               content_index=0, text=text)
            part = {"type": "reasoning_text", "text": text}
        else:
            item = _message_item(item_id, text, "completed")
            done = self._event("response.output_text.done", item_id=item["id"], output_index=index,
                               content_index=0, text=text, logprobs=[])
            part = _output_text(text)
        self._items[index] = item
        return [done,
                self._event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                            part=part),
                self._event("response.output_item.done", output_index=index, item=item)]


def _reasoning_item(item_id: str, text: str | None, status: str) -> dict:
    return {"id": item_id, "type": "reasoning", "summary": [], "status": status,
            "content": [] if text is None else [{"type": "reasoning_text", "text": text}]}


def _message_item(item_id: str, text: str | None, status: str) -> dict:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": [] if text is None else [_output_text(text)]}


def _output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
