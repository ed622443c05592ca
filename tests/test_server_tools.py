"""`localcascade serve --tools python` end to end: the real openai client, a real server process,
the real sandbox.

No model here writes code on its own, so a GBNF grammar forces the call. On the server a
grammar constrains the answer (after </think>) and spans the whole reply, across its rounds:
``CALL "The answer is 42."`` is one python call, then, after its result, the answer.
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import psutil
import pytest

from processes import children_matching, running
from serverproc import ServerProcess
from test_server import TOOL_CALL_GRAMMAR, WEATHER_TOOL, no_think

CALL = ('<tool_call> "\\n<function=python>\\n<parameter=code>\\n" CODE "\\n</parameter>\\n</function>\\n" '
        '</tool_call>')
ANSWER = "The answer is 42."
SANDBOX_MARKER = "What runs inside the sandbox"   # the worker's text, on its command line


def grammar(code: str = "print(6 * 7)", answer: str = ANSWER) -> str:
    return f'root ::= {CALL} "{answer}"\nCODE ::= {json.dumps(code)}\n'


@pytest.fixture(scope="module")
def server(tiny_model):
    from localcascade.errors import SandboxUnavailableError
    from localcascade.tools.python_tool import find_sandbox

    try:
        find_sandbox()
    except SandboxUnavailableError as err:
        pytest.skip(f"no sandbox on this machine: {err}")
    proc = ServerProcess(str(tiny_model), "--ctx", "4096", "--parallel", "2", "--tools", "python",
                         "--max-tool-calls", "2").start()
    yield proc
    assert proc.stop() is not None


def ask(client, grammar_text: str, **extra):
    return client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "What is 6 times 7?"}], seed=1,
        extra_body={**no_think(), "grammar": grammar_text, **extra.pop("extra_body", {})}, **extra)


def test_a_python_call_runs_on_the_server_and_the_answer_follows(server, client):
    r = ask(client, grammar())
    message = r.choices[0].message
    assert message.content == ANSWER
    assert r.choices[0].finish_reason == "stop"
    assert not message.tool_calls                       # the server's own call is not the client's
    [result] = message.model_extra["tool_results"]
    assert result["code"] == "print(6 * 7)"
    assert result["stdout"].strip() == "42" and result["exit"] == 0 and result["error"] is None
    assert set(result) >= {"code", "stdout", "stderr", "exit", "seconds"}
    # Usage covers both rounds: more than the answer alone, and the second round evaluated only
    # the call's result and the new turn (the sequence still held the conversation).
    alone = ask(client, f'root ::= "{ANSWER}"', tool_choice="none")
    assert r.usage.completion_tokens > alone.usage.completion_tokens + 5
    extra = r.usage.model_extra["evaluated_prompt_tokens"] - r.usage.prompt_tokens
    assert 0 < extra < r.usage.prompt_tokens / 2, r.usage
    assert server.wait_idle()["busy"] == 0


def test_streaming_shows_the_call_and_its_result_before_the_answer(client):
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "What is 6 times 7?"}], seed=2, stream=True,
        stream_options={"include_usage": True},
        extra_body={"thinking_budget_tokens": 4, "grammar": grammar()},
    )
    order, content, reasoning, results, finish, usage = [], [], [], [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            extra = delta.model_extra or {}
            if extra.get("reasoning_content"):
                reasoning.append(extra["reasoning_content"])
            if extra.get("tool_results"):
                results += extra["tool_results"]
                order.append("tool_results")
            if delta.content:
                content.append(delta.content)
                order.append("content")
            finish = choice.finish_reason or finish
    assert "".join(content) == ANSWER
    assert [r["stdout"].strip() for r in results] == ["42"] and results[0]["index"] == 0
    assert order.index("tool_results") < order.index("content")
    assert reasoning and finish == "stop"
    assert usage is not None and usage.completion_tokens_details.reasoning_tokens >= 4


def test_a_client_defined_tool_still_comes_back_as_tool_calls(client):
    r = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER_TOOL], seed=7,
        extra_body={**no_think(), "grammar": TOOL_CALL_GRAMMAR},
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 3}
    assert "tool_results" not in choice.message.model_extra


def test_the_call_cap_is_answered_then_the_reply_ends(client):
    looping = f'root ::= ({CALL}){{4}} "never"\nCODE ::= "1"\n'
    r = ask(client, looping)
    results = r.choices[0].message.model_extra["tool_results"]
    assert [x["error"] for x in results] == [None, None, "no more tool calls in this reply (the limit is 2): "
                                                         "answer with what you have"]
    assert r.choices[0].finish_reason == "stop" and "never" not in (r.choices[0].message.content or "")


def test_a_disconnect_while_code_runs_kills_it(server, client):
    body = {"model": "m", "messages": [{"role": "user", "content": "sleep"}], "stream": True, "seed": 3,
            **no_think(), "grammar": grammar(code="import time\ntime.sleep(60)")}
    server_proc = psutil.Process(server.proc.pid)

    def sandboxed() -> list:
        found = []
        for child in server_proc.children(recursive=True):
            try:
                if SANDBOX_MARKER in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.Error:
                pass
        return found

    with httpx.stream("POST", server.base_url + "/chat/completions", json=body, timeout=60) as response:
        deadline = time.monotonic() + 60
        while not sandboxed() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sandboxed(), "the call never started"
    started = time.monotonic()
    while sandboxed() and time.monotonic() - started < 10:
        time.sleep(0.1)
    assert not sandboxed()
    assert server.wait_idle()["busy"] == 0
    # The server goes on serving.
    assert ask(client, grammar()).choices[0].message.content == ANSWER


def test_serve_refuses_unknown_tools_and_stray_flags(tiny_model):
    import subprocess
    import sys

    for args, expected in ((("--tools", "bash"), "--tools takes python, not 'bash'"),
                           (("--max-tool-calls", "3"), "--max-tool-calls goes with --tools python"),
                           (("--tools", "python", "--max-tool-calls", "0"), "--max-tool-calls must be at least 1")):
        result = subprocess.run([sys.executable, "-m", "localcascade", "serve", str(tiny_model), "--port", "0", *args],
                                capture_output=True, timeout=60, text=True)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0]


def test_serve_without_bubblewrap_refuses_in_one_line_before_loading(tiny_model, tmp_path):
    import os
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("the Linux refusal")
    bin_dir = tmp_path / "bin"     # a PATH without bwrap
    bin_dir.mkdir()
    result = subprocess.run([sys.executable, "-m", "localcascade", "serve", str(tiny_model), "--port", "0",
                             "--tools", "python"], capture_output=True, timeout=60, text=True,
                            env={**os.environ, "PATH": str(bin_dir)})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "install bubblewrap" in lines[0]


def test_sigterm_while_the_models_code_runs_kills_it_and_ends_the_stream(tiny_model):
    from localcascade.errors import SandboxUnavailableError
    from localcascade.tools.python_tool import find_sandbox

    try:
        find_sandbox()
    except SandboxUnavailableError as err:
        pytest.skip(f"no sandbox on this machine: {err}")
    import signal

    proc = ServerProcess(str(tiny_model), "--ctx", "4096", "--tools", "python").start()
    body = {"messages": [{"role": "user", "content": "wait"}], "stream": True, "seed": 1,
            "grammar": grammar("import time\ntime.sleep(120)"), **no_think()}
    lines = []
    started = None
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", proc.base_url + "/chat/completions", json=body) as response:
            for line in response.iter_lines():
                lines.append(line)
                if started is None and line.startswith("data: "):
                    deadline = time.monotonic() + 30     # until the sandbox runs the code
                    workers = []
                    while time.monotonic() < deadline and not workers:
                        # This server's sandbox workers (other tests may run theirs at the same time).
                        workers = children_matching(proc.proc.pid, SANDBOX_MARKER)
                        time.sleep(0.1)
                    started = time.monotonic()
                    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=30) == 0
    assert time.monotonic() - started < 10        # the sleeping code was killed, not waited for
    data = [line for line in lines if line]
    assert data[-1] == "data: [DONE]" and '"finish_reason": "stop"' in data[-2], data[-3:]
    assert workers and not any(running(p) for p in workers)
    assert "Traceback" not in "".join(proc.stderr_lines)
    proc.stop()
