"""`POST /v1/responses` end to end: the real openai client's ``client.responses``, a real server
process on the tiny model.

The tiny model's weights are random, so a GBNF ``grammar`` (llama-server's extension, passed in
``extra_body``) fixes the answer where a test needs to know it; on the server a grammar shapes
the answer only, after the thinking.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from test_server import no_think

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]},
                                                           "days": {"type": "integer"}},
                          "required": ["city", "days"]}}


def answer(text: str, **extra) -> dict:
    return {"grammar": f"root ::= {json.dumps(text)}", **extra}


def test_a_string_input_gets_a_message_and_usage(client):
    r = client.responses.create(model="m", input="Say hello.", instructions="Be brief.",
                                extra_body=answer("Hello there.", **no_think(), seed=1))
    assert r.object == "response" and r.status == "completed" and r.id.startswith("resp_")
    assert r.output_text == "Hello there."
    [message] = r.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert message.content[0].type == "output_text"
    assert r.instructions == "Be brief."
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.output_tokens_details.reasoning_tokens == 0


def test_the_thinking_is_a_reasoning_item_before_the_message(client):
    r = client.responses.create(model="m", input="Think, then answer.", reasoning={"effort": "low"},
                                extra_body=answer("Done.", thinking_budget_tokens=6, seed=2))
    reasoning, message = r.output
    assert reasoning.type == "reasoning" and reasoning.content[0].type == "reasoning_text"
    assert reasoning.content[0].text.strip()
    assert "<think>" not in r.output_text and r.output_text == "Done."
    assert 0 < r.usage.output_tokens_details.reasoning_tokens <= 6 + 4   # the budget, plus the forced close
    # A client keeping the conversation itself sends the output items back as input.
    again = client.responses.create(
        model="m", extra_body=answer("Again.", **no_think(), seed=2),
        input=[{"role": "user", "content": "Think, then answer."}] + [item.model_dump() for item in r.output]
        + [{"role": "user", "content": "And again?"}])
    assert again.output_text == "Again." and again.usage.input_tokens > r.usage.input_tokens


def test_streaming_follows_the_documented_event_sequence(client):
    events = list(client.responses.create(model="m", input="Think, then answer.", stream=True,
                                          extra_body=answer("Streamed answer.", thinking_budget_tokens=6, seed=3)))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "response.reasoning_text.delta" in kinds
    # The reasoning item opens, streams and closes before the message item opens.
    first_text = kinds.index("response.output_text.delta")
    assert kinds.index("response.reasoning_text.delta") < kinds.index("response.output_item.done") < first_text
    assert kinds.count("response.output_item.added") == kinds.count("response.output_item.done") == 2
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Streamed answer."
    [done] = [e for e in events if e.type == "response.output_text.done"]
    assert done.text == text
    final = events[-1].response
    assert final.status == "completed" and final.output_text == text
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.usage.output_tokens > 0


def test_max_output_tokens_makes_it_incomplete(client):
    r = client.responses.create(model="m", input="Go on.", max_output_tokens=5, extra_body={"seed": 4})
    assert r.status == "incomplete"
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 5


def test_previous_response_id_continues_the_conversation(server, client):
    first = client.responses.create(model="m", input="My name is Ada.",
                                    extra_body=answer("Hello Ada.", **no_think(), seed=5))
    second = client.responses.create(model="m", input="What is my name?", previous_response_id=first.id,
                                     extra_body=answer("Ada.", **no_think(), seed=6))
    assert second.previous_response_id == first.id and second.output_text == "Ada."
    # The first exchange is part of the prompt, and the sequence still held it: only the new turn
    # was evaluated.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="m", input="Hi", previous_response_id="resp_unknown")
    assert "resp_unknown" in str(err.value) and "not held" in str(err.value)
    # store=False: nothing to continue from.
    unstored = client.responses.create(model="m", input="Hi", store=False, extra_body=answer("Hi.", **no_think()))
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="m", input="Again", previous_response_id=unstored.id)


def test_function_call_and_its_output_round_trip(client):
    r = client.responses.create(model="m", input="Weather in Paris?", tools=[WEATHER], tool_choice="required",
                                parallel_tool_calls=False, extra_body={**no_think(), "seed": 7})
    [call] = r.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id
    arguments = json.loads(call.arguments)
    assert arguments["city"] in ("Paris", "Rome") and isinstance(arguments["days"], int)
    assert r.tool_choice == "required" and r.parallel_tool_calls is False

    output = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}
    follow = client.responses.create(model="m", previous_response_id=r.id, input=[output], tools=[WEATHER],
                                     extra_body=answer("It is sunny.", **no_think(), seed=8))
    assert follow.output_text == "It is sunny."
    assert follow.usage.input_tokens_details.cached_tokens > 0      # the call was still held

    # The same conversation sent whole, as a client without server-side state does.
    whole = client.responses.create(
        model="m", tools=[WEATHER], extra_body=answer("It is sunny.", **no_think(), seed=9),
        input=[{"role": "user", "content": "Weather in Paris?"},
               {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
               output])
    assert whole.output_text == "It is sunny."
    # Its prompt holds the call and its output (the template's rendering of the call, where the
    # continued one held the model's own tokens for it).
    assert whole.usage.input_tokens > r.usage.input_tokens + 10


def test_streamed_function_call_events(client):
    events = list(client.responses.create(model="m", input="Weather?", tools=[WEATHER], stream=True,
                                          tool_choice={"type": "function", "name": "get_weather"},
                                          extra_body={**no_think(), "seed": 10}))
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert json.loads(done.arguments)["city"] in ("Paris", "Rome")
    final = events[-1].response
    assert kinds[-1] == "response.completed" and [item.type for item in final.output] == ["function_call"]
    assert final.output[0].arguments == done.arguments


def test_text_format_json_schema_gives_json(client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    r = client.responses.create(model="m", input="Is it ok?", max_output_tokens=200,
                                extra_body={**no_think(), "seed": 11},
                                text={"format": {"type": "json_schema", "name": "verdict", "schema": schema}})
    assert isinstance(json.loads(r.output_text)["ok"], bool)
    assert r.text.format.type == "json_schema"


def test_what_cannot_be_served_is_a_400_in_openais_shape(server):
    url = server.base_url + "/responses"
    cases = [
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "only text"),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "only function tools"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "item_reference"),
        ({"input": []}, "input is empty"),
        ({"input": 5}, "input"),
        ({"input": "hi", "reasoning": {"effort": "extreme"}}, "reasoning_effort 'extreme'"),
        ({"input": "hi", "tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER]}, "'nope'"),
    ]
    for body, words in cases:
        r = httpx.post(url, json=body, timeout=30)
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert words in error["message"] and error["type"] == "invalid_request_error", (body, error)


def test_the_async_client_streams_a_response(server):
    import asyncio

    async def run() -> tuple[list[str], str]:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)
        try:
            stream = await client.responses.create(model="m", input="Hi", stream=True,
                                                   extra_body=answer("Async hello.", **no_think(), seed=12))
            events = [event async for event in stream]
            again = await client.responses.create(model="m", input="Again", previous_response_id=events[-1].response.id,
                                                  extra_body=answer("Async again.", **no_think(), seed=13))
            return [e.type for e in events], again.output_text
        finally:
            await client.close()

    kinds, text = asyncio.run(run())
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert text == "Async again."
