"""`localcascade serve` started as a real process on 127.0.0.1 (port 0), for end-to-end tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import httpx


class ServerProcess:
    def __init__(self, *args: str, env: dict | None = None, timeout: float = 120) -> None:
        # One llama.cpp thread: the test machine's cores are shared with the client and other jobs,
        # and spinning thread barriers under contention slow a tiny model down a hundredfold.
        self.args = ["serve", *args, "--port", "0", *(() if "--threads" in args else ("--threads", "1"))]
        self._home = tempfile.TemporaryDirectory(prefix="lc-serve-home-")
        self.env = {**os.environ, "LOCALCASCADE_HOME": self._home.name, **(env or {})}
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.base_url = ""
        self.stderr_lines: list[str] = []
        self.popen_kwargs: dict = {}     # e.g. preexec_fn to lower a limit of the server's
        self.python_args: list[str] = ["-m", "localcascade"]     # how the interpreter runs the CLI

    def start(self) -> "ServerProcess":
        self.proc = subprocess.Popen([sys.executable, *self.python_args, *self.args], env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **self.popen_kwargs)
        found = threading.Event()

        def read() -> None:
            for line in self.proc.stderr:
                self.stderr_lines.append(line)
                m = re.search(r"at (http://\S+/v1) ", line)
                if m:
                    self.base_url = m.group(1)
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(self.timeout) or not self.base_url:
            self.stop()
            raise RuntimeError("the server did not start:\n" + "".join(self.stderr_lines))
        return self

    @property
    def root(self) -> str:
        return self.base_url[: -len("/v1")]

    def health(self) -> dict:
        return httpx.get(self.root + "/health", timeout=10).json()

    def wait_idle(self, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status = self.health()
            if status["busy"] == 0 and status["queued"] == 0 or time.monotonic() > deadline:
                return status
            time.sleep(0.02)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._home.cleanup()
        return self.proc.returncode
