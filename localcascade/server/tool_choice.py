"""``tool_choice`` "required" or a named function: a grammar that lets the answer be only tool calls.

The grammar is written over the model's own tool-call form (Qwen3-Coder XML, as the chat
template renders calls and engine/tool_calls.py reads them), as llama.cpp's server and vLLM
force calls, so what the model is made to write is what it was trained to write:

    <tool_call>
    <function=NAME>
    <parameter=P>
    VALUE
    </parameter>
    </function>
    </tool_call>

On the server a grammar constrains the answer only (it starts after ``</think>``, see
engine/batch.py), so the model still thinks freely first, within its thinking budget.
Parameters follow the tool's JSON schema: the required ones in the schema's order, then each
optional one or not. A string value is raw text (the template writes strings unquoted), any
text without ``</``; an enum of strings is one of its values; every other type is JSON in that
type's shape (llama.cpp's JSON-schema converter), as the parser reads it back.
"""

from __future__ import annotations

import json

from localcascade.errors import UsageError

# Before and between calls: a little whitespace (a model writes a newline or two; unbounded, a
# model could pad forever without ever writing the call it is made to write).
_SPACE = 'ws ::= [ \\t\\n]{0,6}'
# Raw text that cannot close the parameter early: any character, but "<" never followed by "/".
_STRING = 'raw-string ::= ([^<] | "<" [^/])*'
_ANY_PARAMETER = 'any-parameter ::= "<parameter=" [a-zA-Z0-9_.-]+ ">\\n" raw-string "\\n</parameter>\\n"'


def call_grammar(tools: list[dict] | None, forced: str, *, max_calls: int | None = None,
                 call_tokens: bool = True) -> str:
    """GBNF for an answer of tool calls: ``forced`` is "*" (any of ``tools``) or one tool's name.

    One call when a tool is named or ``max_calls`` is 1 (``parallel_tool_calls: false``), else one
    or more. ``call_tokens``: ``<tool_call>`` and ``</tool_call>`` are special tokens in the model's
    vocabulary (matched as tokens, as the model writes them), else plain text.
    """
    from llama_cpp.llama_grammar import SchemaConverter

    chosen = [t["function"] for t in tools or () if forced == "*" or t["function"]["name"] == forced]
    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    rules = [_SPACE, _STRING, _ANY_PARAMETER]
    names = []
    for i, function in enumerate(chosen):
        name = f"function-{i}"
        names.append(name)
        try:
            parameters = _parameters(function.get("parameters"), f"{name}-p", converter, rules)
        except Exception as err:  # noqa: BLE001 - the converter asserts and raises bare Exceptions
            raise UsageError(f"tool_choice: the parameters of {function['name'][:80]!r} cannot be turned into a "
                             f"grammar: {str(err)[:200]}") from None
        rules.append(f'{name} ::= {_literal("<function=" + function["name"] + ">" + chr(10))} {parameters}')
    open_, close = ("<tool_call>", "</tool_call>") if call_tokens else ('"<tool_call>"', '"</tool_call>"')
    rules.append(f'call ::= {open_} "\\n" ({" | ".join(names)}) "</function>\\n" {close}')
    one = forced != "*" or max_calls == 1
    rules.insert(0, "root ::= ws call" + ("" if one else " (ws call)*"))
    return "\n".join(rules) + "\n" + converter.format_grammar() + "\n"


def _parameters(schema, prefix: str, converter, rules: list[str]) -> str:
    """The rule text for a function's parameters, in the order the model should write them."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return "any-parameter*"      # no schema for the parameters: any named raw values
    if not properties:
        return ""                    # a function without parameters
    required = [p for p in (schema.get("required") or ()) if p in properties]
    optional = [p for p in properties if p not in required]
    parts = []
    for i, name in enumerate(required + optional):
        rule = f"{prefix}-{i}"
        value = _value(properties[name], f"{rule}-value", converter)
        rules.append(f'{rule} ::= {_literal(f"<parameter={name}>{chr(10)}")} {value} "\\n</parameter>\\n"')
        parts.append(rule if name in required else f"{rule}?")
    return " ".join(parts)


def _value(schema, rule: str, converter) -> str:
    if not isinstance(schema, dict):
        return "raw-string"
    enum = schema.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(v, str) for v in enum):
        return "(" + " | ".join(_literal(v) for v in enum) + ")"
    kind = schema.get("type")
    if kind == "string" or kind is None or isinstance(kind, list):
        return "raw-string"      # unquoted, as the template renders strings; the parser keeps text
    schema = converter.resolve_refs(schema, "request")
    return converter.visit(schema, rule)


def _literal(text: str) -> str:
    return json.dumps(text)     # GBNF literals take JSON's escapes (\n, \", \uXXXX)


_PROBE_TOOL = {"type": "function", "function": {
    "name": "localcascade_probe", "description": "probe",
    "parameters": {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}}}


def template_shows_tools(template) -> bool:
    """Whether the chat template shows tools to the model: a conversation rendered with a tool and
    without one must differ (a template that ignores ``tools`` drops them silently)."""
    messages = [{"role": "user", "content": "hello"}]
    try:
        with_tool = template.render(messages, add_generation_prompt=True, enable_thinking=True, tools=[_PROBE_TOOL])
        without = template.render(messages, add_generation_prompt=True, enable_thinking=True, tools=None)
    except Exception:  # noqa: BLE001 - a template that fails on tools does not show them either
        return False
    return with_tool != without
