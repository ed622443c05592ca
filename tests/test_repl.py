"""`localcascade run`: the real chat in a real terminal (a pty), on the tiny nemotron_h_moe model.

The tiny model has random weights, so its words are noise; a GBNF grammar
(``--grammar-file``) fixes what it says where a test needs to know: a thought,
``</think>`` and an answer, or an endless reply to interrupt.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect")

DATA = Path(__file__).parent / "data"
PROMPT = r"\] >>>"          # the end of the prompt line; prompt-toolkit draws the space after it as a move
# prompt-toolkit redraws the prompt line on every key; it turns bracketed paste off once a line is
# accepted, so the next prompt drawn after that is the new one. Plain (dumb) terminals draw it once.
ACCEPTED = "\x1b[?2004l"
ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[@-Z\\-_])")

THOUGHT_AND_ANSWER = 'root ::= "deep inner musing" </think> "plain visible answer"'
# Words with no end the model may stop at before 1000 of them: longer than any test waits.
ENDLESS = 'root ::= word+\nword ::= [a-z]{2,6} " "'   # ends only at a limit: never before a test's Ctrl-C


def plain(text: str) -> str:
    """What a person reads: the output without terminal control sequences and carriage returns."""
    return ANSI.sub("", text).replace("\r", "")


class Terminal:
    """`localcascade run` in an 80x24 pty, with helpers that wait for the prompt."""

    def __init__(self, tmp_path: Path, model: Path, *args: str, term: str = "xterm-256color",
                 no_color: bool = False, grammar: str | None = None, timeout: float = 60) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
        env.update(TERM=term, PROMPT_TOOLKIT_NO_CPR="1", COLUMNS="80", LINES="24")
        if no_color:
            env["NO_COLOR"] = "1"
        argv = ["-m", "localcascade", "run", "--model", str(model), "--seed", "1", *args]
        if grammar is not None:
            grammar_file = tmp_path / f"grammar-{abs(hash(grammar))}.gbnf"
            grammar_file.write_text(grammar + "\n")
            argv += ["--grammar-file", str(grammar_file)]
        self.fancy = term != "dumb"
        self.transcript = io.StringIO()
        self.child = pexpect.spawn(sys.executable, argv, env=env, cwd=str(tmp_path), encoding="utf-8",
                                   dimensions=(24, 80), timeout=timeout)
        self.child.logfile_read = self.transcript
        self.child.expect(PROMPT)

    def wait_prompt(self, prompt: str = PROMPT) -> None:
        """Wait for the next prompt after the line just entered."""
        if self.fancy:
            self.child.expect_exact(ACCEPTED)
        self.child.expect(prompt)

    def send(self, line: str, prompt: str = PROMPT) -> str:
        """Type a line and press Enter; returns what appeared until the next prompt, as a person reads it."""
        start = self.transcript.tell()
        self.child.sendline(line)
        self.wait_prompt(prompt)
        return plain(self.transcript.getvalue()[start:])

    def prompt_line(self) -> str:
        """The last prompt line drawn."""
        text = plain(self.transcript.getvalue())
        return text[text.rindex("[think"):].split(">>>")[0] + ">>>"

    def exit_status(self) -> int:
        self.child.expect(pexpect.EOF)
        self.child.close()
        return self.child.exitstatus

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)


@pytest.fixture
def terminal(tmp_path, tiny_model):
    opened: list[Terminal] = []

    def open_terminal(*args: str, **kwargs) -> Terminal:
        term = Terminal(tmp_path, tiny_model, *args, **kwargs)
        opened.append(term)
        return term

    yield open_terminal
    for term in opened:
        term.close()


def test_think_toggle_changes_the_prompt_line_and_the_rendered_prompt(terminal):
    # The grammar spells a thought, </think>, then an answer: with thinking on, the prompt left
    # <think> open, so the first part is thinking; with thinking off it is all answer.
    term = terminal("--think", "--trace", "show", "--max-tokens", "40", grammar=THOUGHT_AND_ANSWER)
    assert term.prompt_line() == "[think on · trace show] >>>"
    assert "next reply opens with: '<|im_end|>\\n<|im_start|>assistant\\n<think>\\n'" in term.send("/info")
    term.send("hello")
    stats_on = term.send("/stats")
    assert re.search(r"[1-9]\d* thinking \+ [1-9]\d* answer tokens", stats_on), stats_on

    assert "thinking off" in term.send("/think off")
    assert term.prompt_line() == "[think off · trace show] >>>"
    assert "next reply opens with: '<|im_end|>\\n<|im_start|>assistant\\n<think></think>'" in term.send("/info")
    reply = term.send("hello again")
    assert "Thinking" not in reply and "thought for" not in reply
    assert "deep inner musing" in reply        # the same words, now the answer
    assert re.search(r" 0 thinking \+ [1-9]\d* answer tokens", term.send("/stats"))

    term.send("/think on")
    assert term.prompt_line() == "[think on · trace show] >>>"
    term.child.sendline("/bye")
    assert term.exit_status() == 0


def test_trace_show_hide_collapse_and_last(terminal):
    term = terminal("--think", "--trace", "show", "--max-tokens", "40", grammar=THOUGHT_AND_ANSWER)
    shown = term.send("first question")
    assert "Thinking" in shown and "deep inner musing" in shown and "plain visible answer" in shown
    assert re.search(r"\(thought for \d+ tokens, \d+\.\d s\)", shown)
    assert shown.index("deep inner musing") < shown.index("plain visible answer")

    term.send("/clear")
    term.send("/trace hide")
    assert term.prompt_line() == "[think on · trace hide] >>>"
    hidden = term.send("first question")
    assert "plain visible answer" in hidden
    assert "deep inner musing" not in hidden and "Thinking" not in hidden and "thought for" not in hidden

    term.send("/trace collapse")
    assert term.prompt_line() == "[think on · trace collapse] >>>"
    collapsed = term.send("second question")
    assert "plain visible answer" in collapsed and "deep inner musing" not in collapsed
    assert re.search(r"thought for \d+ tokens, \d+\.\d s \(/trace last shows it\)", collapsed)

    expanded = term.send("/trace last")
    assert "deep inner musing" in expanded and "plain visible answer" not in expanded
    term.child.sendcontrol("d")
    assert term.exit_status() == 0


def test_ctrl_c_stops_a_long_reply_keeps_it_and_the_next_message_works(terminal, tmp_path):
    term = terminal("--no-think", "--max-tokens", "100000", grammar=ENDLESS)
    term.child.sendline("tell me a very long story")
    term.child.expect_exact(ACCEPTED)
    term.child.expect(r"([a-z]{2,6} ){4}")         # the endless reply is streaming
    term.child.sendintr()
    term.child.expect(r"reply stopped; what was said is kept")
    term.child.expect(PROMPT)
    # The interrupted reply counts: /stats shows it, and the session totals include it.
    stats = term.send("/stats")
    assert re.search(r"0 thinking \+ [1-9]\d* answer tokens .*stopped: interrupted", stats), stats
    generated = int(re.search(r"session: 1 replies, \d+ prompt tokens evaluated, (\d+) generated", stats)[1])
    assert generated > 4 and re.search(r"context: \d{2,}/4096", stats)

    term.send("/set max_tokens 5")
    after = term.send("and now briefly")
    assert re.search(r"reply 5 tok at [\d.]+ t/s · context \d+/4096", after), after
    assert "session: 2 replies" in term.send("/stats")
    assert "saved 4 messages" in term.send("/save chat.json")
    messages = json.loads((tmp_path / "chat.json").read_text())["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert len(messages[1]["content"]) > 5        # the interrupted reply is in the history
    term.child.sendline("/bye")
    assert term.exit_status() == 0


def test_save_then_load_and_continue(terminal, tmp_path):
    term = terminal("--no-think", "--max-tokens", "20", grammar='root ::= "fine thanks"')
    assert "fine thanks" in term.send("hello")
    assert "saved 2 messages" in term.send("/save first.json")
    saved = json.loads((tmp_path / "first.json").read_text())
    assert saved["messages"] == [{"role": "user", "content": "hello"},
                                 {"role": "assistant", "content": "fine thanks"}]
    assert "new conversation" in term.send("/clear")
    assert "no reply yet" not in term.send("/stats")      # stats are the session's, /clear keeps them
    assert "loaded 2 messages (1 turns)" in term.send("/load first.json")
    assert "fine thanks" in term.send("and you?")
    term.send("/save second.json")
    continued = json.loads((tmp_path / "second.json").read_text())["messages"]
    assert continued[:2] == saved["messages"]
    assert continued[2:] == [{"role": "user", "content": "and you?"},
                             {"role": "assistant", "content": "fine thanks"}]
    assert "conversation file missing.json not found" in term.send("/load missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    assert "not a saved conversation" in term.send("/load bad.json")
    term.child.sendline("/bye")
    assert term.exit_status() == 0


def test_unknown_commands_and_bad_values_get_a_hint_not_a_crash(terminal):
    term = terminal("--no-think", "--max-tokens", "5")
    assert "unknown command /thnik; did you mean /think?" in term.send("/thnik on")
    assert "unknown command /sve; did you mean /save?" in term.send("/sve x.json")
    assert "/trace takes show, hide, collapse or last" in term.send("/trace sideways")
    assert "temp takes a number from 0 to 2, not 'hot'" in term.send("/set temp hot")
    # The limits are GenerationOptions' own, the ones `ask --temp` and a server request meet, in /set's words.
    assert "temp takes a number from 0 to 2, not 3.0" in term.send("/set temp 3")
    assert "top_p takes a number above 0, at most 1, not 0.0" in term.send("/set top_p 0")
    assert "did you mean temp?" in term.send("/set tmp 0.5")
    assert "cannot read token count" in term.send("/budget lots")
    assert "temp = 0.5" in term.send("/set temp 0.5")
    assert "thinking budget 2048 tokens" in term.send("/budget 2K")
    helped = term.send("/help")
    for name in ("/think", "/trace", "/budget", "/system", "/set", "/clear", "/save", "/load",
                 "/stats", "/info", "/help", "/bye"):
        assert name in helped
    assert "Traceback" not in term.transcript.getvalue()
    term.child.sendline("/bye")
    assert term.exit_status() == 0


def test_a_full_context_is_warned_about_and_an_overflow_keeps_the_history(terminal, tmp_path):
    term = terminal("--ctx", "256", "--no-think", "--max-tokens", "240", grammar=ENDLESS)
    nearly_full = term.send("hello")
    assert re.search(r"context 9\d% full \(\d+/256\): /save FILE then /clear", nearly_full), nearly_full
    overflow = term.send("tell me " + "about the sea and the sky " * 40)
    assert re.search(r"the prompt is \d+ tokens but the context holds 256", overflow), overflow
    assert "nothing was dropped" in overflow
    term.send("/save kept.json")
    kept = json.loads((tmp_path / "kept.json").read_text())["messages"]
    assert [m["content"] for m in kept if m["role"] == "user"] == ["hello"]
    term.send("/clear")
    term.send("/set max_tokens 5")
    assert re.search(r"reply 5 tok .* context \d+/256", term.send("a fresh start"))
    term.child.sendline("/bye")
    assert term.exit_status() == 0


def test_system_prompt_and_multiline_input_reach_the_conversation(terminal, tmp_path):
    term = terminal("--no-think", "--max-tokens", "4", grammar='root ::= "ok"')
    assert "system prompt set" in term.send("/system Answer like a pirate.")
    assert "Answer like a pirate." in term.send("/system")
    term.send('"""first line', prompt=r"\.\.\.")
    term.send('second line"""')
    term.child.send("alpha")
    term.child.send("\x1b\r")                  # Alt-Enter (Esc Enter): a new line, not "send"
    term.send("beta")
    term.send("/save chat.json")
    messages = json.loads((tmp_path / "chat.json").read_text())["messages"]
    assert messages[0] == {"role": "system", "content": "Answer like a pirate."}
    users = [m["content"] for m in messages if m["role"] == "user"]
    assert users == ["first line\nsecond line", "alpha\nbeta"]
    term.child.sendline("/bye")
    assert term.exit_status() == 0
    history = (Path(os.environ["LOCALCASCADE_HOME"]) / "history").read_text()
    assert "/system Answer like a pirate." in history


def test_tab_completes_slash_commands(terminal):
    term = terminal("--think", "--max-tokens", "5")
    term.child.send("/thi\t")
    term.child.send(" of\t")
    term.send("")
    assert term.prompt_line() == "[think off · trace collapse] >>>"
    term.child.sendline("/bye")
    assert term.exit_status() == 0


def test_ctrl_c_at_an_empty_prompt_warns_then_a_second_exits_0(terminal):
    term = terminal("--no-think")
    term.child.sendintr()
    term.child.expect(r"Ctrl-C again, Ctrl-D or /bye to leave")
    term.child.expect(PROMPT)
    term.child.sendintr()
    assert term.exit_status() == 0


def test_ctrl_d_exits_0(terminal):
    term = terminal("--no-think")
    term.child.sendcontrol("d")
    assert term.exit_status() == 0


def test_dumb_terminal_with_no_color_gets_no_escape_codes(terminal):
    term = terminal("--think", "--trace", "show", "--max-tokens", "40", term="dumb", no_color=True,
                    grammar=THOUGHT_AND_ANSWER)
    start = term.transcript.tell()
    term.send("hello")
    term.send("/trace collapse")
    term.send("again")
    term.child.sendline("/bye")
    assert term.exit_status() == 0
    session = term.transcript.getvalue()[start:]
    assert "\x1b" not in session
    assert "deep inner musing" in session and "plain visible answer" in session
    assert "thought for" in session and "context" in session
    assert max(len(line) for line in session.replace("\r", "").split("\n")) <= 80


def test_no_color_on_a_real_terminal_writes_no_escape_codes_outside_the_input_line(terminal):
    term = terminal("--think", "--trace", "show", "--max-tokens", "40", no_color=True,
                    grammar=THOUGHT_AND_ANSWER)
    # Plan, load progress and banner: everything before prompt-toolkit draws its first input line.
    opening = term.transcript.getvalue()
    banner_end = opening.index("leave.") + len("leave.")
    assert "\x1b" not in opening[:banner_end], repr(opening)
    replies = []
    for line in ("hello", "/trace collapse", "again", "/stats"):
        start = term.transcript.tell()
        term.send(line)
        # What is printed between accepting the line and drawing the next prompt.
        output = term.transcript.getvalue()[start:]
        replies.append(output.split(ACCEPTED, 1)[1].split("\x1b[?2004h", 1)[0])
    for reply in replies:
        assert "\x1b" not in reply, repr(reply)
    assert "deep inner musing" in replies[0] and "plain visible answer" in replies[0]
    assert "thought for" in replies[2] and "plain visible answer" in replies[2]
    assert "session: 2 replies" in replies[3]
    term.child.sendline("/bye")
    assert term.exit_status() == 0


def test_the_plan_is_printed_before_loading_and_bad_flags_are_one_line_errors(tmp_path, tiny_model):
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    result = subprocess.run(
        [sys.executable, "-m", "localcascade", "run", "--model", str(tiny_model), "--no-think"],
        input="/stats\n/bye\n", capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    plan_lines = [line for line in result.stderr.splitlines() if line.startswith("localcascade: ")]
    assert re.search(r"context \d+K?, .*RAM", plan_lines[0]) and "flash attention" in plan_lines[1]
    assert "context: 0/" in result.stdout

    bad = subprocess.run(
        [sys.executable, "-m", "localcascade", "run", "--model", str(tiny_model), "--trace", "loud"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert bad.returncode == 2 and "--trace takes show, hide or collapse" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_piped_session_prints_replies_without_prompt_chrome(tmp_path, tiny_model):
    import subprocess

    grammar_file = tmp_path / "grammar.gbnf"
    grammar_file.write_text(THOUGHT_AND_ANSWER + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM", "COLUMNS")}
    result = subprocess.run(
        [sys.executable, "-m", "localcascade", "run", "--model", str(tiny_model), "--seed", "1",
         "--max-tokens", "40", "--grammar-file", str(grammar_file)],
        input='hello\n"""first\nsecond"""\n/stats\n/bye\n', capture_output=True, text=True, env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert ">>>" not in out and "... " not in out and "[think" not in out
    assert out.endswith("\n")
    lines = out.splitlines()
    # The banner is one line: whatever shows the output wraps it, not localcascade at 80 columns.
    assert lines[0].endswith("Ctrl-D or /bye to leave."), lines[0]
    assert lines.count("plain visible answer") == 2, out        # each reply on a line of its own
    assert any(line.startswith("last reply: ") for line in lines)
    assert "session: 2 replies" in out


@pytest.mark.gemma
def test_a_short_session_with_gemma(tmp_path, gemma_model):
    term = Terminal(tmp_path, gemma_model, "--no-think", "--max-tokens", "24", "--temp", "0", "--ctx", "2K",
                    "--chat-template", str(DATA / "gemma_chat_template.jinja"), timeout=90)
    try:
        reply = term.send("What is the capital of France? Answer in one sentence.")
        words = reply.split("\n", 1)[1]          # after the echoed question
        assert re.search(r"[A-Za-z]{3,} [A-Za-z]{2,}", words), reply
        assert re.search(r"reply \d+ tok at [\d.]+ t/s · context \d+/\d+", reply)
        follow_up = term.send("And of Italy?")
        assert re.search(r"context \d+/\d+", follow_up)
        assert "gemma" in term.send("/info").lower()
        term.child.sendline("/bye")
        assert term.exit_status() == 0
    finally:
        term.close()


def test_with_no_model_pulled_run_says_what_to_do_in_one_line():
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    result = subprocess.run([sys.executable, "-m", "localcascade", "run"], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode != 0
    assert "no model pulled" in result.stderr and "Traceback" not in result.stderr
    assert "localcascade pull" in result.stderr or "localcascade fit" in result.stderr


def test_a_reply_cut_off_before_its_stats_still_counts_in_the_session():
    # A second Ctrl-C raises inside the engine, which then yields no TurnStats; the reply is in the
    # history and the context grew, so /stats and the session totals must include it anyway.
    from rich.console import Console

    from localcascade.engine.events import AnswerText
    from localcascade.repl.commands import run_command
    from localcascade.repl.loop import stream_reply
    from localcascade.repl.state import ReplState

    class Engine:
        model_name = "fake"

        @staticmethod
        def count_tokens(text: str) -> int:
            return len(text.split())

    class Chat:
        def __init__(self):
            self.messages, self.context_used, self.context_limit = [], 0, 4096

        def send(self, text, options):
            self.messages.append({"role": "user", "content": text})
            self.context_used = 20                    # the prompt was evaluated
            yield AnswerText("three words here")
            self.messages.append({"role": "assistant", "content": "three words here"})
            self.context_used = 23
            raise KeyboardInterrupt

    state = ReplState(engine=Engine(), chat=Chat())
    out = io.StringIO()
    stream_reply(Console(file=out, width=80), state, "hello")
    assert "reply stopped; what was said is kept" in out.getvalue()
    lines = [notice.text for notice in run_command(state, "/stats").notices]
    assert "0 thinking + 3 answer tokens" in lines[1] and "stopped: interrupted" in lines[1], lines
    assert lines[0].startswith("last reply: 20 prompt tokens (20 evaluated)"), lines
    assert lines[2].startswith("session: 1 replies, 20 prompt tokens evaluated, 3 generated"), lines


class _SavedChat:
    """Enough of a Chat for /save and /load."""

    messages = [{"role": "user", "content": "hello"}]

    def to_dict(self):
        return {"format": "localcascade-chat", "version": 1, "messages": self.messages}


def _notices(state, line: str) -> list[tuple[str, str]]:
    from localcascade.repl.commands import run_command

    return [(notice.kind, notice.text) for notice in run_command(state, line).notices]


def test_save_refuses_to_overwrite_and_save_bang_replaces(tmp_path, monkeypatch):
    from localcascade.repl.state import ReplState

    monkeypatch.chdir(tmp_path)
    state = ReplState(engine=None, chat=_SavedChat())
    (tmp_path / "notes.txt").write_text("my notes\n")

    assert _notices(state, "/save notes.txt") == [
        ("error", "notes.txt already exists: /save! notes.txt replaces it, or /save another name")]
    assert (tmp_path / "notes.txt").read_text() == "my notes\n"

    assert _notices(state, "/save! notes.txt") == [("info", "saved 1 message to notes.txt")]
    assert json.loads((tmp_path / "notes.txt").read_text())["messages"] == _SavedChat.messages
    assert any(text.startswith("/save! FILE ") for _, text in _notices(state, "/help"))


def test_a_file_command_that_fails_is_one_line_and_the_chat_goes_on(tmp_path, monkeypatch):
    from localcascade.repl.state import ReplState

    state = ReplState(engine=None, chat=_SavedChat())
    folder = tmp_path / "dir"
    folder.mkdir()
    for line in (f"/save {folder}", f"/save! {folder}"):
        assert _notices(state, line) == [("error", f"cannot save to {folder}: it is a folder; name a file in it")]
    assert _notices(state, f"/load {folder}") == [("error", f"conversation file {folder} is a folder, not a regular file")]
    assert _notices(state, "/save a\0b") == [("error", "/save failed: embedded null byte")]
    escaped = tmp_path / "escaped.json"     # JSON can spell a lone surrogate, which no tokenizer takes
    escaped.write_text('{"format": "localcascade-chat", "version": 1, "messages": '
                       '[{"role": "user", "content": "\\udcff"}]}')
    assert _notices(state, f"/load {escaped}") == [
        ("error", f"{escaped} is not a saved conversation (its text is not valid Unicode)")]
    escaped.unlink()

    def read_only(*args):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "replace", read_only)  # a read-only folder, which root could still write
    monkeypatch.setattr(os, "link", read_only)
    target = tmp_path / "x.json"
    assert _notices(state, f"/save {target}") == [("error", f"cannot save to {target}: Read-only file system")]
    assert [p.name for p in tmp_path.iterdir()] == ["dir"]  # no temporary file left


def _piped_run(model: Path, data: bytes, tmp_path: Path, **kwargs):
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    return subprocess.run([sys.executable, "-m", "localcascade", "run", "--model", str(model), "--no-think"],
                          input=data, capture_output=True, env=env, cwd=str(tmp_path), timeout=60, **kwargs)


def test_piped_bytes_that_are_not_utf8_are_refused_line_by_line(tmp_path, tiny_model):
    result = _piped_run(tiny_model, b"hi \xff\n/system \xfe\n/stats\n", tmp_path)

    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, err
    assert "Traceback" not in err
    lines = out.splitlines()
    assert "error: that input was not sent: byte 0xff is not UTF-8 (the chat takes UTF-8 text)" in lines
    assert "error: that input was not sent: byte 0xfe is not UTF-8 (the chat takes UTF-8 text)" in lines
    assert "session: 0 replies, 0 prompt tokens evaluated, 0 generated" in lines   # the chat went on


def test_input_ending_inside_a_multiline_block_is_reported_not_dropped(tmp_path, tiny_model):
    result = _piped_run(tiny_model, b'/stats\n"""\nfirst\nsecond\n', tmp_path)

    err = result.stderr.decode()
    assert result.returncode == 1
    assert err.splitlines()[-1] == ('localcascade: the input ended inside a """ block (2 lines), which was not '
                                    'sent; close the block with """ to send it')
    assert "no reply yet" in result.stdout.decode()


@pytest.mark.parametrize("how", ["closed", "devnull"])
def test_run_with_no_input_to_read_is_one_line_before_loading(tmp_path, tiny_model, how):
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    extra = {"preexec_fn": lambda: os.close(0)} if how == "closed" else {}
    result = subprocess.run([sys.executable, "-m", "localcascade", "run", "--model", str(tiny_model)],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=60,
                            **extra)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "localcascade: standard input is closed (or /dev/null) and the chat reads its messages from it: "
        "run it from a terminal or pipe the messages in (`localcascade ask` answers one prompt)"]
    assert result.stdout == ""
