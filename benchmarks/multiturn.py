"""Tokens evaluated per turn in a 10-turn conversation, against the tokens the turn added.

    python benchmarks/multiturn.py [model.gguf]   (default: a tiny synthetic nemotron_h_moe model)

With prefix reuse (the default) turn N evaluates only its new tokens even though the
Mamba state cannot be rolled back: evaluated/new at turn 10 should be <= 1.1. The same
conversation in the template's exact form (reuse_prefix=False) is printed for contrast.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from localcascade.engine.session import Chat, Engine, GenerationOptions
from localcascade.planning.plan import Plan

QUESTIONS = ["hello", "what is the answer", "how can we test this", "yes", "what is the name of the tool",
             "do not think", "all of this", "which one", "the world", "is that your answer"]


def conversation(engine: Engine, reuse_prefix: bool) -> list[tuple[int, int, int]]:
    chat = Chat(engine, system="you are a test model", reuse_prefix=reuse_prefix)
    rows, used = [], 0
    for turn, question in enumerate(QUESTIONS, 1):
        *_, stats = chat.send(question, GenerationOptions(seed=turn, max_tokens=24))
        rows.append((stats.prompt_tokens, stats.prompt_tokens - used, stats.evaluated_tokens))
        used = stats.context_used
    engine.reset()
    return rows


def main() -> None:
    if len(sys.argv) > 1:
        path = Path(sys.argv[1])
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        import synth

        path = synth.write_nemotron_h_moe(Path(tempfile.mkdtemp()) / "tiny.gguf", synth.TINY)
    with Engine.load(path, Plan(model=path.name, n_ctx=4096)) as engine:
        for reuse in (True, False):
            rows = conversation(engine, reuse)
            print(f"{'prefix reuse' if reuse else 'template form'}: turn, prompt, new, evaluated")
            for turn, (prompt, new, evaluated) in enumerate(rows, 1):
                print(f"  {turn:2d} {prompt:6d} {new:5d} {evaluated:6d}")
            prompt, new, evaluated = rows[-1]
            if reuse:
                print(f"  turn 10 evaluated/new = {evaluated / new:.2f}   (goal <= 1.1)")
            else:   # old reasoning is dropped, so the prompt can shrink: compare with the whole prompt
                print(f"  turn 10 evaluated/prompt = {evaluated / prompt:.2f} (the whole conversation again)")


if __name__ == "__main__":
    main()
