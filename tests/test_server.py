"""`localcascade serve` end to end: the real openai client against a server on 127.0.0.1.

The tiny nemotron_h_moe model has random weights, so its text is noise: grammars (which here
constrain the answer, after </think>) and thinking budgets make what it says checkable.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from serverproc import ServerProcess

DATA = Path(__file__).parent / "data"
NANO_TEMPLATE = DATA / "nemotron3_nano_chat_template.jinja"
KEY = "sk-test-0123456789"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                       "required": ["city"]},
    },
}
TOOL_CALL_GRAMMAR = (
    r'root ::= <tool_call> "\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n'
    r'<parameter=days>\n3\n</parameter>\n</function>\n" </tool_call>'
)


def no_think():
    return {"chat_template_kwargs": {"enable_thinking": False}}


@pytest.fixture(scope="module")
def server(tiny_model):
    # Drafting on (on the CPU a MoE drafts only when asked): every reply of these tests is drafted.
    proc = ServerProcess(str(tiny_model), "--ctx", "2048", "--parallel", "2", "--draft", "ngram").start()
    yield proc
    assert proc.stop() is not None


@pytest.fixture(scope="module")
def guarded(tiny_model, tmp_path_factory):
    """One sequence, no queue, an API key from a file, a small body cap, the trained context."""
    key_file = tmp_path_factory.mktemp("key") / "key"
    key_file.write_text(KEY + "\n")
    proc = ServerProcess(str(tiny_model), "--ctx", "4096", "--parallel", "1", "--queue", "0",
                         "--api-key-file", str(key_file), "--max-body", "64KiB").start()
    yield proc
    proc.stop()


# --- chat, streaming, reasoning -------------------------------------------------------------------


def test_reply_splits_reasoning_from_content(client):
    r = client.chat.completions.create(
        model="whatever-the-client-says", messages=[{"role": "user", "content": "hello"}], seed=1,
        extra_body={"thinking_budget_tokens": 6, "grammar": 'root ::= "hello world"'},
    )
    message = r.choices[0].message
    assert message.content == "hello world"
    reasoning = message.model_extra["reasoning_content"]
    assert reasoning and "<think>" not in reasoning and "</think>" not in reasoning
    assert "think>" not in message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens_details.reasoning_tokens == 6
    assert r.usage.prompt_tokens > 0 and r.usage.model_extra["evaluated_prompt_tokens"] > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_sends_reasoning_and_content_deltas_and_usage(client):
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hello"}], seed=2, stream=True,
        stream_options={"include_usage": True},
        extra_body={"thinking_budget_tokens": 5, "grammar": 'root ::= "yes and no"'},
    )
    reasoning, content, finish, usage = [], [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            if (delta.model_extra or {}).get("reasoning_content"):
                assert not content, "reasoning after the answer started"
                reasoning.append(delta.model_extra["reasoning_content"])
            if delta.content:
                content.append(delta.content)
            finish = choice.finish_reason or finish
    assert "".join(content) == "yes and no"
    assert reasoning and "</think>" not in "".join(reasoning)
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens_details.reasoning_tokens == 5


def test_thinking_off_per_request(client):
    for extra in (no_think(), {"reasoning_effort": "none"}):
        r = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hello"}], seed=3,
            extra_body={**extra, "grammar": 'root ::= "no thought"'},
        )
        assert r.choices[0].message.content == "no thought"
        assert not (r.choices[0].message.model_extra or {}).get("reasoning_content")
        assert r.usage.completion_tokens_details.reasoning_tokens == 0


def test_response_format_json_schema_gives_json(client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    r = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hello"}], seed=4, max_tokens=200,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        extra_body=no_think(),
    )
    assert isinstance(json.loads(r.choices[0].message.content)["ok"], bool)


def test_max_tokens_ends_with_length(client):
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}], max_tokens=7,
                                       seed=5)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 7


def test_stop_string_cuts_the_content(client):
    r = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hello"}], seed=6, stop=["STOP"],
        extra_body={**no_think(), "grammar": 'root ::= "keep this STOP not this"'},
    )
    assert r.choices[0].message.content == "keep this"
    assert r.choices[0].finish_reason == "stop"


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [Path(server.args[1]).stem]
    status = server.health()
    assert status["status"] == "ok" and status["slots"] == 2


# --- tools ----------------------------------------------------------------------------------------


def test_tool_call_round_trip_reuses_the_conversation(client):
    messages = [{"role": "system", "content": "You answer with tools."},
                {"role": "user", "content": "weather in Paris?"}]
    r = client.chat.completions.create(
        model="m", messages=messages, tools=[WEATHER_TOOL], seed=7,
        extra_body={"thinking_budget_tokens": 4, "grammar": TOOL_CALL_GRAMMAR},
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert not choice.message.content                   # no XML left in the content
    assert choice.message.model_extra.get("reasoning_content")   # reasoning kept with tools
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 3}

    # The client sends the call back (without reasoning_content) with the tool's result.
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear"}'},
    ]
    r2 = client.chat.completions.create(
        model="m", messages=messages, tools=[WEATHER_TOOL], seed=8,
        extra_body={**no_think(), "grammar": 'root ::= "clear skies"'},
    )
    assert r2.choices[0].message.content == "clear skies"
    usage = r2.usage
    evaluated = usage.model_extra["evaluated_prompt_tokens"]
    assert evaluated < usage.prompt_tokens / 2, usage       # only the tool result and the new turn
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - evaluated


def test_tool_call_streams_as_tool_call_deltas(client):
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER_TOOL], seed=9, stream=True,
        extra_body={**no_think(), "grammar": 'root ::= "Let me check. " ' + TOOL_CALL_GRAMMAR[len("root ::= "):]},
    )
    content, calls, finish = [], [], None
    for chunk in stream:
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            calls += choice.delta.tool_calls or []
            finish = choice.finish_reason or finish
    assert "".join(content).strip() == "Let me check."
    assert "<tool_call>" not in "".join(content)
    assert [c.function.name for c in calls] == ["get_weather"]
    assert json.loads(calls[0].function.arguments)["city"] == "Paris"
    assert finish == "tool_calls"


# --- several conversations -----------------------------------------------------------------------


def test_follow_up_turns_evaluate_only_the_new_messages(client):
    messages = [{"role": "user", "content": "hello"}]
    ratios = []
    for turn in range(4):
        r = client.chat.completions.create(
            model="m", messages=messages, seed=10 + turn,
            extra_body={"thinking_budget_tokens": 3, "grammar": f'root ::= "answer {turn}"'},
        )
        assert r.choices[0].message.content == f"answer {turn}"
        if turn:
            new = r.usage.prompt_tokens - previous_total
            ratios.append(r.usage.model_extra["evaluated_prompt_tokens"] / new)
        previous_total = r.usage.prompt_tokens + r.usage.completion_tokens
        # History goes back as clients send it: no reasoning_content.
        messages += [{"role": "assistant", "content": r.choices[0].message.content},
                     {"role": "user", "content": f"and then {turn}?"}]
    assert all(ratio <= 1.1 for ratio in ratios), ratios


def test_eight_clients_on_two_sequences_each_get_their_own_reply(server, client):
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def ask(i: int) -> None:
        try:
            r = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"client {i}"}], seed=i,
                extra_body={**no_think(), "grammar": f'root ::= "id-{i} " [a-z ]{{0,20}}'},
                max_tokens=24,
            )
            results[i] = r.choices[0].message.content
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sorted(results) == list(range(8))
    for i, text in results.items():
        assert text.startswith(f"id-{i}"), (i, text)
    assert server.wait_idle()["busy"] == 0


@pytest.mark.gemma
def test_drafted_replies_are_the_plain_greedy_ones_and_slots_draft_together(gemma_model):
    # One request at a time, the drafting server answers as the one decoding token by token, and
    # usage says what the drafts kept. Requests at once draft in one batch; what a row computes then
    # depends on its batch-mates' rows (llama.cpp's batched Q4_K kernels: this base model's greedy
    # first word is a near-tie such a difference tips, drafts or not), so token-for-token equality
    # of slots drafting together is held on the tiny hybrid (tests/test_speculative.py) and here
    # only that they all draft and finish (docs/performance.md, "Drafts").
    template = str(Path(__file__).parent / "data" / "gemma_chat_template.jinja")
    drafting = ServerProcess(str(gemma_model), "--chat-template", template, "--ctx", "2048", "--parallel", "2",
                             "--draft", "ngram").start()
    plain = ServerProcess(str(gemma_model), "--chat-template", template, "--ctx", "2048", "--draft", "none").start()
    try:
        sentences = ["The keeper climbed one hundred and twelve steps to light the lamp every evening.",
                     "A fox in the forest learned to play the violin from an old owl.",
                     "The train left the station at noon and reached the sea before dark.",
                     "She wrote the weather, the ships and the birds in a small blue logbook."]
        prompts = [f"Repeat this sentence exactly, three times: {s}" for s in sentences]

        def ask(server, text):
            api = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)
            r = api.chat.completions.create(model="m", messages=[{"role": "user", "content": text}], temperature=0,
                                            max_tokens=24)   # the copied text; past it, babble and near-ties
            return r.choices[0].message.content, r.usage.completion_tokens_details

        kept = 0
        for sentence, text in zip(sentences, prompts):
            (content, details), (expected, plain_details) = ask(drafting, text), ask(plain, text)
            # The same through the copied sentence; past it this base model babbles through near-ties,
            # where the draft lengths (chosen by timing) change the batch a row is computed in.
            at = expected.find(sentence)
            upto = at + len(sentence) if at >= 0 else len(expected)
            assert content[:upto] == expected[:upto]
            assert plain_details.accepted_prediction_tokens == plain_details.rejected_prediction_tokens == 0
            kept += details.accepted_prediction_tokens
        # How many depends on the draft lengths, which follow measured step times: how much drafting
        # gains is benchmarks/drafts.py's to say; here, that the slots draft and say what they kept.
        assert kept > 0
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda text: ask(drafting, text), prompts))
        assert all(content for content, _ in together)
        assert sum(details.accepted_prediction_tokens for _, details in together) > 0
    finally:
        drafting.stop()
        plain.stop()


def answer_turn(api, history, answer, *, seed=None, **extra_body):
    """One turn whose answer a grammar fixes; appended to ``history``, as a chat client does. Its usage."""
    r = api.chat.completions.create(model="m", messages=history, seed=len(history) if seed is None else seed,
                                    extra_body={**extra_body, "grammar": f'root ::= "{answer}"'})
    history.append({"role": "assistant", "content": r.choices[0].message.content})
    return r.usage


def test_more_conversations_than_sequences_evict_the_least_recently_used(client):
    def turn(history, tag):
        return answer_turn(client, history, tag, **no_think())

    a, b, c = ([{"role": "user", "content": f"conversation {name}"}] for name in "abc")
    for history, tag in ((a, "a one"), (b, "b one"), (c, "c one")):   # c takes a's sequence (2 of them)
        turn(history, tag)
    for history in (a, b):
        history.append({"role": "user", "content": "and more?"})
    kept = turn(b, "b two")
    assert kept.model_extra["evaluated_prompt_tokens"] < kept.prompt_tokens / 2
    evicted = turn(a, "a two")
    assert evicted.model_extra["evaluated_prompt_tokens"] == evicted.prompt_tokens


def test_an_evicted_long_conversation_is_kept_and_not_read_again_when_it_comes_back(client):
    def turn(history, tag):
        return answer_turn(client, history, tag, **no_think())

    long = " ".join(["the river runs past the mountain"] * 60)   # a prompt worth keeping (>= 256 tokens)
    a, b, c = ([{"role": "user", "content": f"{long} conversation {name}"}] for name in "xyz")
    for history, tag in ((a, "a one"), (b, "b one"), (c, "c one")):   # c takes a's sequence (2 of them)
        turn(history, tag)
    a.append({"role": "user", "content": "and more?"})
    back = turn(a, "a two")
    assert back.prompt_tokens > 300
    assert back.model_extra["evaluated_prompt_tokens"] < 40
    assert back.prompt_tokens_details.cached_tokens == back.prompt_tokens - back.model_extra["evaluated_prompt_tokens"]


# --- errors, limits, disconnects ------------------------------------------------------------------


def post(server, body, *, key=KEY, raw=None, headers=None):
    h = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", **(headers or {})}
    data = raw if raw is not None else json.dumps(body)
    return httpx.post(server.base_url + "/chat/completions", content=data, headers=h, timeout=300)


def assert_openai_error(response, status):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    return error


def test_malformed_json_and_wrong_types_are_400(guarded):
    error = assert_openai_error(post(guarded, None, raw=b'{"messages": [}'), 400)
    assert "malformed JSON" in error["message"]
    error = assert_openai_error(post(guarded, {"messages": [{"role": "user", "content": "hi"}],
                                               "max_tokens": "ten"}), 400)
    assert error["param"] == "max_tokens"
    assert_openai_error(post(guarded, {"messages": []}), 400)
    assert_openai_error(post(guarded, {"messages": [{"role": "user", "content": "hi"}], "n": 2}), 400)
    # Unknown fields are ignored.
    ok = post(guarded, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "logit_bias": {},
                        "frobnicate": True})
    assert ok.status_code == 200, ok.text
    assert_openai_error(httpx.get(guarded.base_url + "/no/such/route", headers={"Authorization": f"Bearer {KEY}"}), 404)
    assert_openai_error(httpx.get(guarded.base_url + "/chat/completions", headers={"Authorization": f"Bearer {KEY}"}),
                        405)
    assert "Traceback" not in "".join(guarded.stderr_lines)


@pytest.mark.parametrize("field, value, accepted", [
    ("temperature", 2.5, "a number from 0 to 2"), ("top_p", 0.0, "a number above 0, at most 1"),
    ("min_p", -0.1, "a number from 0 to 1"), ("top_k", -1, "a whole number from 0 (no top-k) to 2147483647"),
    ("max_tokens", 0, "a whole number from 1 to 2147483647"),
    ("max_completion_tokens", 10**12, "a whole number from 1 to 2147483647"),
    ("thinking_budget_tokens", 2**31, "a whole number from 0 to 2147483647")])
def test_a_generation_option_outside_its_limits_is_a_400_naming_the_field(guarded, field, value, accepted):
    # The limits `ask` and the chat meet (engine/options.py), named as the request names the field.
    error = assert_openai_error(post(guarded, {"messages": [{"role": "user", "content": "hi"}], field: value}), 400)
    assert error["param"] == field and error["message"] == f"{field} takes {accepted}, not {value!r}"


def test_the_responses_api_names_its_own_field(guarded):
    error = assert_openai_error(httpx.post(guarded.base_url + "/responses", json={"input": "hi", "max_output_tokens": 0},
                                           headers={"Authorization": f"Bearer {KEY}"}, timeout=60), 400)
    assert error["param"] == "max_output_tokens"
    assert error["message"] == "max_output_tokens takes a whole number from 1 to 2147483647, not 0"


def test_prompt_longer_than_the_context_is_400_with_the_numbers(tiny_model):
    proc = ServerProcess(str(tiny_model), "--ctx", "256").start()
    try:
        c = openai.OpenAI(base_url=proc.base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as caught:
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello world " * 200}])
        message = caught.value.body["message"]
        assert "256" in message and "tokens" in message
        # The server has no --ctx for a client to give: the remedy is in the request's terms.
        assert message.endswith(": shorten the messages") and "--" not in message
        assert caught.value.body["code"] == "context_length_exceeded"
    finally:
        proc.stop()


def test_wrong_or_missing_api_key_is_401(guarded):
    for key in ("wrong", ""):
        c = openai.OpenAI(base_url=guarded.base_url, api_key=key or "-", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            c.models.list()
    assert httpx.get(guarded.root + "/health").status_code == 200     # health needs no key
    good = openai.OpenAI(base_url=guarded.base_url, api_key=KEY, max_retries=0)
    assert good.models.list().data


def test_body_over_the_cap_is_413(guarded):
    big = {"messages": [{"role": "user", "content": "x" * 70_000}]}
    assert_openai_error(post(guarded, big), 413)

    def chunks():   # no Content-Length: the cap holds while the body is read
        data = json.dumps(big).encode()
        for i in range(0, len(data), 8192):
            yield data[i:i + 8192]

    response = httpx.post(guarded.base_url + "/chat/completions", content=chunks(), timeout=60,
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert_openai_error(response, 413)


def test_disconnect_mid_stream_frees_the_sequence_and_a_full_queue_is_503(guarded):
    # No thinking (which no grammar bounds) and a grammar that never lets the reply end: it runs
    # until the client goes away.
    body = {"messages": [{"role": "user", "content": "hello"}], "stream": True, "max_tokens": 4000,
            "grammar": 'root ::= "a" root', "chat_template_kwargs": {"enable_thinking": False}}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", guarded.base_url + "/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {KEY}"}) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            for _ in range(6):
                next(lines)
            assert guarded.health()["busy"] == 1
            # The only sequence is busy and the queue holds nothing: the next request is refused.
            busy = post(guarded, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            error = assert_openai_error(busy, 503)
            assert busy.headers["Retry-After"].isdigit()
            assert error["code"] == "queue_full"
            stopped_at = time.monotonic()
    status = guarded.wait_idle(timeout=5)
    assert status["busy"] == 0, status
    assert time.monotonic() - stopped_at < 2.0
    after = post(guarded, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert after.status_code == 200, after.text


# --- NVIDIA's own template ------------------------------------------------------------------------


def test_nano_template_reasoning_split_and_tool_call(tiny_model):
    proc = ServerProcess(str(tiny_model), "--ctx", "4096", "--chat-template", str(NANO_TEMPLATE)).start()
    try:
        c = openai.OpenAI(base_url=proc.base_url, api_key="x", max_retries=0)
        r = c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hello"}], seed=11,
            extra_body={"thinking_budget_tokens": 5, "grammar": 'root ::= "hello"'},
        )
        assert r.choices[0].message.content == "hello"
        assert r.choices[0].message.model_extra["reasoning_content"]
        r = c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER_TOOL], seed=12,
            extra_body={"thinking_budget_tokens": 3, "grammar": TOOL_CALL_GRAMMAR},
        )
        (call,) = r.choices[0].message.tool_calls
        assert json.loads(call.function.arguments) == {"city": "Paris", "days": 3}
        follow = c.chat.completions.create(
            model="m", seed=13, tools=[WEATHER_TOOL],
            messages=[{"role": "user", "content": "weather?"},
                      {"role": "assistant", "content": "", "tool_calls": [call.model_dump(exclude_none=True)]},
                      {"role": "tool", "tool_call_id": call.id, "content": "sunny"}],
            extra_body={**no_think(), "grammar": 'root ::= "sunny"'},
        )
        assert follow.choices[0].message.content == "sunny"
        assert follow.usage.model_extra["evaluated_prompt_tokens"] < follow.usage.prompt_tokens / 2
    finally:
        proc.stop()


# --- the command line ------------------------------------------------------------------------------


def test_busy_port_and_bad_options_are_one_line(tiny_model, server):
    import subprocess
    import sys

    port = server.base_url.rsplit(":", 1)[1].split("/")[0]
    for args, code in ((["--port", port], 2), (["--parallel", "0"], 2), (["--queue", "-1"], 2)):
        out = subprocess.run([sys.executable, "-m", "localcascade", "serve", str(tiny_model), *args],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == code, (args, out.stderr)
        assert out.stderr.startswith("localcascade: ") and out.stderr.count("\n") == 1, out.stderr


def test_empty_api_key_environment_is_refused(tiny_model, monkeypatch):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "localcascade", "serve", str(tiny_model), "--port", "0"],
                         capture_output=True, text=True, timeout=60, env={**__import__("os").environ,
                                                                          "LOCALCASCADE_API_KEY": " "})
    assert out.returncode == 2 and "LOCALCASCADE_API_KEY" in out.stderr


def test_listening_beyond_this_machine_without_a_key_warns(tiny_model):
    proc = ServerProcess(str(tiny_model), "--ctx", "256", "--host", "0.0.0.0").start()
    try:
        warning = [line for line in proc.stderr_lines if "warning" in line]
        assert warning and "without an API key" in warning[0] and "LOCALCASCADE_API_KEY" in warning[0]
    finally:
        proc.stop()
    quiet = ServerProcess(str(tiny_model), "--ctx", "256", "--host", "0.0.0.0",
                          env={"LOCALCASCADE_API_KEY": KEY}).start()
    try:
        assert not any("warning" in line for line in quiet.stderr_lines)
    finally:
        quiet.stop()


def test_a_restarted_server_continues_evicted_and_held_conversations_without_reading_them(tiny_model, tmp_path):
    # One sequence: y evicts x (x parked, its state on disk); the server stops holding y. The next
    # server, on the same cache, reads only the new messages of both, though the history the client
    # sends back lacks the reasoning the model's state holds (so its rendering is not that state's
    # prefix: the kept record of conversations, not the prompt's own checkpoint, finds it).
    env = {"LOCALCASCADE_STATE_CACHE": str(tmp_path / "states")}
    long = " ".join(["the river runs past the mountain"] * 15)
    x, y = ([{"role": "user", "content": f"{long} conversation {name}"}] for name in "xy")

    def turn(server, history, tag):
        api = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)
        answer = f"{tag} " + " ".join(["and the sea"] * 20)   # a long answer: reading it again would show
        return answer_turn(api, history, answer, seed=1, thinking_budget_tokens=6)

    first = ServerProcess(str(tiny_model), "--ctx", "2048", "--parallel", "1", env=env).start()
    try:
        for history, tag in ((x, "x one"), (y, "y one")):
            assert turn(first, history, tag).model_extra["evaluated_prompt_tokens"] > 300
    finally:
        assert first.stop() == 0
    second = ServerProcess(str(tiny_model), "--ctx", "2048", "--parallel", "1", env=env).start()
    try:
        for history, tag in ((x, "x two"), (y, "y two")):
            history.append({"role": "user", "content": "and more?"})
            usage = turn(second, history, tag)
            assert usage.prompt_tokens > 300 and usage.model_extra["evaluated_prompt_tokens"] < 40, usage
            assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - usage.model_extra["evaluated_prompt_tokens"]
    finally:
        second.stop()
