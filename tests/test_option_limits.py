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
