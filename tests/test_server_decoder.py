"""The server never trusts its one decoder thread: a failure in it fails one request, not the server.

Faults are injected into the real scheduler (the real tiny model and llama.cpp behind it) of the
real app, served by starlette's test client: every root cause found is fixed, so no request can
make these happen from outside any more (tests/hostile/test_hostile_server.py sends those), and
what is checked here is that the next unknown one cannot freeze the server either.
"""

from __future__ import annotations

import threading
import time

import pytest
from starlette.testclient import TestClient

from localcascade.engine.session import Engine
from localcascade.planning.plan import Plan
from localcascade.server.app import ServerSettings, create_app
from localcascade.server.scheduler import Scheduler

HELLO = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
         "chat_template_kwargs": {"enable_thinking": False}}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def served(tiny_model):
    plan = Plan(model="tiny", n_ctx=2048, n_batch=256, n_ubatch=128, n_seq=2)
    with Engine.load(tiny_model, plan) as engine:
        scheduler = Scheduler(engine, queue_size=4).start()
        try:
            with TestClient(create_app(scheduler, ServerSettings(model_id="tiny")),
                            base_url="http://127.0.0.1") as client:
                yield scheduler, client
        finally:
            scheduler.close()


def ask(client):
    return client.post("/v1/chat/completions", json=HELLO, headers=JSON)


def test_a_failure_while_ending_a_reply_fails_that_request_only(served, monkeypatch):
    scheduler, client = served
    real_end, calls = scheduler._end, []

    def failing_end(turn):
        calls.append(turn)
        if len(calls) == 1:
            raise RecursionError("maximum recursion depth exceeded")
        return real_end(turn)

    monkeypatch.setattr(scheduler, "_end", failing_end)
    r = ask(client)
    assert r.status_code == 500 and "RecursionError" in r.json()["error"]["message"]
    assert client.get("/health").json()["status"] == "ok"
    assert ask(client).status_code == 200
    assert scheduler.status()["busy"] == 0


def test_a_failing_decoder_step_fails_the_replies_in_flight_and_the_next_is_served(served, monkeypatch):
    scheduler, client = served
    real_step, calls = scheduler.decoder.step, []

    def failing_step():
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError()
        return real_step()

    monkeypatch.setattr(scheduler.decoder, "step", failing_step)
    assert ask(client).status_code == 500
    assert ask(client).status_code == 200


def test_a_dead_decoder_is_reported_by_health_and_refuses_at_once(served, monkeypatch):
    scheduler, client = served

    def dying(admitted):
        raise SystemExit("gone")

    monkeypatch.setattr(scheduler, "_advance", dying)
    r = ask(client)
    assert r.status_code == 503, r.text        # the request it held fails: nobody waits forever
    scheduler._thread.join(5)
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "error"
    assert "decoder" in health.json()["error"]
    started = time.monotonic()
    r = ask(client)
    assert r.status_code == 503 and "decoder" in r.json()["error"]["message"]
    assert time.monotonic() - started < 5


def test_a_decoder_stuck_in_one_step_is_reported_by_health(served, monkeypatch):
    scheduler, client = served
    scheduler.stuck_after_s = 0.3
    real_step, release = scheduler.decoder.step, threading.Event()

    def slow_step():
        release.wait(10)
        return real_step()

    monkeypatch.setattr(scheduler.decoder, "step", slow_step)
    reply = threading.Thread(target=ask, args=(client,))
    reply.start()
    time.sleep(0.8)
    health = client.get("/health")
    assert health.status_code == 503 and "one step" in health.json()["error"]
    release.set()
    reply.join(30)
    assert client.get("/health").json()["status"] == "ok"
