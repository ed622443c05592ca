"""Option values past what a machine or a model can have: one line and exit 2, before any work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from localcascade.errors import UsageError
from localcascade.units import parse_size, parse_tokens


def localcascade(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "localcascade", *args], capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"), stdin=subprocess.DEVNULL, timeout=120)


def assert_usage_error(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr == f"localcascade: {message}\n"
    assert result.stdout == ""


@pytest.mark.parametrize("option", ["--vram", "--ram", "--gpu-overhead", "--gpu-margin"])
def test_fit_refuses_sizes_above_a_petabyte(option):
    assert_usage_error(localcascade("fit", option, "99999999999999999999999TiB"),
                       "size '99999999999999999999999TiB' is larger than 1 PiB: write it like 24GiB, 16GB or 512MiB")


def test_a_digit_string_too_long_for_a_float_is_a_usage_error_not_an_overflow():
    digits = "9" * 400
    with pytest.raises(UsageError, match=r"^size '9{40}\.\.\.' is larger than 1 PiB"):
        parse_size(digits)
    with pytest.raises(UsageError, match=r"^token count '9{40}\.\.\.' is too large: at most 2147483647"):
        parse_tokens(digits)
    assert parse_size("1024TiB") == 1024**5
    assert parse_tokens("2047M") == 2047 * 1024**2


def test_cpu_moe_beyond_the_models_layers_is_refused_before_loading(tiny_model):
    # 99999 would have become 99999 tensor-override regexes and a half-minute load.
    assert_usage_error(
        localcascade("ask", "-m", str(tiny_model), "--cpu-moe", "99999", "--no-think", "hi"),
        "--cpu-moe 99999 is more than the 14 layers of Nemotron Cascade 2 synthetic (tiny): give 0 to 14 "
        "(14 keeps every layer's experts in RAM)")


# --- generation options: one set of limits, checked where GenerationOptions is built ----------------

OUTSIDE = [("temperature", 3.0, "a number from 0 to 2"), ("temperature", float("nan"), "a number from 0 to 2"),
           ("top_p", 0.0, "a number above 0, at most 1"), ("min_p", 1.5, "a number from 0 to 1"),
           ("top_k", -1, "a whole number from 0 (no top-k) to 2147483647"),
           ("max_tokens", 0, "a whole number from 1 to 2147483647"),
           ("max_tokens", 2**31, "a whole number from 1 to 2147483647"),
           ("think_budget", -2, "a whole number from 0 to 2147483647"), ("seed", 1.5, "a whole number"),
           ("max_tokens", True, "a whole number from 1 to 2147483647")]


@pytest.mark.parametrize("field, value, accepted", OUTSIDE, ids=[f"{f}={v!r}" for f, v, _ in OUTSIDE])
def test_generation_options_check_their_limits_however_they_are_built(field, value, accepted):
    from dataclasses import replace

    from localcascade.engine.session import GenerationOptions
    from localcascade.errors import OptionError

    with pytest.raises(OptionError) as made:
        GenerationOptions(**{field: value})
    assert (made.value.field, made.value.accepted) == (field, accepted) and made.value.exit_code == 2
    with pytest.raises(OptionError):
        replace(GenerationOptions(), **{field: value})      # the chat's /set builds its options so
    assert GenerationOptions(temperature=0.0, top_p=1.0, min_p=0.0, top_k=0, max_tokens=1, think_budget=0,
                             seed=-5).temperature == 0.0      # the bounds themselves are inside


@pytest.mark.parametrize("flag, value, message", [
    ("--temp", "3", "--temp takes a number from 0 to 2, not 3.0"),
    ("--top-p", "0", "--top-p takes a number above 0, at most 1, not 0.0"),
    ("--max-tokens", "0", "--max-tokens takes a whole number from 1 to 2147483647, not 0"),
    ("--think-budget", "-1", "--think-budget takes a whole number from 0 to 2147483647, not -1"),
])
def test_the_command_line_names_its_flag_before_loading(tiny_model, flag, value, message):
    assert_usage_error(localcascade("ask", "-m", str(tiny_model), flag, value, "hi"), message)
