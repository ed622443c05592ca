"""Conversations that leave their slot and come back, through `localcascade serve`, with a restart.

    python benchmarks/serve_conversations.py [--model tiny|gemma|skeleton|FILE] [--conversations 8]
                                             [--rounds 4] [--document-words 300]

A `--parallel 2` server and 8 conversations, each opening with its own document: every round sends
each conversation's next question in turn, so by the time a conversation comes back the six others
have evicted it from its sequence. Halfway the server is stopped (SIGTERM) and a new one started on
the same prompt-state cache. For every turn it prints the prompt tokens, the tokens the client added
since the server last answered that conversation ("new": the question and the template's glue), and
the tokens the server evaluated, as the API's usage reports them; then the same run with the cache
off (no RAM and no disk budget), where every return reads the whole conversation again. Goal: after
the first turn evaluated/new near 1, across the restart too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

WORDS = ("river mountain lamp keeper harbour winter ledger sparrow copper window lantern orchard "
         "meadow anchor signal thunder").split()


def document(i: int, words: int) -> str:
    return " ".join(WORDS[(i * 7 + j * (i + 3)) % len(WORDS)] for j in range(words))


def run(model, args, cache_on: bool) -> list[dict]:
    import openai

    from serverproc import ServerProcess

    folder = tempfile.mkdtemp(prefix="lc-conversations-")
    env = {"LOCALCASCADE_STATE_CACHE": folder}
    if not cache_on:
        env.update(LOCALCASCADE_STATE_CACHE_SIZE="0", LOCALCASCADE_STATE_RAM="0")
    command = [str(model.path), "--ctx", "4096", "--parallel", "2", "--threads", "2"]
    if model.chat_template is not None:
        command += ["--chat-template", str(model.chat_template)]
    histories = [[{"role": "user", "content": f"{document(i, args.document_words)}\n\nWhat is this about?"}]
                 for i in range(args.conversations)]
    seen = [0] * args.conversations          # tokens the server had after its last answer, per conversation
    rows = []
    server = ServerProcess(*command, env=env).start()
    try:
        for round_ in range(args.rounds):
            if round_ == args.rounds // 2:
                server.stop()
                server = ServerProcess(*command, env=env).start()
            api = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=600)
            for i, history in enumerate(histories):
                if round_:
                    history.append({"role": "user", "content": f"And what comes next, part {round_}?"})
                r = api.chat.completions.create(model="m", messages=history, temperature=0, max_tokens=16,
                                                extra_body={"chat_template_kwargs": {"enable_thinking": False}})
                usage = r.usage
                evaluated = usage.model_extra["evaluated_prompt_tokens"]
                rows.append({"round": round_, "conversation": i, "prompt": usage.prompt_tokens,
                             "new": usage.prompt_tokens - seen[i] if round_ else usage.prompt_tokens,
                             "evaluated": evaluated, "restarted": round_ == args.rounds // 2})
                seen[i] = usage.prompt_tokens + usage.completion_tokens
                history.append({"role": "assistant", "content": r.choices[0].message.content or ""})
    finally:
        server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--document-words", type=int, default=300)
    args = parser.parse_args()
    from side_by_side import prepare_model

    model = prepare_model(args.model, Path(tempfile.gettempdir()) / "localcascade-bench")
    print(f"{model.label}: {args.conversations} conversations on `serve --parallel 2`, {args.rounds} rounds, "
          f"the server restarted before round {args.rounds // 2}")
    print(f"{'cache':5s} {'round':>5s} {'prompt':>7s} {'new':>5s} {'evaluated':>9s} {'evaluated/new':>13s}")
    added = {}
    for cache_on in (True, False):
        rows = run(model, args, cache_on)
        for r in rows:
            # What the client added is the same in both runs; measured where the server's context is
            # the conversation as it answered it (with the cache off, a server that read the history
            # again holds the template's rendering of it instead).
            key = (r["round"], r["conversation"])
            r["new"] = added.setdefault(key, r["new"])
        for round_ in range(args.rounds):
            these = [r for r in rows if r["round"] == round_]
            prompt = statistics.mean(r["prompt"] for r in these)
            new = statistics.mean(r["new"] for r in these)
            evaluated = statistics.mean(r["evaluated"] for r in these)
            mark = " (after the restart)" if these[0]["restarted"] else ""
            print(f"{'on' if cache_on else 'off':5s} {round_:5d} {prompt:7.0f} {new:5.0f} {evaluated:9.0f} "
                  f"{evaluated / new:13.2f}{mark}")


if __name__ == "__main__":
    main()
