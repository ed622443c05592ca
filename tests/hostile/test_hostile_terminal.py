"""Class 5: a huge paste at a real terminal (a pseudo-terminal here) is refused in one line, in bounded
time and memory, and the chat goes on. The chat runs under a memory limit and
every wait has a timeout, so the unfixed behaviour (13 GB and counting) fails the test, not the machine."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from _support import GIB, limit_memory

pexpect = pytest.importorskip("pexpect")

PASTE_CHARS = 200_000
CHUNK = 4096


@pytest.fixture
def chat(tiny_model, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TERM": "xterm", "COLUMNS": "120", "LINES": "40"}
    env.pop("NO_COLOR", None)
    child = pexpect.spawn(sys.executable, ["-m", "localcascade", "run", "--model", str(tiny_model), "--no-think",
                                           "--max-tokens", "2"],
                          env=env, cwd=str(tmp_path), encoding="utf-8", codec_errors="replace", timeout=60,
                          dimensions=(40, 120), preexec_fn=limit_memory(3 * GIB))
    child.expect("ready")
    yield child
    if child.isalive():
        child.kill(signal.SIGKILL)
    child.close(force=True)


def _drain(child) -> None:
    """Read what the chat drew, as a terminal does: a pty whose output nobody reads blocks the writer."""
    try:
        while True:
            child.read_nonblocking(1 << 16, timeout=0.01)
    except (pexpect.TIMEOUT, pexpect.EOF):
        pass


def _paste(child, text: str) -> None:
    for i in range(0, len(text), CHUNK):
        child.send(text[i:i + CHUNK])
        _drain(child)


def _line() -> str:
    return ("paste " * (PASTE_CHARS // 6 + 1))[:PASTE_CHARS]


def test_a_huge_bracketed_paste_is_refused_too(chat):
    chat.send("\x1b[200~")
    _paste(chat, _line())
    chat.send("\x1b[201~\r")
    chat.expect("it is longer than 65,536 characters", timeout=120)
    chat.sendline("/bye")
    chat.expect(pexpect.EOF, timeout=60)
