"""The front-end layer the commands share: shell completion, load progress, the one way `pull` and
`run` get a model (and ask about it), Ctrl-C in the chat, and the one Console factory."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from localcascade.store import models as store
from localcascade.model.catalog import load_catalog
from localcascade.cli.main import main

PACKAGE = Path(__file__).resolve().parent.parent / "localcascade"


def _cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


# --- shell completion -------------------------------------------------------------------------------


def _complete(words: str, **env) -> subprocess.CompletedProcess:
    """What bash's completion function asks for on Tab after ``words`` (the last word is completed)."""
    environ = {**os.environ, "_LOCALCASCADE_COMPLETE": "complete_bash", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split(" ")) - 1), **env}
    return subprocess.run([sys.executable, "-m", "localcascade"], capture_output=True, text=True, env=environ,
                          timeout=60)


def test_model_arguments_complete_to_catalog_names_and_stored_models(tiny_model):
    store.register_local("my-tiny", [tiny_model], quant="F32", source=None, check="test")

    run = _complete("localcascade run Q4")
    assert run.returncode == 0 and run.stdout.split() == ["Q4_K_M"], run.stderr
    assert "my-tiny" in _complete("localcascade ask --model my").stdout.split()
    assert set(_complete("localcascade fit ").stdout.split()) == {v.quant for v in load_catalog()} | {"my-tiny"}
    assert _complete("localcascade rm ").stdout.split() == ["my-tiny"]            # only what is stored
    assert _complete("localcascade pull au").stdout.split() == ["auto"]
    assert "fit" in _complete("localcascade fi").stdout.split()                  # commands complete too


def test_completion_with_an_unreadable_store_still_offers_the_catalog(tmp_path):
    index = Path(os.environ["LOCALCASCADE_HOME"]) / "store.json"
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text("{not json")

    result = _complete("localcascade run ")

    assert result.returncode == 0 and "Traceback" not in result.stderr and result.stderr == ""
    assert set(result.stdout.split()) == {v.quant for v in load_catalog()}
    assert _complete("localcascade rm ").stdout.split() == []


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_install_completion_writes_the_bash_script(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "SHELL": "/bin/bash"}
    # shellingham names the shell from the parent process: run it from bash, as a user would (the
    # second command keeps bash from exec'ing into python, which would leave pytest as its parent).
    result = subprocess.run(["bash", "-c", f"'{sys.executable}' -m localcascade --install-completion; exit $?"],
                            capture_output=True, text=True, env=env, cwd=Path(__file__).parent.parent, timeout=60)
    assert result.returncode == 0, result.stderr
    script = (home / ".bash_completions" / "localcascade.sh").read_text()
    assert "_LOCALCASCADE_COMPLETE" in script
    assert "localcascade.sh" in (home / ".bashrc").read_text()


# --- load progress ----------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _load(progress, clock: _Clock, seconds: float) -> None:
    """A load that reports 0..100 % evenly over ``seconds``."""
    for percent in range(101):
        clock.now = seconds * percent / 100
        progress.update(percent / 100)


@pytest.mark.parametrize("terminal", [False, True])
def test_load_progress_without_a_terminal_or_with_no_color_is_plain_lines(monkeypatch, terminal):
    from localcascade.cli.console import make_console
    from localcascade.cli.progress import LOAD_LINE_EVERY_S, LoadProgress

    if terminal:
        monkeypatch.setenv("NO_COLOR", "1")   # a terminal, but no escape codes wanted
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    out = io.StringIO()
    console = make_console(stderr=True, file=out, force_terminal=terminal)

    quick = LoadProgress("m.gguf", console=console, clock=_Clock())
    with quick as report:
        _load(quick, quick.clock, LOAD_LINE_EVERY_S / 2)
    assert report == quick.update
    assert out.getvalue() == ""                 # a quick load adds nothing to a script's stderr

    clock = _Clock()
    slow = LoadProgress("m.gguf", console=console, clock=clock)
    with slow:
        _load(slow, clock, LOAD_LINE_EVERY_S * 4)
    lines = out.getvalue().splitlines()
    assert lines == ["loading m.gguf: 25%", "loading m.gguf: 50%", "loading m.gguf: 75%", "loading m.gguf: 100%"]
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


def test_load_progress_on_a_terminal_is_a_bar_that_goes_away(monkeypatch):
    from localcascade.cli.console import make_console
    from localcascade.cli.progress import LoadProgress

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    out = io.StringIO()
    console = make_console(stderr=True, file=out, force_terminal=True, width=80)
    progress = LoadProgress("m.gguf", console=console, clock=_Clock())
    assert progress.live
    with progress:
        _load(progress, progress.clock, 60)
    assert "loading m.gguf" in out.getvalue() and "loading m.gguf:" not in out.getvalue()


def test_download_progress_in_a_pipe_counts_what_was_already_here(monkeypatch):
    from localcascade.cli.console import make_console
    from localcascade.cli.progress import LOAD_LINE_EVERY_S, DownloadProgress

    monkeypatch.delenv("NO_COLOR", raising=False)
    out = io.StringIO()
    clock = _Clock()
    progress = DownloadProgress("Q4_K_M", console=make_console(stderr=True, file=out), clock=clock)
    with progress:
        progress.start(100 * 1024**2, 40 * 1024**2)      # a resumed download: 40 of 100 MiB were here
        for second in range(1, 13):
            clock.now = second * LOAD_LINE_EVERY_S / 2
            progress.advance("model.gguf", 5 * 1024**2)
    assert out.getvalue().splitlines() == [
        "downloading Q4_K_M: 50.0 MiB of 100.0 MiB (50%)",
        "downloading Q4_K_M: 60.0 MiB of 100.0 MiB (60%)",
        "downloading Q4_K_M: 70.0 MiB of 100.0 MiB (70%)",
        "downloading Q4_K_M: 80.0 MiB of 100.0 MiB (80%)",
        "downloading Q4_K_M: 90.0 MiB of 100.0 MiB (90%)",
        "downloading Q4_K_M: 100.0 MiB of 100.0 MiB (100%)",
    ]


def test_ask_in_a_pipe_prints_no_progress_codes(tiny_model):
    result = subprocess.run([sys.executable, "-m", "localcascade", "ask", "--model", str(tiny_model), "--no-think",
                             "--max-tokens", "2", "hi"], capture_output=True, timeout=120,
                            env={k: v for k, v in os.environ.items() if k != "NO_COLOR"})
    assert b"\x1b" not in result.stderr and b"\r" not in result.stderr
    assert b"loaded in" in result.stderr


# --- recommend, confirm, pull: one rule for pull and run ------------------------------------------------


@pytest.fixture
def catalog_served(hf_server, tiny_model):
    """Every catalog variant's file on the test hub, each holding the tiny model."""
    for variant in load_catalog():
        for name in variant.files:
            hf_server.add_file(variant.repo, name, tiny_model)
    return hf_server


def test_pull_without_a_terminal_downloads_without_asking(catalog_served, capsys):
    code, out, err = _cli(["pull", "--gpu", "rtx-4090"], capsys)     # no --yes; stdin is not a terminal

    assert code == 0, err
    assert "best for this machine: " in err and "no terminal to ask on: downloading, as with --yes" in err
    assert [m.name for m in store.list_models()] == [out.split("\t")[0]]


def test_run_without_a_terminal_pulls_the_recommended_variant_then_chats(catalog_served, capsys, monkeypatch):
    from localcascade.hardware import resolve

    detected = resolve.hardware_for
    # This machine, with RAM for any variant: the test is the flow, not what fits a CI runner.
    monkeypatch.setattr(resolve, "hardware_for", lambda **kw: detected(ram="512GiB"))
    monkeypatch.setattr(sys, "stdin", io.StringIO("/stats\n/bye\n"))   # messages piped in

    code, out, err = _cli(["run", "--no-think"], capsys)

    assert code == 0, err
    assert "no Nemotron-Cascade-2 model pulled yet" in err and "no terminal to ask on" in err
    assert "no reply yet" in out
    assert len(store.list_models()) == 1


def test_run_with_nothing_to_read_downloads_nothing(catalog_served, capsys, monkeypatch):
    with open(os.devnull) as devnull:
        monkeypatch.setattr(sys, "stdin", devnull)
        code, _, err = _cli(["run"], capsys)

    assert code == 1 and "no model pulled yet" in err and "`localcascade pull`" in err
    assert catalog_served.total_bytes_served == 0 and store.list_models() == []


def test_pull_on_a_terminal_asks_and_no_downloads_nothing(catalog_served):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(sys.executable, ["-m", "localcascade", "pull", "--gpu", "rtx-4090"], env=dict(os.environ),
                          encoding="utf-8", timeout=60)
    child.expect(r"Download \S+ \([\d.]+ \w+\)\? \[Y/n\]: ")
    child.sendline("n")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    assert re.search(r"nothing downloaded: `localcascade pull \S+` downloads it later", child.before)
    assert store.list_models() == []


# --- Ctrl-C in the chat ------------------------------------------------------------------------------------


def _chat_reading_a_long_prompt(chunks_read: list[int], interrupts: int):
    """A Chat whose reply first reads a prompt in chunks, checking ``turn.stopped`` between them as
    the engine does; in the first reply, Ctrl-C arrives (``interrupts`` times) while its second chunk is read."""
    from localcascade.engine.events import AnswerText, TurnStats
    from localcascade.engine.turn import Turn

    class Engine:
        model_name, plan = "fake", None

        @staticmethod
        def count_tokens(text: str) -> int:
            return len(text.split())

    class Chat:
        messages: list = []
        context_used, context_limit = 0, 4096

        def send(self, text, options):
            def reply(turn):
                for chunk in range(10):
                    if turn.stopped:
                        break
                    chunks_read.append(chunk)
                    if chunk == 1 and len(chunks_read) == 2:
                        for _ in range(interrupts):
                            os.kill(os.getpid(), signal.SIGINT)
                    self.context_used += 10
                else:
                    yield AnswerText("a whole answer")
                yield TurnStats(prompt_tokens=self.context_used, evaluated_tokens=self.context_used,
                                thinking_tokens=0, answer_tokens=0, prompt_seconds=0.1, generation_seconds=0.0,
                                context_used=self.context_used, context_limit=4096,
                                stop_reason="interrupted" if turn.stopped else "stop")

            return Turn(reply)

    return Engine(), Chat()


def test_the_first_ctrl_c_stops_the_turn_between_prompt_chunks_and_the_chat_goes_on():
    from localcascade.repl.loop import stream_reply
    from localcascade.repl.render import chat_console
    from localcascade.repl.state import ReplState

    chunks: list[int] = []
    engine, chat = _chat_reading_a_long_prompt(chunks, interrupts=1)
    state = ReplState(engine=engine, chat=chat)
    handler = signal.getsignal(signal.SIGINT)
    out = io.StringIO()

    stream_reply(chat_console(file=out), state, "a long document")

    assert chunks == [0, 1]                     # stopped before the third chunk, not at the first token
    assert "reply stopped; what was said is kept" in out.getvalue()
    assert state.last_stats.stop_reason == "interrupted" and state.turns == 1
    assert signal.getsignal(signal.SIGINT) is handler      # Ctrl-C is the prompt's again
    stream_reply(chat_console(file=out), state, "again")   # the next message works
    assert chunks[-1] == 9 and state.turns == 2


def test_a_second_ctrl_c_interrupts_at_once():
    from localcascade.repl.loop import stream_reply
    from localcascade.repl.render import chat_console
    from localcascade.repl.state import ReplState

    chunks: list[int] = []
    engine, chat = _chat_reading_a_long_prompt(chunks, interrupts=2)
    state = ReplState(engine=engine, chat=chat)
    out = io.StringIO()

    stream_reply(chat_console(file=out), state, "a long document")

    assert chunks == [0, 1]
    assert "reply stopped; what was said is kept" in out.getvalue()


# --- one Console factory ------------------------------------------------------------------------------------


def test_only_the_console_module_makes_rich_consoles():
    makers = [path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")
              if re.search(r"\bConsole\(", path.read_text(encoding="utf-8"))]
    assert makers == ["cli/console.py"]
