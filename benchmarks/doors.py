"""What llama.cpp's grammar parser, sampler and tokenizer cost at the engine's limits (docs/bad-input.md).

Each grammar is parsed by the real llama.cpp in a child process (a crash there is reported, not
suffered): time and peak RSS to make the sampler, and for alternatives the time of one sampling step
over a whole vocabulary. Then the engine's own costs at its limits: the grammar check, tokenizing a
worst-case message, rendering and tokenizing MAX_MESSAGES messages.

    python benchmarks/doors.py --vocab-model GEMMA.gguf [--past]

``--past`` also runs cases past the limits that take tens of seconds or crash (what the limits are for).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_CHILD = r"""
import ctypes, json, resource, sys, time
import llama_cpp
log = llama_cpp.llama_log_callback(lambda *a: None)
llama_cpp.llama_log_set(log, None)
params = llama_cpp.llama_model_default_params(); params.vocab_only = True
model = llama_cpp.llama_model_load_from_file(sys.argv[1].encode(), params)
vocab = llama_cpp.llama_model_get_vocab(model)
grammar = sys.stdin.buffer.read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar, b"root")
parse_s = time.perf_counter() - start
step_s = None
if sampler and sys.argv[2] == "step":
    n = llama_cpp.llama_vocab_n_tokens(vocab)
    data = (llama_cpp.llama_token_data * n)(*[llama_cpp.llama_token_data(i, 0.0, 0.0) for i in range(n)])
    candidates = llama_cpp.llama_token_data_array(data, n, -1, False)
    start = time.perf_counter()
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(candidates))
    step_s = time.perf_counter() - start
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024
print(json.dumps({"ok": bool(sampler), "parse_s": parse_s, "step_s": step_s, "rss_growth_mib": grown}))
"""


def grammars(past: bool) -> list[tuple[str, str, bool]]:
    """(label, GBNF, time one sampling step over the vocabulary)."""
    def chain(n: int) -> str:
        return "root ::= r0\n" + "".join(f"r{i} ::= r{i + 1}\n" for i in range(n)) + f'r{n} ::= "a"\n'

    def duplicated(n: int) -> str:
        return "root ::= r0\n" + "".join(f"r{i} ::= r{i + 1} | r{i + 1}\n" for i in range(n)) + f'r{n} ::= "a"\n'

    def alternatives(n: int) -> str:
        return "root ::= " + " | ".join(f'"a{i}"' for i in range(n))

    cases = [
        ("nesting 1,024 (the limit)", "root ::= " + "(" * 1024 + '"a"' + ")" * 1024, False),
        ("chain of 2,048 rules (the limit)", chain(2046), False),
        ("8,192 rules (the limit)", "root ::= r0\n" + "".join(f'r{i} ::= "x{i}"\n' for i in range(8190)), False),
        ("2,000,000 symbols: a 999-byte literal {2000} (the limit)", 'root ::= "' + "a" * 999 + '"{2000}', False),
        ("256 alternatives open (the limit), one sampling step", alternatives(256), True),
    ]
    if past:
        cases += [
            ("nesting 19,000 (past)", "root ::= " + "(" * 19000 + '"a"' + ")" * 19000, False),
            ("chain of 75,000 rules (past)", chain(75000), False),
            ("rI ::= rJ | rJ, 22 levels (past)", duplicated(22), False),
            ("rI ::= rJ | rJ, 26 levels (past)", duplicated(26), False),
            ("50 M symbols: a 50,000-byte literal {1000} (past)", 'root ::= "' + "a" * 50000 + '"{1000}', False),
            ("1,000 alternatives open (past), one sampling step", alternatives(1000), True),
        ]
    return cases


def parse_in_child(model: str, grammar: str, step: bool) -> str:
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, model, "step" if step else "parse"],
                              input=grammar.encode(), capture_output=True, timeout=600)
    except subprocess.TimeoutExpired:
        return "still running after 600 s"
    if done.returncode != 0:
        return f"exit {done.returncode}" + (" (SIGSEGV)" if done.returncode == -11 else "")
    r = json.loads(done.stdout.decode().strip().splitlines()[-1])
    text = f"parse {r['parse_s']:.3f} s, RSS +{r['rss_growth_mib']} MiB"
    return text + (f", one sampling step {r['step_s']:.2f} s" if r["step_s"] is not None else "")


def engine_costs(model: str) -> list[str]:
    from localcascade.engine import grammar as door
    from localcascade.engine import loader
    from localcascade.engine.template import MAX_MESSAGES, ChatTemplate
    from localcascade.engine.vocab import Vocab

    lines = []
    for label, text, _ in grammars(False):
        start = time.perf_counter()
        door.check(text)
        lines.append(f"grammar check, {label}: {time.perf_counter() - start:.3f} s")
    template = ChatTemplate((ROOT / "tests/data/gemma_chat_template.jinja").read_text())
    with loader.vocab_only(Path(model)) as handle:
        vocab = Vocab(None, handle)
        for label, content in (("8 MiB of 'a\\n\\n' (user-defined newline tokens)", "a\n\n" * (8 * 2**20 // 3)),
                               ("80,000 'a<eos>'", "a<eos>" * 80_000)):
            start = time.perf_counter()
            text = template.render([{"role": "user", "content": content}], add_generation_prompt=True,
                                   enable_thinking=False, mark_content=True)
            n = len(vocab.tokenize_marked(text))
            lines.append(f"one message of {label}: {n:,} tokens in {time.perf_counter() - start:.2f} s")
        messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(MAX_MESSAGES)]
        start = time.perf_counter()
        text = template.render(messages, add_generation_prompt=True, enable_thinking=False, mark_content=True)
        n = len(vocab.tokenize_marked(text))
        lines.append(f"{MAX_MESSAGES:,} messages rendered and tokenized: {n:,} tokens in "
                     f"{time.perf_counter() - start:.2f} s")
        small = "a<eos>" * 20_000
        start = time.perf_counter()
        vocab.tokenize(small, special=True)
        lines.append(f"for comparison, 20,000 'a<eos>' in one llama.cpp call with special tokens parsed: "
                     f"{time.perf_counter() - start:.2f} s (quadratic)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-model", required=True, help="a GGUF whose vocabulary is used (Gemma 3: 262K tokens)")
    parser.add_argument("--past", action="store_true", help="also the cases past the limits (slow or crashing)")
    args = parser.parse_args()
    for label, grammar, step in grammars(args.past):
        print(f"llama.cpp, {label}: {parse_in_child(args.vocab_model, grammar, step)}", flush=True)
    for line in engine_costs(args.vocab_model):
        print(line, flush=True)


if __name__ == "__main__":
    main()
