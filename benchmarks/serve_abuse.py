"""`localcascade serve` under abuse from 127.0.0.1: what it holds, what it refuses, how fast it answers.

    python benchmarks/serve_abuse.py [model.gguf] [--seconds S] [--source DIR] [--only TEXT]

Default model: the tiny synthetic nemotron_h_moe (tests/synth.py TINY). ``--source`` runs the server
from another checkout (e.g. the main branch, to see the figures before the limits); the abuse is
bounded either way (every client has a timeout, every wave a count, the whole run ``--seconds`` a
phase). Traffic goes to 127.0.0.1 only. Prints, for each phase (quiet, then under each abuse):

- the server's resident memory (RSS, from /proc) before and after;
- /health latency p50 / max over probes every 0.1 s while the abuse runs (a probe that fails or
  times out after 5 s counts as 5 s), and how many failed;
- the abusive requests' outcomes (status codes, or refused/closed connections);
- bytes the server wrote to stderr.

The phases: 700,000 stop strings in one 7 MB body (x4 in parallel); 20 uploads of 8 MiB at once;
200 sockets that send nothing and 200 that trickle headers (slowloris); 600 connections opened as
fast as possible with a file-descriptor limit of 512 on the server; 200 text/plain posts from a
foreign Origin.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402
from serverproc import ServerProcess  # noqa: E402

HELLO = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
         "chat_template_kwargs": {"enable_thinking": False}}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def port_of(proc: ServerProcess) -> int:
    return int(proc.base_url.split(":")[2].split("/")[0])


class HealthProbe:
    """/health every 0.1 s on a fresh connection each time, as a monitor would."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.latencies: list[float] = []
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                ok = httpx.get(self.root + "/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                ok = False
            took = time.perf_counter() - started
            self.latencies.append(took if ok else 5.0)
            self.failed += not ok
            self._stop.wait(max(0.0, 0.1 - took))

    def __enter__(self) -> "HealthProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def post(proc, body: bytes, headers: dict, timeout: float = 30) -> str:
    try:
        return str(httpx.post(proc.base_url + "/chat/completions", content=body, headers=headers,
                              timeout=timeout).status_code)
    except httpx.TimeoutException:
        return "timeout"
    except httpx.HTTPError as err:
        return type(err).__name__


def in_threads(n: int, work, outcomes: Counter) -> None:
    lock = threading.Lock()

    def one() -> None:
        result = work()
        with lock:
            outcomes[result] += 1

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def stop_flood(proc, outcomes: Counter, seconds: float) -> None:
    body = json.dumps({**HELLO, "stop": ["abcdefg"] * 700_000}).encode()
    in_threads(4, lambda: post(proc, body, {"Content-Type": "application/json"}), outcomes)


def upload_flood(proc, outcomes: Counter, seconds: float) -> None:
    body = json.dumps({**HELLO, "pad": "x" * (8 * 1024 * 1024 - 200)}).encode()
    in_threads(20, lambda: post(proc, body, {"Content-Type": "application/json"}), outcomes)


def slowloris(proc, outcomes: Counter, seconds: float) -> None:
    socks = []
    for i in range(400):
        try:
            s = socket.create_connection(("127.0.0.1", port_of(proc)), timeout=2)
        except OSError as err:
            outcomes[f"connect {type(err).__name__}"] += 1
            continue
        if i % 2:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        socks.append(s)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(1)
        for s in socks[1::2]:
            try:
                s.sendall(b"X-Slow: 1\r\n")
            except OSError:
                pass
    for s in socks:
        s.settimeout(0.01)
        try:
            outcomes["closed by the server" if s.recv(1) == b"" else "still open"] += 1
        except socket.timeout:
            outcomes["still open"] += 1
        except OSError:
            outcomes["closed by the server"] += 1
        s.close()


def connection_flood(proc, outcomes: Counter, seconds: float) -> None:
    socks = []
    for _ in range(600):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port_of(proc)), timeout=1))
        except OSError as err:
            outcomes[f"connect {type(err).__name__}"] += 1
    time.sleep(min(seconds, 3))
    for s in socks:
        s.settimeout(0.01)
        try:
            outcomes["closed by the server" if s.recv(1) == b"" else "open"] += 1
        except socket.timeout:
            outcomes["held open"] += 1
        except OSError:
            outcomes["reset by the server"] += 1
        s.close()


def browser_posts(proc, outcomes: Counter, seconds: float) -> None:
    body = json.dumps(HELLO).encode()
    headers = {"Content-Type": "text/plain", "Origin": "http://evil.example"}
    for _ in range(200):
        outcomes[post(proc, body, headers, timeout=10)] += 1


PHASES = [("700,000 stop strings x4", stop_flood), ("20 uploads of 8 MiB", upload_flood),
          ("200 idle + 200 slow-header sockets", slowloris), ("600 connections, fd limit 512", connection_flood),
          ("200 text/plain posts from a foreign Origin", browser_posts)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--seconds", type=float, default=12.0, help="how long the socket phases hold on")
    parser.add_argument("--source", type=Path, default=ROOT, help="the checkout the server runs from")
    parser.add_argument("--only", default="", help="run only the phases whose name holds this text")
    args = parser.parse_args()
    model = args.model
    if model is None:
        import synth

        model = str(synth.write_nemotron_h_moe(Path("/tmp") / "serve-abuse-tiny.gguf", synth.TINY))
    # The checkout's package first, past an editable install's import hook (which would win over PYTHONPATH).
    run_from = [
        "-c", "import runpy, sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
              f"sys.path.insert(0, {str(args.source.resolve())!r}); sys.argv[0] = 'localcascade'; "
              "runpy.run_module('localcascade', run_name='__main__')",
    ]
    print(f"server from {args.source.resolve()}, model {Path(model).name}")
    print(f"{'phase':44} {'RSS before/after MiB':>21} {'/health p50/max ms':>19} {'failed':>6} "
          f"{'stderr B':>9}  outcomes")
    for name, abuse in [(n, a) for n, a in PHASES if args.only in n]:
        proc = ServerProcess(model, "--ctx", "1024", "--max-body", "16MiB")
        proc.python_args = run_from
        proc.popen_kwargs = {"preexec_fn": lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))}
        proc.start()
        try:
            httpx.post(proc.base_url + "/chat/completions", json=HELLO, timeout=60)   # warm
            before = rss_mib(proc.proc.pid)
            logged = sum(map(len, proc.stderr_lines))
            outcomes: Counter = Counter()
            with HealthProbe(proc.root) as probe:
                abuse(proc, outcomes, args.seconds)
                time.sleep(0.5)
            after = rss_mib(proc.proc.pid)
            lat = sorted(probe.latencies) or [float("nan")]
            print(f"{name:44} {before:9.0f} / {after:9.0f} {statistics.median(lat) * 1e3:8.0f} / "
                  f"{lat[-1] * 1e3:8.0f} {probe.failed:6d} {sum(map(len, proc.stderr_lines)) - logged:9d}  "
                  f"{dict(outcomes)}", flush=True)
        finally:
            proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
