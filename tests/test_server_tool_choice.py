"""`serve` for today's clients: tool_choice forced by a grammar, parallel_tool_calls, stop strings over
tool calls, reasoning_effort budgets, the 404 and model routes, a template that cannot show tools.
Through the real openai client and raw HTTP against a real server on the tiny model.

The tiny model's weights are random: it never calls a tool on its own, so a call that comes back
under ``tool_choice`` "required" was forced; its arguments still follow the tool's schema.
"""

from __future__ import annotations

import json
import typing

import httpx
import openai
import pytest

from serverproc import ServerProcess
from test_server import TOOL_CALL_GRAMMAR, WEATHER_TOOL, no_think

# Values the random model must end: an enum and an integer (a free string could run to the token limit).
CITY_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]},
                                                    "days": {"type": "integer"}},
                   "required": ["city", "days"]}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
                   "required": ["zone"]}}}
TOOLS = [CITY_TOOL, TIME_TOOL]
HELLO = [{"role": "user", "content": "What is the weather in Paris?"}]


def chat(client, **kw):
    kw.setdefault("messages", HELLO)
    return client.chat.completions.create(model="m", **kw)


# --- tool_choice -------------------------------------------------------------------------------------


def test_required_forces_a_call_that_auto_does_not_get(client):
    auto = chat(client, tools=TOOLS, seed=1, max_tokens=40, extra_body={"thinking_budget_tokens": 4})
    assert not auto.choices[0].message.tool_calls and auto.choices[0].finish_reason != "tool_calls"
    # Thinking first (the grammar starts after </think>), then the call.
    r = chat(client, tools=TOOLS, tool_choice="required", seed=1, max_tokens=400,
             extra_body={"thinking_budget_tokens": 4})
    message = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert message.model_extra.get("reasoning_content")
    assert message.tool_calls and not message.content
    for call in message.tool_calls:
        arguments = json.loads(call.function.arguments)
        if call.function.name == "get_time":
            assert arguments["zone"] in ("UTC", "CET")
        else:
            assert call.function.name == "get_weather" and arguments["city"] in ("Paris", "Rome")
            assert isinstance(arguments["days"], int)


def test_a_forced_call_comes_even_where_the_model_would_end_inside_its_thought(client):
    # With this seed the model ends its reply during its thought (no answer at all) ...
    auto = chat(client, tools=TOOLS, seed=31, max_tokens=1500)
    assert auto.choices[0].finish_reason == "stop" and not auto.choices[0].message.content
    thought = auto.usage.completion_tokens_details.reasoning_tokens
    assert thought == auto.usage.completion_tokens < 1500
    # ... forced, the thought is closed where it would have ended and the call follows.
    r = chat(client, tools=TOOLS, seed=31, max_tokens=1500, tool_choice="required", parallel_tool_calls=False)
    assert r.choices[0].finish_reason == "tool_calls" and len(r.choices[0].message.tool_calls) == 1
    assert thought <= r.usage.completion_tokens_details.reasoning_tokens <= thought + 4


def test_a_named_function_is_the_one_called_once(client):
    for seed in (2, 3):
        r = chat(client, tools=TOOLS, seed=seed, tool_choice={"type": "function", "function": {"name": "get_time"}},
                 extra_body=no_think())
        [call] = r.choices[0].message.tool_calls
        assert call.function.name == "get_time" and json.loads(call.function.arguments)["zone"] in ("UTC", "CET")


def test_parallel_tool_calls_false_gives_at_most_one_call(client):
    r = chat(client, tools=[TIME_TOOL], tool_choice="required", parallel_tool_calls=False, seed=4,
             extra_body=no_think())
    assert len(r.choices[0].message.tool_calls) == 1
    # A model that writes two calls on its own (here a grammar makes it): only the first is returned,
    # and the reply ends at the second one's start.
    body = TOOL_CALL_GRAMMAR[len("root ::= "):]
    two = f"root ::= {body} {body}"
    for parallel, expected in ((True, 2), (False, 1)):
        r = chat(client, tools=[WEATHER_TOOL], parallel_tool_calls=parallel, seed=5,
                 extra_body={**no_think(), "grammar": two})
        calls = r.choices[0].message.tool_calls
        assert len(calls) == expected and r.choices[0].finish_reason == "tool_calls"
        assert all(json.loads(c.function.arguments) == {"city": "Paris", "days": 3} for c in calls)
        assert not r.choices[0].message.content


def test_streamed_forced_call_arrives_as_tool_call_deltas(client):
    chunks = list(chat(client, tools=[CITY_TOOL], tool_choice="required", stream=True, seed=6,
                       parallel_tool_calls=False, extra_body=no_think()))
    calls = [c for chunk in chunks for c in chunk.choices[0].delta.tool_calls or ()] if chunks else []
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert isinstance(json.loads(calls[0].function.arguments)["days"], int)
    assert not any("<tool_call>" in (chunk.choices[0].delta.content or "") for chunk in chunks if chunk.choices)
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "tool_calls"


def test_tool_choice_that_cannot_be_honoured_is_a_400(server):
    url = server.base_url + "/chat/completions"
    cases = [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_stock"}}},
         "'get_stock', which is not among the request's tools ('get_weather', 'get_time')"),
        ({"tool_choice": "required"}, "no tools to call"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, 'tool_choice must be "none", "auto", "required"'),
        ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
         "cannot be combined with grammar or response_format"),
        ({"tools": [{"type": "function", "function": {"name": "odd", "parameters": {
            "type": "object", "properties": {"a": {"type": "array", "items": {"type": "string", "pattern": "[a-"}}}}}}],
          "tool_choice": "required"}, "the parameters of 'odd' cannot be turned into a grammar"),
    ]
    for extra, words in cases:
        r = httpx.post(url, json={"messages": HELLO, **extra}, timeout=30)
        assert r.status_code == 400, (extra, r.text)
        assert words in r.json()["error"]["message"], (extra, r.json())


# --- stop strings and tool-call blocks ---------------------------------------------------------------


def test_a_stop_string_inside_a_tool_call_ends_the_reply_without_a_raw_block(client):
    grammar = 'root ::= "Checking. " ' + TOOL_CALL_GRAMMAR[len("root ::= "):]
    r = chat(client, tools=[WEATHER_TOOL], stop=["Paris"], seed=7, extra_body={**no_think(), "grammar": grammar})
    message = r.choices[0].message
    assert not message.tool_calls and r.choices[0].finish_reason == "stop"
    assert message.content == "Checking."
    chunks = list(chat(client, tools=[WEATHER_TOOL], stop=["Paris"], seed=7, stream=True,
                       extra_body={**no_think(), "grammar": grammar}))
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed.strip() == "Checking." and not any(chunk.choices[0].delta.tool_calls for chunk in chunks
                                                         if chunk.choices)


def test_an_unparsable_or_unfinished_block_never_reaches_content(client):
    garbage = 'root ::= "Before. " <tool_call> "\\nnot a call at all\\n" </tool_call> " After."'
    r = chat(client, tools=[WEATHER_TOOL], seed=8, extra_body={**no_think(), "grammar": garbage})
    message = r.choices[0].message
    assert not message.tool_calls
    assert "tool_call" not in message.content and "not a call" not in message.content
    assert message.content.startswith("Before.") and message.content.endswith("After.")
    cut = chat(client, tools=[WEATHER_TOOL], seed=9, max_tokens=5,
               extra_body={**no_think(), "grammar": TOOL_CALL_GRAMMAR})
    assert cut.choices[0].finish_reason == "length"
    assert not cut.choices[0].message.tool_calls and "<" not in (cut.choices[0].message.content or "")


# --- reasoning_effort --------------------------------------------------------------------------------


def test_every_reasoning_effort_the_sdk_sends_is_accepted(client):
    from openai.types.shared import ReasoningEffort

    efforts = [e for e in typing.get_args(typing.get_args(ReasoningEffort)[0])]
    assert {"none", "minimal", "low", "medium", "high", "xhigh", "max"} <= set(efforts)
    for effort in efforts:
        r = chat(client, reasoning_effort=effort, seed=10, max_tokens=30, extra_body={"grammar": 'root ::= "ok"'})
        reasoning = r.usage.completion_tokens_details.reasoning_tokens
        if effort in ("none", "minimal"):
            assert reasoning == 0 and r.choices[0].message.content == "ok", effort
        else:
            assert reasoning == 30 and r.choices[0].finish_reason == "length", effort   # thinking until the cap


def test_reasoning_effort_sets_the_thinking_budget(client):
    from localcascade.server.schema import reasoning_efforts

    budgets = reasoning_efforts()
    assert budgets["low"] < budgets["medium"] < budgets["high"] < budgets["xhigh"] and budgets["max"] is None
    # With this seed the random model thinks for 904 tokens, then closes its thought itself: low's
    # budget cuts it (the close it forces counts as thinking too), medium's and above leave it whole.
    thought = {}
    for effort in ("low", "medium", "high", "max"):
        r = chat(client, reasoning_effort=effort, seed=23, max_tokens=1200, extra_body={"grammar": 'root ::= "ok"'})
        assert r.choices[0].message.content == "ok", effort
        thought[effort] = r.usage.completion_tokens_details.reasoning_tokens
    assert budgets["low"] <= thought["low"] <= budgets["low"] + 4
    assert budgets["low"] + 4 < thought["medium"] == thought["high"] == thought["max"] < budgets["medium"]
    # An explicit budget wins over the effort.
    r = chat(client, reasoning_effort="medium", seed=12, max_tokens=100,
             extra_body={"grammar": 'root ::= "ok"', "thinking_budget_tokens": 8})
    assert r.choices[0].message.content == "ok" and r.usage.completion_tokens_details.reasoning_tokens <= 12


# --- routes ------------------------------------------------------------------------------------------


def test_an_unknown_route_is_named_with_the_served_ones(server):
    r = httpx.post(server.base_url + "/completions", json={"prompt": "hi"}, timeout=30)
    assert r.status_code == 404
    message = r.json()["error"]["message"]
    assert "POST /v1/completions" in message
    for route in ("POST /v1/chat/completions", "POST /v1/responses", "GET /v1/models", "GET /v1/models/{model_id}"):
        assert route in message
    r = httpx.get(server.base_url + "/chat/completions", timeout=30)
    assert r.status_code == 405 and "GET /v1/chat/completions" in r.json()["error"]["message"]


def test_the_raw_cases_through_curl(server):
    import shutil
    import subprocess

    if shutil.which("curl") is None:
        pytest.skip("no curl on this machine")

    def curl(*args: str) -> tuple[int, dict]:
        out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", *args], capture_output=True, text=True,
                             timeout=60, check=True).stdout
        body, status = out.rsplit("\n", 1)
        return int(status), json.loads(body)

    status, body = curl("-X", "POST", server.base_url + "/completions", "-H", "Content-Type: application/json",
                        "-d", "{}")
    assert status == 404 and "POST /v1/responses" in body["error"]["message"]
    status, body = curl(server.base_url + "/models/nope")
    assert status == 404 and body["error"]["code"] == "model_not_found"
    status, body = curl(server.base_url + "/chat/completions", "-H", "Content-Type: application/json", "-d",
                        json.dumps({"messages": HELLO, "tools": TOOLS, "tool_choice": {
                            "type": "function", "function": {"name": "get_stock"}}}))
    assert status == 400 and "'get_stock'" in body["error"]["message"]


def test_one_model_by_id(server, client):
    [model] = client.models.list().data
    assert client.models.retrieve(model.id).id == model.id
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    error = httpx.get(server.base_url + "/models/gpt-4o", timeout=30).json()["error"]
    assert error["code"] == "model_not_found" and "'gpt-4o' does not exist" in error["message"]


# --- a template that cannot show tools ---------------------------------------------------------------

NO_TOOLS_TEMPLATE = """{%- for m in messages %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant
<think></think>{% endif %}"""


def test_a_template_without_tools_is_said_at_start_and_refuses_a_forced_call(tiny_model, tmp_path):
    template = tmp_path / "no-tools.jinja"
    template.write_text(NO_TOOLS_TEMPLATE)
    proc = ServerProcess(str(tiny_model), "--ctx", "1024", "--chat-template", str(template)).start()
    try:
        warning = [line for line in proc.stderr_lines if "does not show tools" in line]
        assert warning and warning[0].startswith("localcascade: warning:")
        c = openai.OpenAI(base_url=proc.base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as err:
            c.chat.completions.create(model="m", messages=HELLO, tools=TOOLS, tool_choice="required")
        assert "chat template does not show tools" in str(err.value)
        ok = c.chat.completions.create(model="m", messages=HELLO, tools=TOOLS, max_tokens=3)
        assert ok.choices[0].finish_reason == "length"
    finally:
        proc.stop()
    # The model's own template shows them: no warning.
    plain = ServerProcess(str(tiny_model), "--ctx", "1024").start()
    try:
        assert not any("does not show tools" in line for line in plain.stderr_lines)
    finally:
        plain.stop()
