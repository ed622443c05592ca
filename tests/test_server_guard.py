"""The guard's own parts: Host names as browsers and clients write them, origins as `--cors-origin`
takes them, and a body read within its deadline and the upload budget (through starlette's real
Request, fed by a receive channel that stalls as a slow client does)."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import ClientDisconnect, Request

from localcascade.server.guard import (BodyRefused, Guard, GuardSettings, UploadBudget, host_names, origin_of,
                                       read_body)


def allowed(host: str, names=("localhost",)) -> bool:
    return Guard(None, GuardSettings(host_names=frozenset(names)))._host_allowed(host)


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:8080", "localhost.", "127.0.0.1:80", "[::1]:8080", "[::1]",
                                  "10.0.0.7", "0.0.0.0:8080"])
def test_this_servers_names_and_any_address_pass(host):
    assert allowed(host)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "localhost.evil.example", "127.0.0.1.nip.io",
                                  "localhost:http", "[::1", "[::1]x", "", ":8080", "a b"])
def test_other_names_and_malformed_hosts_are_refused(host):
    assert not allowed(host)


def test_host_names_hold_the_listen_name_and_extras():
    names = host_names("My-Box.lan", ("LLM.example.",))
    assert {"localhost", "my-box.lan", "llm.example"} <= names
    assert allowed("llm.example:8080", names) and allowed("anything", {"*"})


def test_origins_are_normalised_and_non_origins_refused():
    assert origin_of("HTTP://App.Example:3000") == "http://app.example:3000"
    assert origin_of("https://app.example/") == "https://app.example"
    assert origin_of("*") == "*"
    for bad in ("app.example", "file:///x", "https://app.example/path", "https://user@app.example", "null"):
        with pytest.raises(ValueError):
            origin_of(bad)


def request_from(chunks, *, gap_s: float = 0.0, then_disconnect: bool = False) -> Request:
    pending = list(chunks)

    async def receive():
        if pending:
            await asyncio.sleep(gap_s)
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending) or then_disconnect}
        if then_disconnect:
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)

    return Request({"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}, receive)


def read(request, settings, budget):
    return asyncio.run(read_body(request, settings, budget))


def test_a_body_that_trickles_past_its_deadline_is_408_and_gives_its_budget_back():
    settings = GuardSettings(body_timeout_s=0.3)
    budget = UploadBudget(1 << 20)
    with pytest.raises(BodyRefused) as caught:
        read(request_from([b"x"] * 100, gap_s=0.05), settings, budget)
    assert caught.value.status == 408 and budget.held == 0


def test_the_upload_budget_refuses_with_503_and_the_size_cap_with_413():
    budget = UploadBudget(1000)
    budget.take(900)                       # another upload holds most of it
    with pytest.raises(BodyRefused) as caught:
        read(request_from([b"x" * 200]), GuardSettings(), budget)
    assert caught.value.status == 503 and budget.held == 900
    with pytest.raises(BodyRefused) as caught:
        read(request_from([b"x" * 60, b"x" * 60]), GuardSettings(max_body_bytes=100), UploadBudget(1 << 20))
    assert caught.value.status == 413
    assert read(request_from([b"{}", b"  "]), GuardSettings(), budget) == b"{}  " and budget.held == 900


def test_a_client_gone_mid_body_is_a_disconnect_not_an_error():
    budget = UploadBudget(1 << 20)
    with pytest.raises(ClientDisconnect):
        read(request_from([b"{\"messages\""], then_disconnect=True), GuardSettings(), budget)
    assert budget.held == 0
