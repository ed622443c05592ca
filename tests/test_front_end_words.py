"""The layers below the front ends say no front end's words: an error about something a user sets
carries its figures, and each front end names the setting its own way (the command line: its
flag; the server: the request's terms). End to end: tests/test_ask_cli.py (a prompt past the
context), tests/test_server.py (the same, as a 400), tests/test_option_limits.py (option limits)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import localcascade
from localcascade import errors
from localcascade.cli.wording import error_line
from localcascade.server.http_errors import error_message

PACKAGE = Path(localcascade.__file__).parent
FLAG = re.compile(r"(^|[\s(])--[a-z]")


def _string_literals(path: Path):
    """Every string constant in ``path`` but docstrings, with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


# Commands a message tells the user to run are not settings of a front end.
COMMANDS = ("`localcascade ", "pip install ")


@pytest.mark.parametrize("layer", ["planning", "engine", "model", "resolve", "hardware", "store", "hub"])
def test_no_layer_below_the_front_ends_names_a_flag(layer):
    found = [f"{path.relative_to(PACKAGE)}:{line}: {text[:80]!r}"
             for path in sorted((PACKAGE / layer).rglob("*.py")) for line, text in _string_literals(path)
             if FLAG.search(text) and not any(command in text for command in COMMANDS)]
    assert not found, "flags named below the front ends: " + "; ".join(found)


def test_the_guard_sees_a_flag_in_a_message(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('"""--ctx in a docstring is fine."""\nraise ValueError(f"load with a larger --ctx")\n')
    assert [text for _, text in _string_literals(module) if FLAG.search(text)] == ["load with a larger --ctx"]


SETTINGS = [
    (errors.ContextOverflowError(prompt_tokens=300, context_tokens=256),
     "the prompt is 300 tokens but the context holds 256 (and the reply needs room too): shorten the input or "
     "load with a larger --ctx",
     "the prompt is 300 tokens but the context holds 256 (and the reply needs room too): shorten the messages"),
    (errors.ContextOverflowError(prompt_tokens=300, context_tokens=256, per_conversation=True),
     "the prompt is 300 tokens but a conversation's context holds 256 (and the reply needs room too): shorten "
     "the input or load with a larger --ctx",
     "the prompt is 300 tokens but a conversation's context holds 256 (and the reply needs room too): "
     "shorten the messages"),
    (errors.UnknownPreferenceError("fast", ("quality", "speed", "context")),
     "--prefer takes quality, speed, context, not 'fast'", None),
    (errors.ExpertLayersError(99, 14, "tiny"),
     "--cpu-moe 99 is more than the 14 layers of tiny: give 0 to 14 (14 keeps every layer's experts in RAM)", None),
    (errors.ContextPastTrainingError(524288, 262144, "tiny"),
     "--ctx 512K per conversation is more than the 256K tokens tiny was trained on: give --ctx 256K or less", None),
    (errors.NoChatTemplateError("bare.gguf"), "bare.gguf has no chat template; give one with --chat-template FILE",
     None),
    (errors.NoToolCallTokensError("m.gguf", ("<tool_call>",)),
     "m.gguf has no <tool_call> token, so it cannot call tools: --tools python needs a model trained for tool calls",
     None),
    (errors.HardwareChoiceError(), "give either --gpu (a hardware profile) or --vram (a size), not both", None),
    (errors.HardwareChoiceError("ram", "0GiB"), "--ram must be a size above zero, got '0GiB'", None),
    (errors.NameTakenError("Q4_K_M"), "cannot register a model as 'Q4_K_M': it is the name of a catalog variant; "
                                      "choose another name (--name)", None),
    (errors.NameTakenError("mine", "/m/mine.gguf"), "a model named 'mine' is already registered (/m/mine.gguf); "
                                                    "choose another name (--name), or replace it (--force)", None),
    (errors.BenchSizeError(0, 0), "give a positive prompt (-p) or generation (-n) token count", None),
    (errors.BenchSizeError(512, 128, 256), "the context (256 tokens) is smaller than the test; raise --ctx", None),
]


@pytest.mark.parametrize("err, cli, server", SETTINGS, ids=[type(e).__name__ for e, *_ in SETTINGS])
def test_each_front_end_names_the_setting_its_own_way(err, cli, server):
    assert error_line(err) == cli
    # The error itself, and the server (which has no flags), say it without a flag.
    assert not FLAG.search(str(err)) and not FLAG.search(error_message(err))
    if server is not None:
        assert error_message(err) == server
