"""The tool loop end to end: real llama.cpp on the tiny nemotron_h_moe model, the real parser,
the real sandbox, both the test template and NVIDIA's Nano template.

No model available here writes code on its own, so a GBNF grammar forces the call. The
grammar spans the whole reply, across the tool call: it is one reply, continued.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from localcascade.engine.events import AnswerText, TurnStats
from localcascade.engine.session import Chat, Engine, GenerationOptions
from localcascade.errors import SandboxUnavailableError
from localcascade.planning.plan import Plan
from localcascade.tools.loop import ToolCallFinished, ToolCallStarted, run_with_tools
from localcascade.tools.python_tool import PythonTool, find_sandbox
from localcascade.tools.sandbox import Limits

DATA = Path(__file__).parent / "data"
NANO_TEMPLATE = DATA / "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16.jinja"
PLAN = Plan(model="tiny", n_ctx=4096)
CMD = [sys.executable, "-m", "localcascade", "ask"]

CALL = ('<tool_call> "\\n<function=python>\\n<parameter=code>\\n" CODE "\\n</parameter>\\n</function>\\n" '
        '</tool_call>')


def grammar(code: str = "print(6 * 7)", answer: str = "The answer is 42.") -> str:
    """Close the thought, call python with ``code``; after the result, close the new thought and answer."""
    return (f'root ::= </think> "\\n" {CALL} </think> "\\n" "{answer}"\n'
            f'CODE ::= {json.dumps(code)}\n')


@pytest.fixture(scope="module")
def tool():
    try:
        return PythonTool(find_sandbox(), Limits(wall_seconds=20))
    except SandboxUnavailableError as err:
        pytest.skip(f"no sandbox on this machine: {err}")


def chat_tools():
    from localcascade.tools.python_tool import schema

    return [schema()]


def _reply(engine, tool, text="What is 6 times 7?", **options):
    chat = Chat(engine)
    events = list(run_with_tools(chat, text, GenerationOptions(seed=1, **options), tool))
    return chat, events


@pytest.mark.parametrize("template", ["test", "nvidia"])
def test_a_forced_call_runs_and_the_reply_continues_after_its_result(tiny_model, tool, template):
    chat_template = NANO_TEMPLATE.read_text() if template == "nvidia" else None
    with Engine.load(tiny_model, PLAN, chat_template=chat_template) as engine:
        chat, events = _reply(engine, tool, grammar=grammar())
        context = engine.vocab.detokenize(engine.tokens, special=True)
        started = [e for e in events if isinstance(e, ToolCallStarted)]
        finished = [e for e in events if isinstance(e, ToolCallFinished)]
        stats = events[-1]
        assert [e.code for e in started] == ["print(6 * 7)"]
        assert finished[0].result.stdout == "42\n" and finished[0].result.exit == 0
        assert "".join(e.text for e in events if isinstance(e, AnswerText)).strip() == "The answer is 42."
        assert isinstance(stats, TurnStats) and stats.stop_reason == "stop"
        # The tool was offered, the call and its result are in the context, and the reply went on.
        assert "python" in context.split("<|im_end|>")[0]
        assert "<tool_call>\n<function=python>\n<parameter=code>\nprint(6 * 7)\n</parameter>" in context
        assert "<tool_response>\n42\n</tool_response>" in context
        assert context.rstrip().endswith("The answer is 42.") or "The answer is 42.<|im_end|>" in context
        # Only the template's glue was evaluated after the call: no re-evaluation of the context.
        assert engine.full_reevaluations == 0
        assert stats.evaluated_tokens < stats.prompt_tokens + 60
        assert [m["role"] for m in chat.messages] == ["user", "assistant", "tool", "assistant"]
        assert chat.messages[1]["tool_calls"][0]["function"] == {"name": "python",
                                                                 "arguments": {"code": "print(6 * 7)"}}
        if template == "nvidia":
            # The glue is exactly NVIDIA's: the call's turn closed, the result as a user
            # <tool_response> turn, then a new assistant turn that thinks again.
            assert ("</tool_call>\n<|im_end|>\n<|im_start|>user\n<tool_response>\n42\n</tool_response>\n"
                    "<|im_end|>\n<|im_start|>assistant\n<think>\n") in context
            # ...and the context is what the template renders for this conversation.
            rendered = engine.template.render(chat.messages[:3], add_generation_prompt=True, enable_thinking=True,
                                              tools=chat_tools())
            assert rendered.split("<|im_start|>assistant\n")[-1] == "<think>\n"
            assert rendered.rsplit("<tool_call>", 1)[1] in context


def test_the_next_message_reuses_the_context_after_a_tool_reply(tiny_model, tool):
    with Engine.load(tiny_model, PLAN) as engine:
        chat, _ = _reply(engine, tool, grammar=grammar())
        before = list(engine.tokens)
        options = GenerationOptions(seed=2, max_tokens=5, tools=chat_tools())
        events = list(chat.send("and 7 times 8?", options))
        assert events[-1].evaluated_tokens < 40 and engine.full_reevaluations == 0
        assert engine.tokens[:len(before)] == before


def test_hostile_code_is_a_reported_error_and_the_chat_goes_on(tiny_model, tool):
    code = 'import socket\nsocket.create_connection(("1.1.1.1", 80), timeout=2)'
    with Engine.load(tiny_model, PLAN) as engine:
        chat, events = _reply(engine, tool, grammar=grammar(code=code))
        result = next(e for e in events if isinstance(e, ToolCallFinished)).result
        assert result.exit == 1 and "unreachable" in result.stderr
        context = engine.vocab.detokenize(engine.tokens, special=True)
        assert "<tool_response>" in context and "unreachable" in context
        assert events[-1].stop_reason == "stop"


def test_the_call_cap_is_answered_then_the_reply_ends(tiny_model, tool):
    looping = f'root ::= (</think> "\\n" {CALL}){{4}}\nCODE ::= "1"\n'
    with Engine.load(tiny_model, PLAN) as engine:
        chat = Chat(engine)
        events = list(run_with_tools(chat, "go", GenerationOptions(seed=1, grammar=looping), tool, max_calls=2))
    finished = [e.result for e in events if isinstance(e, ToolCallFinished)]
    assert [r.error for r in finished] == [None, None, "no more tool calls in this reply (the limit is 2): "
                                                       "answer with what you have"]
    assert events[-1].stop_reason == "tool_limit"


def test_the_thinking_budget_counts_every_round(tiny_model, tool):
    # Thinking is free-form letters; the budget closes it. The second round's thought has no budget left.
    free = f'root ::= [a-z ]* </think> "\\n" {CALL} [a-z ]* </think> "\\nok"\nCODE ::= "1"\n'
    with Engine.load(tiny_model, PLAN) as engine:
        chat = Chat(engine)
        events = list(run_with_tools(chat, "go", GenerationOptions(seed=3, grammar=free, think_budget=6), tool))
    assert events[-1].stop_reason == "stop"
    assert events[-1].thinking_tokens <= 6 + 2 * 4   # the budget, plus the closing tokens of each round


def ask(*args, timeout=120):
    return subprocess.run([*CMD, *args], input=b"", capture_output=True, timeout=timeout,
                          env={**os.environ, "HF_TOKEN": "hf_never_seen_by_the_code"})


def test_ask_prints_only_the_answer_and_json_lists_the_calls(tiny_model, tool, tmp_path):
    path = tmp_path / "g.gbnf"
    path.write_text(grammar(code="import os\nprint(sorted(os.environ))"))
    shown = ask("--model", str(tiny_model), "--tools", "python", "--grammar-file", str(path), "--show-thinking", "q")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.decode() == "The answer is 42.\n"
    err = shown.stderr.decode()
    assert "[python call 1]\n    import os\n    print(sorted(os.environ))" in err
    assert "[python result ok" in err and "HF_TOKEN" not in err
    as_json = ask("--model", str(tiny_model), "--tools", "python", "--grammar-file", str(path), "--json", "-q", "q")
    data = json.loads(as_json.stdout)
    assert data["answer"] == "The answer is 42."
    [call] = data["tool_calls"]
    assert set(call) >= {"code", "stdout", "stderr", "exit", "seconds"}
    assert call["code"] == "import os\nprint(sorted(os.environ))" and call["exit"] == 0
    assert "HF_TOKEN" not in call["stdout"] and "PATH" in call["stdout"]


def test_ask_refuses_unknown_tools_and_stray_flags(tiny_model):
    bad = ask("--model", str(tiny_model), "--tools", "bash", "q")
    assert bad.returncode == 2 and b"--tools takes python, not 'bash'" in bad.stderr
    stray = ask("--model", str(tiny_model), "--tools-unsafe-no-sandbox", "q")
    assert stray.returncode == 2 and b"goes with --tools python" in stray.stderr
    assert b"Traceback" not in bad.stderr + stray.stderr


def test_ask_without_bubblewrap_refuses_naming_it(tiny_model, tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("the Linux refusal")
    # A PATH without bwrap, but with this Python.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    result = subprocess.run([*CMD, "--model", str(tiny_model), "--tools", "python", "q"], input=b"",
                            capture_output=True, timeout=60, env={**os.environ, "PATH": str(bin_dir)})
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "install bubblewrap" in lines[0] and "apt install bubblewrap" in lines[0]


def test_ctrl_c_during_a_tool_call_stops_the_code_and_the_reply(tiny_model, tool, tmp_path):
    path = tmp_path / "g.gbnf"
    path.write_text(grammar(code="import time\ntime.sleep(60)"))
    marker = "What runs inside the sandbox"   # the worker's text, on its command line
    proc = subprocess.Popen([*CMD, "--model", str(tiny_model), "--tools", "python", "--grammar-file", str(path),
                             "--show-thinking", "q"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    workers: list[psutil.Process] = []
    while time.monotonic() < deadline and not workers:
        workers = _descendants_running(proc, marker)   # not another run's sandbox on this machine
        time.sleep(0.2)
    assert workers, "the tool call never started"
    time.sleep(0.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - started < 10
    assert proc.returncode == 130 and out == b""
    assert err.decode().strip().splitlines()[-1] == "localcascade: interrupted"
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, "the tool call's code outlived the command"


def _descendants_running(proc: subprocess.Popen, marker: str) -> list[psutil.Process]:
    """The processes below ``proc`` whose command line holds ``marker``."""
    try:
        below = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in below:
        try:
            if marker in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass
    return found


def test_a_thought_open_at_a_call_is_closed_as_nvidias_template_renders_it(tiny_model, tool):
    """Unforced: the random model samples <tool_call> mid-thought for some seeds; find one.

    The context must then read "<think>\\nR\\n</think>\\n<tool_call>", the junction NVIDIA's
    template renders for an assistant turn with reasoning and a call, and the loop goes on.
    """
    from localcascade.tools.python_tool import schema

    template = NANO_TEMPLATE.read_text()
    with Engine.load(tiny_model, PLAN, chat_template=template) as engine:
        close = engine.vocab.tokenize("\n</think>\n", special=True)
        # Seed 30 does it with the tiny model of tests/synth.py on the CPU build with one thread (as
        # conftest.py runs llama.cpp); the scan covers a build that samples differently.
        for seed in [30, *range(120)]:
            chat = Chat(engine)
            start = len(engine.tokenize_prompt(engine.template.render(
                [{"role": "user", "content": "hi"}], add_generation_prompt=True, enable_thinking=True,
                tools=[schema()])))
            events = list(run_with_tools(chat, "hi", GenerationOptions(seed=seed, max_tokens=300), tool, max_calls=1))
            reply = engine.tokens[start:]
            if engine.tool_call_open not in reply:
                continue
            at = reply.index(engine.tool_call_open)
            if engine.think_close in reply[:at - len(close)]:
                continue    # the model closed its thought itself before the call
            assert reply[at - len(close):at] == close
            reasoning = chat.messages[1].get("reasoning_content")
            if not reasoning:
                continue    # a thought of special tokens only: nothing the template would render
            rendered = engine.template.render(
                [{"role": "user", "content": "hi"},
                 {"role": "assistant", "content": "", "reasoning_content": reasoning,
                  "tool_calls": [{"type": "function", "function": {"name": "python", "arguments": {"code": "1"}}}]}],
                add_generation_prompt=False, enable_thinking=True)
            assert f"<think>\n{reasoning}\n</think>\n<tool_call>" in rendered
            context = engine.vocab.detokenize(engine.tokens, special=True)
            assert "<tool_response>\n" in context and events[-1].stop_reason in ("stop", "length", "tool_limit")
            return
    pytest.fail("no seed in 120 made the model start a call mid-thought")
