"""The request the server accepts (OpenAI's chat completions, with llama-server's extensions).

Unknown fields are ignored, as OpenAI-compatible clients send many; a known field
of the wrong type is refused (strict types: "0.5" is not a number). ``to_work``
turns a request into what the scheduler runs: the messages as the chat template
wants them, the key a conversation is matched by, the generation options.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from localcascade.engine.session import GenerationOptions
from localcascade.errors import UsageError


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class FunctionCall(_Model):
    name: str
    arguments: Union[str, dict] = "{}"


class ToolCallIn(_Model):
    id: Optional[str] = None
    type: str = "function"
    function: FunctionCall


class ContentPart(_Model):
    type: str
    text: Optional[str] = None


class Message(_Model):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart], None] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCallIn]] = None
    tool_call_id: Optional[str] = None
    reasoning_content: Optional[str] = None


class FunctionSpec(_Model):
    name: str
    description: Optional[str] = None
    parameters: Optional[dict] = None


class ToolSpec(_Model):
    type: Literal["function"] = "function"
    function: FunctionSpec


class JsonSchemaFormat(_Model):
    name: Optional[str] = None
    schema_: Optional[dict] = Field(default=None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(_Model):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None


class StreamOptions(_Model):
    include_usage: bool = False


class ChatRequest(_Model):
    model: Optional[str] = None
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    top_k: Optional[int] = Field(default=None, ge=0)
    min_p: Optional[float] = Field(default=None, ge=0, le=1)
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    n: Optional[int] = None
    response_format: Optional[ResponseFormat] = None
    grammar: Optional[str] = None                      # llama-server's GBNF extension
    tools: Optional[list[ToolSpec]] = None
    tool_choice: Union[str, dict, None] = None
    chat_template_kwargs: Optional[dict] = None
    reasoning_effort: Optional[Literal["none", "minimal", "low", "medium", "high"]] = None
    thinking_budget_tokens: Optional[int] = Field(default=None, ge=-1)    # llama-server's names
    reasoning_budget_tokens: Optional[int] = Field(default=None, ge=-1)


@dataclass(frozen=True)
class Work:
    """What one request asks the engine to do."""

    messages: list[dict]         # for the chat template
    key: tuple                   # the conversation, as compared with the ones sequences hold
    tools: list[dict] | None
    think: bool
    options: GenerationOptions
    stop: tuple[str, ...]
    parse_tools: bool


def to_work(req: ChatRequest) -> Work:
    """The request's meaning; UsageError (a 400) for what cannot be served."""
    if req.n is not None and req.n != 1:
        raise UsageError(f"n={req.n}: only one choice per request is generated (n must be 1)")
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if any(not s for s in stop):
        raise UsageError("stop: empty stop strings would end every reply at once")
    messages = [_template_message(m, i) for i, m in enumerate(req.messages)]
    use_tools = bool(req.tools) and req.tool_choice != "none"
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if use_tools else None
    budget = req.thinking_budget_tokens if req.thinking_budget_tokens is not None else req.reasoning_budget_tokens
    options = GenerationOptions(
        think=_thinking(req),
        think_budget=None if budget is None or budget < 0 else budget,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        max_tokens=req.max_completion_tokens or req.max_tokens,
        seed=req.seed,
        grammar=_grammar(req),
    )
    tools_key = json.dumps(tools, sort_keys=True) if tools else ""
    return Work(messages=messages, key=(tools_key,) + tuple(message_key(m) for m in messages), tools=tools,
                think=options.think, options=options, stop=stop, parse_tools=use_tools)


def _thinking(req: ChatRequest) -> bool:
    kwargs = req.chat_template_kwargs or {}
    if "enable_thinking" in kwargs:
        value = kwargs["enable_thinking"]
        if not isinstance(value, bool):
            raise UsageError("chat_template_kwargs.enable_thinking must be true or false")
        return value
    if req.reasoning_effort is not None:
        return req.reasoning_effort not in ("none", "minimal")
    return True


def _grammar(req: ChatRequest) -> str | None:
    if req.grammar is not None:
        if req.response_format is not None and req.response_format.type != "text":
            raise UsageError("give either grammar or response_format, not both")
        return req.grammar
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    from localcascade.engine import grammar

    if fmt.type == "json_object" or fmt.json_schema is None or fmt.json_schema.schema_ is None:
        return grammar.json_object_grammar()
    return grammar.from_json_schema(fmt.json_schema.schema_)


def _text(message: Message, index: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise UsageError(f"messages[{index}]: only text content is supported, not {part.type!r}")
        parts.append(part.text)
    return "".join(parts)


def _template_message(message: Message, index: int) -> dict:
    role = "system" if message.role == "developer" else message.role
    out: dict = {"role": role, "content": _text(message, index)}
    if message.role == "tool":
        if message.tool_call_id is not None:
            out["tool_call_id"] = message.tool_call_id
        if message.name is not None:
            out["name"] = message.name
    if message.role == "assistant":
        if message.tool_calls:
            out["tool_calls"] = [_tool_call(call, index) for call in message.tool_calls]
        if message.reasoning_content:
            out["reasoning_content"] = message.reasoning_content
    return out


def _tool_call(call: ToolCallIn, index: int) -> dict:
    arguments = call.function.arguments
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise UsageError(f"messages[{index}].tool_calls: arguments of {call.function.name!r} are not JSON") from None
    if not isinstance(arguments, dict):
        raise UsageError(f"messages[{index}].tool_calls: arguments of {call.function.name!r} must be a JSON object")
    # Templates iterate the arguments as a mapping (the Nemotron Nano template does).
    return {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": arguments}}


def message_key(message: dict) -> tuple:
    """What identifies a message when a client resends the history: no ids, no reasoning."""
    calls = tuple(
        (c["function"]["name"], json.dumps(c["function"]["arguments"], sort_keys=True))
        for c in message.get("tool_calls") or ()
    )
    return message["role"], (message.get("content") or "").strip(), calls


def reply_key(content: str, calls: list) -> tuple:
    """The key of the assistant message a client will send back for a reply we gave."""
    return ("assistant", content.strip(),
            tuple((c.name, json.dumps(c.arguments, sort_keys=True)) for c in calls))
