"""What `kill`, `timeout`, systemd and a closed terminal (SIGTERM, SIGHUP) leave behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_quantize_removes_its_work_folder(tiny_f16_model, tmp_path, sig):
    tmp_path = tmp_path / "work"
    tmp_path.mkdir()
    out = tmp_path / "out.gguf"
    proc = subprocess.Popen(
        [sys.executable, "-m", "localcascade", "quantize", str(tiny_f16_model), "--to", "IQ4_XS", "--out", str(out)],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ.copy(),
    )
    try:
        for line in proc.stderr:  # wait until the quantizer is part-way through
            if "quantizing to IQ4_XS:" in line and not line.split(":")[1].strip().startswith("0/"):
                break
        assert [p for p in tmp_path.iterdir() if p.name.endswith(".partial")], "the work folder should exist now"
        proc.send_signal(sig)
        _, rest = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, rest
    assert rest.strip().splitlines()[-1] == "localcascade: terminated"
    assert list(tmp_path.iterdir()) == []


def test_a_signal_the_parent_ignores_stays_ignored(tiny_model, tmp_path):
    """`nohup localcascade ...` (SIGHUP ignored) outlives the terminal; SIGTERM still ends it."""
    grammar = tmp_path / "endless.gbnf"
    grammar.write_text('root ::= "hello world\\n" root')   # no way out: the reply never ends on its own
    command = [sys.executable, "-m", "localcascade", "ask", "--model", str(tiny_model), "--no-think",
               "--ctx", "32K", "--grammar-file", str(grammar), "hi"]
    proc = subprocess.Popen(["bash", "-c", 'trap "" HUP; exec "$@"', "bash", *command],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    try:
        assert proc.stdout.readline() == b"hello world\n"
        proc.send_signal(signal.SIGHUP)
        with pytest.raises(subprocess.TimeoutExpired):   # a handled SIGHUP ends the reply and exits
            proc.wait(timeout=3)
        assert proc.stdout.readline() == b"hello world\n"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert err.decode().strip().splitlines()[-1] == "localcascade: terminated"
