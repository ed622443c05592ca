"""Class 6: a hub that answers the wrong way (hfserver.HOSTILE_MODES: a captive portal's HTML, random
bytes, broken JSON, a redirect loop, silence, a body cut off mid-way, a server error) ends every hub
command in one line, in bounded time, never a traceback or a hang."""

from __future__ import annotations

import time

import pytest

import synth
from _support import assert_one_line, cli
from hfserver import HOSTILE_MODES

REPO, FILE = "owner/tiny", "tiny-Q8_0.gguf"
COMMANDS = {"pull": ["pull", f"{REPO}:Q8_0"], "fit": ["fit", f"{REPO}:Q8_0"], "show": ["show", f"hf://{REPO}/{FILE}"]}
# What the one line says, per mode (any of the words).
EXPECTED = {
    "html": ("not the hub's JSON", "not a GGUF file"),
    "garbage": ("not the hub's JSON", "not a GGUF file"),
    "garbage_json": ("not the hub's API", "not a GGUF file"),
    "redirect_loop": ("in a loop", "redirects"),
    "silent": ("did not answer in time", "timed out"),
    "truncated": ("cut off", "complete message body"),
    "error_500": ("500",),
}
# The hub client waits READ_TIMEOUT_S (15 s) for silence, then gives up; nothing retries forever.
WITHIN_S = 60


@pytest.fixture
def hostile_hub(hf_server, tmp_path):
    model = synth.write_nemotron_h_moe(tmp_path / FILE, synth.TINY)
    hf_server.add_file(REPO, FILE, model)
    yield hf_server
    hf_server.misbehave(None)


@pytest.mark.parametrize("mode", HOSTILE_MODES)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_hub_answering_wrongly_ends_in_one_line(hostile_hub, mode, command):
    if mode == "silent" and command != "pull":
        pytest.skip("one command is enough to show silence is bounded (each waits 15 s)")
    hostile_hub.misbehave(mode)
    started = time.monotonic()
    result = cli(*COMMANDS[command], env={"HF_HUB_OFFLINE": "0"}, timeout=WITHIN_S + 30)
    assert time.monotonic() - started < WITHIN_S
    line = assert_one_line(result, 1)
    assert any(word in line for word in EXPECTED[mode]), line
    assert "cannot reach the hub" not in line  # the hub was reached: it answered wrongly
