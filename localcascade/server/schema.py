"""The request the server accepts (OpenAI's chat completions, with llama-server's extensions).

Unknown fields are ignored, as OpenAI-compatible clients send many; a known field
of the wrong type is refused (strict types: "0.5" is not a number). ``to_work``
turns a request into what the scheduler runs: the messages as the chat template
wants them, the key a conversation is matched by, the generation options.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from localcascade.engine.session import GenerationOptions
from localcascade.errors import UsageError
from localcascade.safe_io import load_json

# Stop strings are matched against the answer at every token, on the server's event loop: their
# number and length bound that work (OpenAI accepts 4; llama-server and vLLM set no limit, and
# 700,000 of them once held /health for 14.5 s). 16 of 256 characters cost well under 1 ms a token.
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256


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
    # The generation options' limits are GenerationOptions' own (engine/options.py): one check for
    # every front end, a 400 naming the field (``option_field``).
    max_tokens: Optional[int] = None
    max_completion_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    n: Optional[int] = None
    response_format: Optional[ResponseFormat] = None
    grammar: Optional[str] = None                      # llama-server's GBNF extension
    tools: Optional[list[ToolSpec]] = None
    tool_choice: Union[str, dict, None] = None
    parallel_tool_calls: Optional[bool] = None
    chat_template_kwargs: Optional[dict] = None
    reasoning_effort: Optional[str] = None             # a name in profiles/reasoning_effort.json
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
    forced_call: Optional[str] = None    # tool_choice: "*" (any of the tools) or the tool's name
    max_calls: Optional[int] = None      # parallel_tool_calls false: 1


def to_work(req: ChatRequest, *, call_tokens: bool = True) -> Work:
    """The request's meaning; UsageError (a 400) for what cannot be served.

    ``call_tokens``: the model's vocabulary has ``<tool_call>`` / ``</tool_call>`` as tokens
    (a forced call's grammar names them as tokens, else as text).
    """
    if req.n is not None and req.n != 1:
        raise UsageError(f"n={req.n}: only one choice per request is generated (n must be 1)")
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if any(not s for s in stop):
        raise UsageError("stop: empty stop strings would end every reply at once")
    if len(stop) > MAX_STOP_STRINGS:
        raise UsageError(f"stop: {len(stop)} stop strings; at most {MAX_STOP_STRINGS} are accepted")
    if any(len(s) > MAX_STOP_CHARS for s in stop):
        raise UsageError(f"stop: a stop string of {max(map(len, stop))} characters; "
                         f"at most {MAX_STOP_CHARS} are accepted")
    messages = [_template_message(m, i) for i, m in enumerate(req.messages)]
    forced = forced_tool(req.tool_choice, req.tools)
    use_tools = bool(req.tools) and req.tool_choice != "none"
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if use_tools else None
    max_calls = 1 if req.parallel_tool_calls is False else None
    grammar = _grammar(req)
    if forced is not None:
        if grammar is not None:
            raise UsageError(f"tool_choice {_choice_name(forced)} forces a tool call: it cannot be combined "
                             "with grammar or response_format")
        from localcascade.server.tool_choice import call_grammar

        grammar = call_grammar(tools, forced, max_calls=max_calls, call_tokens=call_tokens)
    think, think_budget = _thinking(req)
    options = GenerationOptions(
        think=think,
        think_budget=think_budget,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        max_tokens=req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens,
        seed=req.seed,
        grammar=grammar,
    )
    tools_key = json.dumps(tools, sort_keys=True) if tools else ""
    return Work(messages=messages, key=(tools_key,) + tuple(message_key(m) for m in messages), tools=tools,
                think=options.think, options=options, stop=stop, parse_tools=use_tools, forced_call=forced,
                max_calls=max_calls)


# GenerationOptions' fields by the name a chat completions request gives them.
_REQUEST_FIELDS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                   "seed": "seed", "max_tokens": "max_tokens", "think_budget": "thinking_budget_tokens"}


def option_field(field: str, req: ChatRequest) -> str:
    """The request's name for GenerationOptions' ``field`` (of the two names a value may come by,
    the one this request used): what a 400 about it names."""
    if field == "max_tokens" and req.max_completion_tokens is not None:
        return "max_completion_tokens"
    if field == "think_budget" and req.thinking_budget_tokens is None and req.reasoning_budget_tokens is not None:
        return "reasoning_budget_tokens"
    return _REQUEST_FIELDS.get(field, field)


def quoted(text: str, limit: int = 80) -> str:
    """``text`` as an error message quotes it: repr'd, and cut (a client's string can be megabytes)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def forced_tool(choice, tools: Optional[list[ToolSpec]]) -> Optional[str]:
    """What ``tool_choice`` forces: None (auto, none), "*" (required: any tool) or a tool's name.

    Accepts OpenAI's forms: "none" / "auto" / "required", ``{"type": "function", "function":
    {"name": N}}``, and the Responses API's ``{"type": "function", "name": N}``.
    """
    if choice is None or choice in ("none", "auto"):
        return None
    names = [t.function.name for t in tools or ()]
    if choice == "required":
        if not names:
            raise UsageError('tool_choice "required": the request has no tools to call')
        return "*"
    if isinstance(choice, dict) and choice.get("type") == "function":
        inner = choice.get("function")
        name = inner.get("name") if isinstance(inner, dict) else choice.get("name")
        if not isinstance(name, str):
            raise UsageError("tool_choice: a function choice needs the function's name")
        if name not in names:
            served = ", ".join(quoted(n) for n in names[:20]) or "none"
            raise UsageError(f"tool_choice names the function {quoted(name)}, which is not among the request's "
                             f"tools ({served}{', ...' if len(names) > 20 else ''})")
        return name
    raise UsageError('tool_choice must be "none", "auto", "required" or {"type": "function", '
                     '"function": {"name": ...}}')


def _choice_name(forced: str) -> str:
    return '"required"' if forced == "*" else f"naming {quoted(forced)}"


@lru_cache(maxsize=1)
def reasoning_efforts() -> dict:
    """profiles/reasoning_effort.json: each effort's thinking budget ("off", null for none, or tokens)."""
    text = resources.files("localcascade.profiles").joinpath("reasoning_effort.json").read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def _thinking(req: ChatRequest) -> tuple[bool, Optional[int]]:
    """(think, thinking budget): enable_thinking, then an explicit budget, then reasoning_effort."""
    think, budget = True, None
    effort = req.reasoning_effort
    if effort is not None:
        efforts = reasoning_efforts()
        if effort not in efforts:
            raise UsageError(f"reasoning_effort {quoted(effort)}: use one of {', '.join(efforts)}")
        think = efforts[effort] != "off"
        budget = efforts[effort] if think else None
    kwargs = req.chat_template_kwargs or {}
    if "enable_thinking" in kwargs:
        value = kwargs["enable_thinking"]
        if not isinstance(value, bool):
            raise UsageError("chat_template_kwargs.enable_thinking must be true or false")
        think = value
    given = req.thinking_budget_tokens if req.thinking_budget_tokens is not None else req.reasoning_budget_tokens
    if given is not None:
        budget = None if given < 0 else given
    return think, budget


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


def content_text(content, where: str, text_types: tuple[str, ...] = ("text",)) -> str:
    """A message's content as one string: a string as it is, text parts joined; any other part
    (an image, a file) is refused naming ``where``."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.type not in text_types or part.text is None:
            raise UsageError(f"{where}: only text content is served, not {quoted(part.type)}")
        parts.append(part.text)
    return "".join(parts)


def _template_message(message: Message, index: int) -> dict:
    role = "system" if message.role == "developer" else message.role
    out: dict = {"role": role, "content": content_text(message.content, f"messages[{index}]")}
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
            arguments = load_json(arguments) if arguments.strip() else {}
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
