"""Parsing the model's tool-call blocks, including what NVIDIA's Nano template renders."""

from __future__ import annotations

from pathlib import Path

import pytest

from localcascade.engine.template import ChatTemplate
from localcascade.engine.tool_calls import ToolCall, parse_tool_calls

# NVIDIA's own template, copied unchanged from llama-cpp-python 0.3.36's sdist
# (vendor/llama.cpp/models/templates/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16.jinja).
NANO_TEMPLATE = Path(__file__).parent / "data" / "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16.jinja"


def test_a_python_call_with_multiline_code():
    text = ("Let me compute.\n<tool_call>\n<function=python>\n<parameter=code>\nx = 6 * 7\nprint(x)\n"
            "</parameter>\n</function>\n</tool_call>")
    rest, calls = parse_tool_calls(text)
    assert rest == "Let me compute."
    assert calls == [ToolCall("python", {"code": "x = 6 * 7\nprint(x)"})]


def test_values_parse_as_json_when_they_do_else_stay_strings():
    text = ("<tool_call>\n<function=f>\n<parameter=n>\n42\n</parameter>\n<parameter=xs>\n[1, 2]\n</parameter>\n"
            "<parameter=s>\nhello world\n</parameter>\n</function>\n</tool_call>")
    assert parse_tool_calls(text)[1] == [ToolCall("f", {"n": 42, "xs": [1, 2], "s": "hello world"})]


def test_several_calls_and_text_around_them():
    one = "<tool_call>\n<function=a>\n</function>\n</tool_call>"
    two = "<tool_call>\n<function=b>\n<parameter=p>\nv\n</parameter>\n</function>\n</tool_call>"
    rest, calls = parse_tool_calls(f"before {one} middle {two} after")
    assert [c.name for c in calls] == ["a", "b"] and calls[1].arguments == {"p": "v"}
    assert "tool_call" not in rest and rest.startswith("before") and rest.endswith("after")


def test_text_without_calls_is_returned_unchanged():
    assert parse_tool_calls("  just an answer\n") == ("  just an answer\n", [])


def test_the_json_form_is_read_too():
    text = '<tool_call>\n{"name": "python", "arguments": {"code": "print(1)"}}\n</tool_call>'
    assert parse_tool_calls(text)[1] == [ToolCall("python", {"code": "print(1)"})]


@pytest.mark.parametrize("template_path", [NANO_TEMPLATE, Path(__file__).parent / "data" / "cascade2_chat_template.jinja"])
def test_round_trip_through_the_templates(template_path):
    """What the template renders for an assistant's tool call parses back to the same call."""
    template = ChatTemplate(template_path.read_text(), origin="test")
    code = "import math\nprint(math.comb(10, 3))"
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "python", "arguments": {"code": code}}}]},
    ]
    rendered = template.render(messages, add_generation_prompt=False, enable_thinking=True)
    last_turn = rendered.rsplit("<|im_start|>assistant\n", 1)[1]
    assert parse_tool_calls(last_turn)[1] == [ToolCall("python", {"code": code})]
