"""`localcascade run --tools python` and `/tools`: the chat shows each call and its result.

The tiny model writes no code on its own: a grammar forces one call to python, then an answer.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from processes import children_matching, running
from test_repl import PROMPT, terminal  # noqa: F401 - the fixture is used by name
from test_tool_loop import grammar

WORKER = "What runs inside the sandbox"   # the worker's text, on its command line


@pytest.fixture(scope="module", autouse=True)
def needs_sandbox():
    from localcascade.errors import SandboxUnavailableError
    from localcascade.tools.python_tool import find_sandbox

    try:
        find_sandbox()
    except SandboxUnavailableError as err:
        pytest.skip(f"no sandbox on this machine: {err}")


def test_calls_and_results_are_shown_like_the_trace(terminal, tmp_path):
    term = terminal("--tools", "python", "--trace", "show", "--max-tokens", "200", grammar=grammar())
    assert term.prompt_line() == "[think on · trace show · tools python] >>>"
    shown = term.send("what is 6 times 7?")
    assert "[python call 1]\n    print(6 * 7)" in shown
    assert re.search(r"\[python result ok, \d+\.\d\d s\]\n    42", shown), shown
    assert shown.index("42") < shown.index("The answer is 42.")

    term.send("/trace collapse")
    collapsed = term.send("again")
    assert re.search(r"\[python call 1: 1 line of code, ok, \d+\.\d\d s\] \(/tools last shows it\)", collapsed)
    assert "    print(6 * 7)" not in collapsed and "The answer is 42." in collapsed
    assert "    print(6 * 7)" in term.send("/tools last")

    assert "saved 8 messages" in term.send("/save chat.json")
    roles = [m["role"] for m in json.loads((tmp_path / "chat.json").read_text())["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant"] * 2
    assert "loaded 8 messages (2 turns)" in term.send("/load chat.json")

    assert "tools off" in term.send("/tools off")
    assert term.prompt_line() == "[think on · trace collapse] >>>"
    term.child.sendline("/bye")
    assert term.exit_status() == 0


def test_tools_on_in_a_piped_session_finds_the_sandbox(tmp_path, tiny_model):
    grammar_file = tmp_path / "g.gbnf"
    grammar_file.write_text(grammar())
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM", "COLUMNS")}
    result = subprocess.run(
        [sys.executable, "-m", "localcascade", "run", "--model", str(tiny_model), "--seed", "1",
         "--trace", "show", "--grammar-file", str(grammar_file)],
        input="/tools on\nsix times seven?\n/tools\n/bye\n", capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "tools on: the model may run python (bubblewrap; at most 8 calls a reply)" in result.stdout or \
        "tools on: the model may run python (sandbox-exec" in result.stdout
    assert "[python call 1]" in result.stdout and "The answer is 42." in result.stdout
    assert "tools are on" in result.stdout




def test_ctrl_c_while_code_runs_stops_it_and_the_chat_goes_on(terminal):
    term = terminal("--tools", "python", "--trace", "show", grammar=grammar(code="import time\ntime.sleep(60)"))
    term.child.sendline("sleep please")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        # The chat's own sandbox workers (other tests may run theirs at the same time).
        workers = children_matching(term.child.pid, WORKER)
        if workers:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the tool call never started")
    time.sleep(0.5)
    started = time.monotonic()
    term.child.sendintr()
    term.child.expect(r"reply stopped; what was said is kept")
    term.child.expect(PROMPT)
    assert time.monotonic() - started < 10
    assert not any(running(p) for p in workers)
    assert "stopped by the user" in term.send("/tools last")
    term.child.sendline("/bye")
    assert term.exit_status() == 0
