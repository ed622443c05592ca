"""Classes 3, 7 and 8 (inputs): every user-named input is a regular file or a pipe, capped in size and
never waited on forever; parsing and template rendering are bounded; names are printable; a failing
stderr does not cost the answer. Each command runs under a memory limit, so a regression fails the
test instead of taking the machine down."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from _support import GIB, HERE, assert_one_line, cli, last_line

TEMPLATES = sorted((HERE / "templates").glob("*.jinja"))
GRAMMARS = sorted((HERE / "grammars").glob("*.gbnf"))
ASK = ("ask", "--no-think", "--max-tokens", "3")


def _ask(model, *args, **kwargs):
    return cli(*ASK, "-m", str(model), *args, **kwargs)


# -- class 3: unbounded or blocking reads ---------------------------------------------------------

@pytest.mark.parametrize("option", ["--grammar-file", "--chat-template"])
def test_a_device_folder_or_endless_file_is_refused_as_input(tiny_model, tmp_path, option):
    for path, kind in (("/dev/zero", "a device"), (str(tmp_path), "a folder")):
        result = _ask(tiny_model, option, path, "hi", memory=2 * GIB)
        assert_one_line(result, 2, path, kind)
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(2 * 1024 ** 3)  # sparse: 2 GiB that costs no disk
    assert_one_line(_ask(tiny_model, option, str(big), "hi", memory=2 * GIB), 2, "larger than 1 MiB")


def test_a_fifo_nobody_writes_is_given_up(tiny_model, tmp_path):
    fifo = tmp_path / "grammar.fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    result = _ask(tiny_model, "--grammar-file", str(fifo), "hi", timeout=60)
    assert_one_line(result, 2, "is a pipe that sent nothing for 10 s")
    assert time.monotonic() - started < 40


def test_a_pipe_is_a_good_grammar_file(tiny_model):
    read, write = os.pipe()
    os.write(write, b'root ::= "yes"\n')
    os.close(write)
    try:
        result = _ask(tiny_model, "--grammar-file", f"/dev/fd/{read}", "hi", pass_fds=(read,))
    finally:
        os.close(read)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "yes"


def test_endless_stdin_stops_at_the_prompt_cap(tiny_model):
    from _support import limit_memory

    with open("/dev/zero", "rb") as zero:
        result = subprocess.run([*_python_cli(), *ASK, "-m", str(tiny_model)], stdin=zero, capture_output=True,
                                text=True, timeout=120, preexec_fn=limit_memory(2 * GIB),
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert_one_line(result, 2, "the prompt on stdin is longer than 16 MiB")


def test_the_chat_survives_loading_a_device_a_pipe_or_deep_json(tiny_model, tmp_path):
    fifo = tmp_path / "chat.fifo"
    os.mkfifo(fifo)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    script = f"/load /dev/zero\n/load {fifo}\n/load {deep}\nhi\n/bye\n"
    result = cli("run", "--model", str(tiny_model), "--no-think", "--max-tokens", "2", stdin=script,
                 memory=2 * GIB, timeout=120)
    said = result.stdout + result.stderr
    assert result.returncode == 0, said[-2000:]
    assert "conversation file /dev/zero is a device" in said
    assert "is a pipe that sent nothing" in said
    assert f"{deep} is not a saved conversation (JSON nested 100000 levels deep" in said
    assert "RecursionError" not in said and "Traceback" not in said
    assert "reply 2 tok" in said  # the conversation went on


# -- class 7: templates and grammars from strangers --------------------------------------------------

@pytest.mark.parametrize("template", TEMPLATES, ids=[t.stem for t in TEMPLATES])
def test_a_hostile_chat_template_ends_in_one_line_in_bounded_time(tiny_model, template):
    started = time.monotonic()
    result = _ask(tiny_model, "--chat-template", str(template), "hi", memory=3 * GIB, timeout=90)
    assert time.monotonic() - started < 60
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    line = last_line(result)  # after the load line: the template is rendered once the model is loaded
    assert "chat template" in line
    assert any(word in line for word in ("within", "more than", "too large", "recursion", "memory")), line


@pytest.mark.parametrize("grammar", GRAMMARS, ids=[g.stem for g in GRAMMARS])
def test_a_hostile_grammar_never_crashes_or_hangs(tiny_model, grammar):
    result = _ask(tiny_model, "--grammar-file", str(grammar), "hi", memory=3 * GIB, timeout=90)
    assert result.returncode in (0, 2), result.stderr[-2000:]  # 139 is llama.cpp's parser overflowing
    if result.returncode == 2:
        assert_one_line(result, 2)


def test_a_deeply_nested_store_index_is_one_line(tmp_path):
    from localcascade.store import index as store_index

    store_index.index_path().parent.mkdir(parents=True, exist_ok=True)
    store_index.index_path().write_text('{"models": ' + "[" * 100000 + "]" * 100000 + "}")
    assert_one_line(cli("list"), 1, "nested 100001 levels deep")


# -- class 8: names and streams -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tab\there", "new\nline", "esc\x1b[31mred", "bell\a"])
def test_names_must_be_printable(tiny_f16_model, tmp_path, name):
    result = cli("quantize", str(tiny_f16_model), "--to", "Q8_0", "--out", str(tmp_path / "o.gguf"), "--name", name)
    assert_one_line(result, 2, "printable characters")
    assert "\x1b" not in result.stderr.replace("\\x1b", "")  # the escape is shown, not sent to the terminal
    assert not (tmp_path / "o.gguf").exists()


def test_a_full_stderr_does_not_lose_the_answer(tiny_model, tmp_path):
    grammar = tmp_path / "yes.gbnf"
    grammar.write_text('root ::= "yes"\n')  # a known answer from a random-weight model
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [*_python_cli(), *ASK, "-m", str(tiny_model), "--grammar-file", str(grammar), "hi"],
            stdout=subprocess.PIPE, stderr=full, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0
    assert result.stdout.strip() == "yes"


def _python_cli():
    import sys

    return [sys.executable, "-m", "localcascade"]


def test_imatrix_that_is_not_a_file_is_named_for_what_it_is(tiny_f16_model, tmp_path):
    fifo = tmp_path / "imatrix.fifo"
    os.mkfifo(fifo)
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop")
    for path, said in ((tmp_path, "is a folder"), (fifo, "is a pipe"), (loop, "is a symbolic link loop"),
                       (tmp_path / "missing.dat", "not found")):
        result = cli("quantize", str(tiny_f16_model), "--to", "Q8_0", "--out", str(tmp_path / "o.gguf"),
                     "--imatrix", str(path))
        assert_one_line(result, 2, f"imatrix file {path} {said}")


def test_doctor_warns_when_localcascade_home_is_a_file(tmp_path):
    home = tmp_path / "home-file"
    home.write_text("not a folder")
    result = cli("doctor", env={"LOCALCASCADE_HOME": str(home)})
    assert result.returncode == 0
    assert f"warning: LOCALCASCADE_HOME {home} cannot be used: {home} is a file" in result.stderr
