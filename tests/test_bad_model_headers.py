"""Model files whose header is readable but wrong: every command refuses them in one line, exit 1,
before llama.cpp sees them (llama.cpp aborts the whole process on some of these values)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from gguf.constants import GGUFValueType
from gguf.gguf_writer import GGUFValue

import synth
from localcascade.errors import GGUFHeaderError
from localcascade.model.gguf_header import read_header
from localcascade.model.facts import facts_from_header

ARCH = "nemotron_h_moe"
DROP = object()


def write_tiny(path: Path, **changes) -> Path:
    """The TINY test model with some header keys changed: ``key=value`` (``key`` without a
    ``general.``/``tokenizer.`` prefix is ``nemotron_h_moe.key``; write dots as ``__``), DROP deletes."""
    original = synth._add_metadata

    def patched(writer, *args, **kwargs):
        original(writer, *args, **kwargs)
        for name, value in changes.items():
            key = name.replace("__", ".")
            key = key if key.startswith(("general.", "tokenizer.")) else f"{ARCH}.{key}"
            if value is DROP:
                writer.kv_data[0].pop(key, None)
            elif isinstance(value, str):
                writer.kv_data[0][key] = GGUFValue(value, GGUFValueType.STRING)
            elif isinstance(value, float):
                writer.kv_data[0][key] = GGUFValue(value, GGUFValueType.FLOAT32)
            elif isinstance(value, list):
                sub = GGUFValueType.STRING if value and isinstance(value[0], str) else GGUFValueType.UINT32
                writer.kv_data[0][key] = GGUFValue(value, GGUFValueType.ARRAY, sub)
            else:
                writer.kv_data[0][key] = GGUFValue(value, GGUFValueType.UINT32)

    synth._add_metadata = patched
    try:
        return synth.write_nemotron_h_moe(path, synth.TINY)
    finally:
        synth._add_metadata = original


def localcascade(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "localcascade", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=120)


def assert_one_line(result: subprocess.CompletedProcess, code: int, message: str) -> None:
    assert result.returncode == code, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stdout + result.stderr and "GGML_ASSERT" not in result.stdout


@pytest.fixture(scope="module")
def too_many_used(tmp_path_factory) -> Path:
    return write_tiny(tmp_path_factory.mktemp("bad") / "expused.gguf", expert_used_count=100)


# -- H2: hyperparameters llama.cpp asserts on -------------------------------------------------------------

TOO_MANY_USED = f"key {ARCH}.expert_used_count is 100, more than the 8 experts of {ARCH}.expert_count; " \
                "llama.cpp cannot load this file"


@pytest.mark.parametrize("command", [
    ["fit", "{model}"],
    ["show", "{model}"],
    ["ask", "-m", "{model}", "--no-think", "hi"],
    ["run", "{model}", "--no-think"],
    ["bench", "{model}", "-r", "1", "-p", "8", "-n", "4"],
    ["quantize", "{model}", "--to", "Q8_0", "--out", "{out}"],
], ids=lambda c: c[0])
def test_every_command_refuses_more_experts_used_than_there_are(command, too_many_used, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result = localcascade(*[a.format(model=too_many_used, out=out / "q.gguf") for a in command], stdin="hi\n")
    assert_one_line(result, 1, f"{too_many_used}: {TOO_MANY_USED}")
    assert result.stdout == ""
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("changes, message", [
    (dict(expert_count=0), f"key {ARCH}.expert_used_count is 2 but {ARCH}.expert_count is 0: there are no experts"),
    (dict(expert_count=DROP), f"key {ARCH}.expert_used_count is 2 but {ARCH}.expert_count is missing"),
    (dict(expert_count=2000), f"key {ARCH}.expert_count is 2000, more than the 1024 llama.cpp supports"),
    (dict(expert_used_count=0), f"key {ARCH}.expert_used_count is 0 (or missing): a model with 8 experts"),
    (dict(expert_used_count=[2] * 13 + [9]), f"key {ARCH}.expert_used_count is 9, more than the 8 experts"),
    (dict(expert_group_count=8), f"key {ARCH}.expert_group_count is 8, not fewer than the 8 experts"),
    (dict(expert_group_count=3), f"the 8 experts do not divide into {ARCH}.expert_group_count 3 groups"),
    (dict(expert_group_count=4), f"key {ARCH}.expert_group_used_count is 0, expected 1 to 3 for 4 expert groups"),
    (dict(block_count=0), f"key {ARCH}.block_count is 0, expected 1 to 512"),
    (dict(block_count=600), f"key {ARCH}.block_count is 600, expected 1 to 512"),
    (dict(nextn_predict_layers=20), f"key {ARCH}.nextn_predict_layers is 20, more than the 14 layers"),
    (dict(rope__scaling__type="foo"), f"key {ARCH}.rope.scaling.type is 'foo', not one of none, linear, yarn"),
    (dict(ssm__group_count=0), f"key {ARCH}.ssm.group_count is 0 and the Mamba-2 layers divide by it"),
    # n_ff / n_expert_used with a zero: llama.cpp dies of SIGFPE.
    (dict(expert_used_count=[2, 0] + [2] * 12, expert_feed_forward_length=DROP),
     f"layer 1 has a feed-forward block but {ARCH}.expert_used_count 0 and no {ARCH}.expert_feed_forward_length"),
])
def test_headers_llama_cpp_would_abort_on_are_refused_when_read(changes, message, tmp_path):
    path = write_tiny(tmp_path / "bad.gguf", **changes)
    with pytest.raises(GGUFHeaderError) as info:
        read_header(path)
    assert str(info.value).startswith(f"{path}: {message}")
    assert str(info.value).endswith("; llama.cpp cannot load this file")


def test_a_per_layer_expert_count_is_planned_by_its_largest_value(tmp_path):
    path = write_tiny(tmp_path / "puzzle.gguf", expert_used_count=[2] * 13 + [4])
    assert facts_from_header(read_header(path)).n_expert_used == 4


# -- M2: values of the wrong type ---------------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    (dict(context_length="abc"), f"key {ARCH}.context_length has type string, expected an integer"),
    (dict(context_length=4096.0), f"key {ARCH}.context_length has type float, expected an integer"),
    (dict(block_count="14"), f"key {ARCH}.block_count has type string, expected an integer"),
    (dict(embedding_length="64"), f"key {ARCH}.embedding_length has type string, expected an integer"),
    (dict(expert_count=[8, 8]), f"key {ARCH}.expert_count has type array, expected an integer"),
    (dict(feed_forward_length="x"),
     f"key {ARCH}.feed_forward_length has type string, expected an integer or an array of integers"),
    (dict(attention__head_count_kv=["a"] * 14),
     f"key {ARCH}.attention.head_count_kv has type string, expected an integer or an array of integers"),
    (dict(**{"general.architecture": 5}), "key general.architecture has type integer, expected a string"),
])
def test_a_value_of_the_wrong_type_names_the_key(changes, message, tmp_path):
    path = write_tiny(tmp_path / "typed.gguf", **changes)
    with pytest.raises(GGUFHeaderError, match="^" + str(path)) as info:
        read_header(path)
    assert str(info.value) == f"{path}: {message}"


@pytest.mark.parametrize("command", ["fit", "show"])
def test_fit_and_show_name_the_mistyped_key(command, tmp_path):
    path = write_tiny(tmp_path / "ctxstr.gguf", context_length="abc")
    assert_one_line(localcascade(command, str(path)), 1,
                    f"localcascade: {path}: key {ARCH}.context_length has type string, expected an integer\n")


# -- L1: a broken model file is exit 1, not a usage error -------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    (dict(block_count=DROP), f"the header has no {ARCH}.block_count"),
    (dict(feed_forward_length=[32, 0]), f"key {ARCH}.feed_forward_length has 2 entries for 14 layers"),
    (dict(**{"general.architecture": "foobar"}),
     "unknown architecture 'foobar': the header has no foobar.* hyperparameters"),
])
@pytest.mark.parametrize("command", ["fit", "ask"])
def test_an_unplannable_model_file_exits_1(command, changes, message, tmp_path):
    path = write_tiny(tmp_path / "broken.gguf", **changes)
    args = [command, str(path)] if command == "fit" else [command, "-m", str(path), "hi"]
    assert_one_line(localcascade(*args), 1, f"{path}: {message}")


def test_the_tiny_model_itself_passes(tiny_model):
    facts = facts_from_header(read_header(tiny_model))
    assert (facts.n_layer, facts.n_expert, facts.n_expert_used) == (14, 8, 2)
