"""The command line's own behaviour: version, help, and usage errors as one line with exit 2."""

import subprocess
import sys


def lc(*args):
    return subprocess.run([sys.executable, "-m", "localcascade", *args], capture_output=True, text=True,
                          timeout=60)


def test_version():
    out = lc("--version")
    assert out.returncode == 0 and out.stdout.startswith("localcascade ")


def test_bare_command_prints_the_help():
    out = lc()
    assert out.returncode == 0 and "Usage: localcascade" in out.stdout and "fit" in out.stdout


def test_usage_errors_are_one_line_with_exit_2():
    for args in (("bogus",), ("fit", "--bogus"), ("ask", "--max-tokens", "abc", "hi"),
                 ("fit", "--gpu", "no-such-card")):
        out = lc(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stdout == ""
        assert out.stderr.startswith("localcascade: ") and out.stderr.count("\n") == 1, (args, out.stderr)
        assert "Traceback" not in out.stderr
