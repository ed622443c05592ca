"""Class 4: headers llama.cpp would abort on are refused by every command in one line (the corpus is
headers.json; each case names the assert it would trip in the vendored llama.cpp)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from gguf.constants import GGUFValueType
from gguf.gguf_writer import GGUFValue

import synth
from _support import HERE, assert_one_line, cli

CASES = json.loads((HERE / "headers.json").read_text())["cases"]
ARCH = "nemotron_h_moe"


def _shape(changes: dict) -> synth.NemotronShape:
    """TINY with some fields changed, past NemotronShape's own validation (which refuses these shapes)."""
    shape = object.__new__(synth.NemotronShape)
    for f in dataclasses.fields(synth.NemotronShape):
        object.__setattr__(shape, f.name, changes.get(f.name, getattr(synth.TINY, f.name)))
    return shape


def write_case(case: dict, folder: Path) -> Path:
    original = synth._add_metadata

    def patched(writer, *args, **kwargs):
        original(writer, *args, **kwargs)
        for suffix, value in case.get("keys", {}).items():
            key = f"{ARCH}.{suffix}"
            kind = GGUFValueType.STRING if isinstance(value, str) else GGUFValueType.UINT32
            writer.kv_data[0][key] = GGUFValue(value, kind)

    synth._add_metadata = patched
    try:
        return synth.write_nemotron_h_moe(folder / f"{case['name']}.gguf", _shape(case.get("shape", {})))
    finally:
        synth._add_metadata = original


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hostile-headers")
    return {case["name"]: write_case(case, folder) for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_ask_refuses_a_header_llama_cpp_aborts_on(corpus, case):
    result = cli("ask", "-m", str(corpus[case["name"]]), "--no-think", "--max-tokens", "2", "hi")
    assert result.returncode != 134, f"llama.cpp aborted: {result.stderr[-1500:]}"
    assert_one_line(result, 1, case["refused"], "llama.cpp cannot load this file" if "shape" in case else "")


@pytest.mark.parametrize("name", ["heads_not_multiple_of_kv_heads", "ssm_inner_not_divisible_by_groups"])
@pytest.mark.parametrize("command", [["show", "{model}"], ["fit", "{model}"], ["bench", "{model}"],
                                     ["quantize", "{model}", "--to", "Q8_0", "--out", "{out}"]])
def test_every_command_refuses_it_before_llama_cpp(corpus, tmp_path, name, command):
    model = corpus[name]
    args = [a.format(model=model, out=tmp_path / "out.gguf") for a in command]
    result = cli(*args)
    case = next(c for c in CASES if c["name"] == name)
    assert_one_line(result, 1, case["refused"])
    assert not (tmp_path / "out.gguf").exists()  # quantize no longer records such a file as verified
