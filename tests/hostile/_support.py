"""Helpers for the hostile-input tests: the real CLI in a child process, under limits."""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
GIB = 1024 ** 3


def limit_memory(limit_bytes: int):
    """A preexec_fn: the child's address space is capped, so a defect cannot take the machine down."""
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return apply


def cli(*args: str, stdin: bytes | str | None = b"", timeout: float = 120, memory: int | None = 4 * GIB,
        env: dict | None = None, cwd: str | Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run ``localcascade ARGS`` as a user would; text output, memory-capped, time-limited."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    if isinstance(stdin, str):
        stdin = stdin.encode()
    result = subprocess.run([sys.executable, "-m", "localcascade", *args], input=stdin, capture_output=True,
                            env=full_env, cwd=cwd, timeout=timeout,
                            preexec_fn=limit_memory(memory) if memory else None, **kwargs)
    result.stdout = result.stdout.decode("utf-8", "replace")
    result.stderr = result.stderr.decode("utf-8", "replace")
    return result


def assert_one_line(result: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """Exit ``code`` and exactly one line on stderr that holds every fragment; no traceback, no abort."""
    lines = result.stderr.splitlines()
    assert result.returncode == code, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr and "GGML_ASSERT" not in result.stdout
    return lines[0]


def last_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else ""


@contextlib.contextmanager
def holding_lock(path: Path):
    """Hold the flock the CLI takes on ``path``, so the test decides when a waiting command goes on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def lock_waiters(path: Path) -> set[int]:
    """Pids blocked in flock(2) on ``path``, from /proc/locks ("N: -> FLOCK ADVISORY WRITE PID MAJ:MIN:INODE")."""
    inode = os.stat(path).st_ino
    waiters = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "->" and fields[2] == "FLOCK" and fields[6].endswith(f":{inode}"):
            waiters.add(int(fields[5]))
    return waiters


def wait_until_waiting(path: Path, procs: list[subprocess.Popen], timeout: float = 300) -> None:
    """Block until every process in ``procs`` waits for the lock on ``path`` (or fail, naming why)."""
    deadline = time.monotonic() + timeout
    pids = {p.pid for p in procs}
    while not pids <= lock_waiters(path):
        for proc in procs:
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"process {proc.pid} ended before reaching the lock: {err[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"processes {pids - lock_waiters(path)} never waited for {path}")
        time.sleep(0.05)


def popen_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "localcascade", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                            preexec_fn=limit_memory(4 * GIB))
