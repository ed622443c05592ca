"""Hostile requests against a real `serve` process: no request kills, freezes or floods the server.

The decoder thread (a model-written tool call nested past Python's recursion limit), the browser
surface (Origin, Host, Content-Type, CORS preflight), slow and idle sockets, the connection cap at
a small file-descriptor limit, stop-string floods, the API key file (FIFO, device, huge, non-ASCII),
the context per conversation, and a graceful stop by SIGTERM/SIGINT in the middle of a stream.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from serverproc import ServerProcess  # noqa: E402

NO_THINK = {"chat_template_kwargs": {"enable_thinking": False}}
HELLO = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **NO_THINK}


@pytest.fixture(scope="module")
def server(tiny_model):
    proc = ServerProcess(str(tiny_model), "--ctx", "4096", "--parallel", "2", "--max-body", "16MiB",
                         "--cors-origin", "http://app.example", "--allowed-host", "llm.lan").start()
    yield proc
    proc.stop()


def chat(server, body, headers=None, **kw):
    return httpx.post(server.base_url + "/chat/completions", content=json.dumps(body),
                      headers={"Content-Type": "application/json", **(headers or {})}, timeout=120, **kw)


def log_of(server) -> str:
    return "".join(server.stderr_lines)


# --- class 2: the decoder thread -------------------------------------------------------------------


def test_tool_call_nested_past_the_recursion_limit_keeps_the_decoder_alive(server):
    deep = "[" * 1100 + "]" * 1100
    grammar = ('root ::= "<tool_call>\\n<function=f>\\n<parameter=a>\\n' + deep +
               '\\n</parameter>\\n</function>\\n</tool_call>"')
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    r = chat(server, {"messages": [{"role": "user", "content": "x"}], "tools": tools, "grammar": grammar,
                      "max_tokens": 3500, **NO_THINK})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    (call,) = choice["message"]["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"a": deep}     # too deep to parse: kept as text
    health = httpx.get(server.root + "/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert chat(server, HELLO).status_code == 200
    # The same nesting sent by a client in a tool call's arguments is a 400, not a 500.
    history = [{"role": "user", "content": "x"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": ' + deep + "}"}}]},
               {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
    r = chat(server, {"messages": history, "tools": tools, "max_tokens": 2})
    assert r.status_code == 400, r.text
    assert "Traceback" not in log_of(server)


# --- class 6: stop strings --------------------------------------------------------------------------


def test_stop_strings_are_capped_and_health_stays_quick(server):
    ok = chat(server, {**HELLO, "stop": [f"s{i}" for i in range(16)]})
    assert ok.status_code == 200, ok.text
    for stop in ([f"s{i}" for i in range(17)], ["x" * 257], ["ab"] * 700_000):
        r = chat(server, {**HELLO, "stop": stop})
        assert r.status_code == 400, r.text[:300]
        assert "stop" in r.json()["error"]["message"]
    assert httpx.get(server.root + "/health", timeout=10).json()["status"] == "ok"


# --- class 7: requests from browsers ----------------------------------------------------------------


def test_a_web_page_cannot_make_the_server_work(server):
    body = json.dumps(HELLO)
    url = server.base_url + "/chat/completions"
    # The example of the issue: text/plain (no preflight in a browser) from another origin.
    r = httpx.post(url, content=body, headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}, {}):
        r = httpx.post(url, content=body, headers=headers)
        assert r.status_code == 415, (headers, r.text)
    # DNS rebinding: a page at a name re-resolved to 127.0.0.1 sends its own name as Host.
    for host in ("evil.example", "evil.example:8080", "localhost.evil.example", "bad host"):
        r = httpx.post(url, content=body, headers={"Content-Type": "application/json", "Host": host})
        assert r.status_code == 403, (host, r.text)
        assert httpx.get(server.root + "/health", headers={"Host": host}).status_code == 403
    port = server.base_url.split(":")[2].split("/")[0]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}", "192.168.1.20", "llm.lan",
                 f"LLM.LAN.:{port}"):
        r = httpx.post(url, content=body, headers={"Content-Type": "application/json", "Host": host})
        assert r.status_code == 200, (host, r.text)
    assert "Traceback" not in log_of(server)


def test_an_allowed_origin_gets_its_preflight_and_cors_headers(server):
    url = server.base_url + "/chat/completions"
    pre = httpx.request("OPTIONS", url, headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                                                 "Access-Control-Request-Headers": "authorization, content-type"})
    assert pre.status_code == 204, pre.text
    assert pre.headers["access-control-allow-origin"] == "http://app.example"
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "content-type" in pre.headers["access-control-allow-headers"]
    denied = httpx.request("OPTIONS", url, headers={"Origin": "http://evil.example",
                                                    "Access-Control-Request-Method": "POST"})
    assert denied.status_code == 403 and "access-control-allow-origin" not in denied.headers
    r = chat(server, HELLO, headers={"Origin": "http://app.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example"
    # The real client sends no Origin and keeps working.
    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    assert client.chat.completions.create(model="m", max_tokens=2, messages=HELLO["messages"], extra_body=NO_THINK)


# --- class 7: slow, idle and too many sockets -------------------------------------------------------


def _port(server) -> int:
    return int(server.base_url.split(":")[2].split("/")[0])


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True           # the server closed it
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_idle_and_slow_header_sockets_are_closed(server):
    idle = socket.create_connection(("127.0.0.1", _port(server)))
    slow = socket.create_connection(("127.0.0.1", _port(server)))
    slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    started = time.monotonic()
    for _ in range(3):       # a header line every 3 s does not keep it open past the deadline
        time.sleep(3)
        try:
            slow.sendall(b"X-Slow: 1\r\n")
        except OSError:
            break
    assert _closed_within(slow, 15) and _closed_within(idle, 15)
    assert time.monotonic() - started < 20
    assert httpx.get(server.root + "/health", timeout=10).status_code == 200


def test_headers_past_16_kib_are_refused_without_a_traceback(server):
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", _port(server)), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
            answer = sock.recv(100)
            assert answer.startswith(b"HTTP/1.1 431"), answer
    assert httpx.get(server.root + "/health", timeout=10).status_code == 200
    assert "Traceback" not in log_of(server)


def test_client_that_leaves_mid_upload_is_no_internal_error(server):
    sock = socket.create_connection(("127.0.0.1", _port(server)))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100000\r\n\r\n{\"messages\": [")
    time.sleep(0.3)
    sock.close()
    time.sleep(0.5)
    assert chat(server, HELLO).status_code == 200
    assert "500" not in log_of(server) and "Traceback" not in log_of(server)


def _low_fd_limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (160, 160))


def test_connection_flood_at_the_fd_limit_is_refused_quietly_and_real_clients_get_in(tiny_model):
    proc = ServerProcess(str(tiny_model), "--ctx", "512")
    proc.popen_kwargs = {"preexec_fn": _low_fd_limit}
    proc.start()
    socks = []
    try:
        for _ in range(300):      # past the cap (160 - 128 = 32 connections) and past the fd limit itself
            try:
                socks.append(socket.create_connection(("127.0.0.1", _port(proc)), timeout=2))
            except OSError:
                break
        time.sleep(2)
        # The flood holds its sockets open, yet a real client gets in: the oldest idle one makes room.
        assert httpx.get(proc.root + "/health", timeout=5).status_code == 200
        assert chat(proc, HELLO).status_code == 200
        log = log_of(proc)
        assert "Traceback" not in log
        lines = [line for line in log.splitlines() if "at the cap" in line or "accept" in line]
        assert lines and len(lines) <= 4, log[-2000:]       # at most one line a second
    finally:
        for s in socks:
            s.close()
        proc.stop()
    assert len(log_of(proc)) < 20_000


# --- class 9 and 10: the command line ------------------------------------------------------------


def serve_cli(tiny_model, *args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "localcascade", "serve", str(tiny_model), "--port", "0", *args],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_api_key_file_that_is_not_a_small_regular_ascii_file_is_refused_at_once(tiny_model, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    huge = tmp_path / "huge"
    with open(huge, "wb") as f:
        f.truncate(1 << 30)        # sparse: a gigabyte that costs no disk
    accented = tmp_path / "accented"
    accented.write_text("sk-clé-secrète\n", encoding="utf-8")
    spaced = tmp_path / "spaced"
    spaced.write_text("two words\n")
    for path in (fifo, Path("/dev/zero"), huge, accented, spaced, tmp_path):
        started = time.monotonic()
        out = serve_cli(tiny_model, "--api-key-file", str(path))
        assert out.returncode == 2, (path, out.stderr)
        assert out.stderr.startswith("localcascade: ") and out.stderr.count("\n") == 1, out.stderr
        assert time.monotonic() - started < 30
    out = serve_cli(tiny_model, env={"LOCALCASCADE_API_KEY": "clé"})
    assert out.returncode == 2 and "ASCII" in out.stderr


def test_context_per_conversation_stays_within_the_trained_one(tiny_model):
    # The tiny model was trained on 4K: 8K per conversation is refused, whatever --parallel says.
    for args in (("--ctx", "8192", "--parallel", "2"), ("--ctx", "8192")):
        out = serve_cli(tiny_model, *args)
        assert out.returncode == 2 and "trained" in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_parallel_plan_stays_within_the_trained_context(gemma_model):
    # Gemma 3 270M was trained on 32K: the policy's 64K floor per conversation is cut to it.
    proc = ServerProcess(str(gemma_model), "--parallel", "2",
                         "--chat-template", str(Path(__file__).parent.parent / "data" / "gemma_chat_template.jinja"))
    try:
        proc.start()
        plan = next(line for line in proc.stderr_lines if "conversations" in line)
        assert "32K x 2 conversations" in plan, plan
        assert proc.health()["n_ctx_per_slot"] <= 32768
        client = openai.OpenAI(base_url=proc.base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello " * 40_000}])
        assert caught.value.body["code"] == "context_length_exceeded"
    finally:
        proc.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_mid_stream_ends_the_stream_and_exits_with_one_line(tiny_model, sig):
    proc = ServerProcess(str(tiny_model), "--ctx", "4096").start()
    body = {"messages": [{"role": "user", "content": "hello"}], "stream": True, "max_tokens": 4000,
            "grammar": 'root ::= "a" root', **NO_THINK}
    lines = []
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", proc.base_url + "/chat/completions", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                lines.append(line)
                if len(lines) == 8:
                    proc.proc.send_signal(sig)
    started = time.monotonic()
    code = proc.proc.wait(timeout=30)
    assert time.monotonic() - started < 15
    data = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]", data[-3:]
    last = json.loads(data[-2])
    assert "error" in last and "shutting down" in last["error"]["message"], last
    assert code == 0, code
    time.sleep(0.2)
    log = log_of(proc)
    assert "Traceback" not in log, log
    assert log.rstrip().splitlines()[-1] == f"localcascade: stopped ({sig.name})", log
    proc.stop()


def test_a_vanishing_temperature_samples_greedily_without_numpy_warnings(server):
    for temperature in (1e-300, 5e-324, 1e-6):
        r = chat(server, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "seed": 1,
                          "temperature": temperature, **NO_THINK})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] >= 1
        assert r.json()["choices"][0]["message"]["content"] or r.json()["choices"][0]["finish_reason"] == "stop"
    greedy = chat(server, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0,
                           **NO_THINK}).json()["choices"][0]["message"]["content"]
    tiny = chat(server, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 1e-300,
                         **NO_THINK}).json()["choices"][0]["message"]["content"]
    assert tiny == greedy
    assert "Warning" not in log_of(server) and "numpy" not in log_of(server)


def test_uploads_held_open_are_bounded_by_the_upload_budget(tiny_model):
    # --max-body 1MiB: bodies being read at once may hold 64 MiB together; the 65th upload that
    # stalls just short of its end is refused at once instead of growing the server's memory.
    proc = ServerProcess(str(tiny_model), "--ctx", "512", "--max-body", "1MiB").start()
    socks, answers = [], []
    chunk = b"x" * (1024 * 1024 - 1024)
    try:
        for _ in range(72):
            s = socket.create_connection(("127.0.0.1", _port(proc)), timeout=10)
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1048576\r\n\r\n" + chunk)
            socks.append(s)
        time.sleep(2)
        for s in socks:
            s.settimeout(0.2)
            try:
                answers.append(s.recv(200).split(b"\r\n", 1)[0])
            except socket.timeout:
                answers.append(b"(reading)")
        refused = [a for a in answers if b" 503 " in a]
        assert refused and answers.count(b"(reading)") >= 60, answers
        assert httpx.get(proc.root + "/health", timeout=10).status_code == 200
    finally:
        for s in socks:
            s.close()
        proc.stop()


def test_a_body_sent_with_its_headers_in_one_write_is_not_taken_for_headers(server):
    body = json.dumps({**HELLO, "pad": "x" * 200_000}).encode()
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=60) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert sock.recv(100).startswith(b"HTTP/1.1 200"), "a 200 KB body in the first read was refused"
