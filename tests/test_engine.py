"""The engine on the tiny nemotron_h_moe model: plans, sampling, thinking split, budget, turns."""

from __future__ import annotations

import re

import pytest

from localcascade.engine.events import AnswerText, ThinkingText, TurnStats
from localcascade.engine.session import Chat, Engine, GenerationOptions
from localcascade.errors import ContextOverflowError, UsageError
from engines import cpu_plan

IM_START, IM_END, THINK, END_THINK = 10, 11, 12, 13


def run_turn(chat: Chat, text: str, options: GenerationOptions):
    events = list(chat.send(text, options))
    stats = events[-1]
    assert isinstance(stats, TurnStats)
    assert not any(isinstance(e, TurnStats) for e in events[:-1])
    thinking = "".join(e.text for e in events if isinstance(e, ThinkingText))
    answer = "".join(e.text for e in events if isinstance(e, AnswerText))
    return thinking, answer, stats


# --- loading with each kind of plan -------------------------------------------------------------


def overridden_tensors(log: list[str]) -> set[str]:
    return {m.group(1) for line in log if (m := re.search(r"tensor (\S+) .*buffer type overridden to CPU", line))}


def test_all_cpu_plan_loads_without_overrides(tiny_model):
    with Engine.load(tiny_model, cpu_plan()) as engine:
        assert engine.n_ctx == 1024
        assert overridden_tensors(engine.load_log) == set()
        assert any("flash_attn" in line and "enabled" in line for line in engine.load_log)


def test_experts_of_first_blocks_are_kept_in_system_ram(tiny_model):
    # TINY's pattern "MEMEM*EMEM*EME": MoE blocks are 1, 3, 6, 8, 11, 13. The first 4 layers hold
    # MoE blocks 1 and 3, so exactly their expert tensors are overridden (like --n-cpu-moe 4).
    with Engine.load(tiny_model, cpu_plan(n_cpu_moe=4)) as engine:
        assert overridden_tensors(engine.load_log) == {
            "blk.1.ffn_up_exps.weight", "blk.1.ffn_down_exps.weight",
            "blk.3.ffn_up_exps.weight", "blk.3.ffn_down_exps.weight",
        }
        _, _, stats = run_turn(Chat(engine), "hello", GenerationOptions(seed=1, max_tokens=4))
        assert stats.completion_tokens > 0


def test_q8_0_kv_cache_with_flash_attention(tiny_f16_model):
    # q8_0 blocks are 32 wide: this needs the QUANTIZABLE shape's head_dim of 64 (TINY's is 16).
    with Engine.load(tiny_f16_model, cpu_plan(type_k="q8_0", type_v="q8_0", flash_attn=True)) as engine:
        log = "\n".join(engine.load_log)
        assert "K (q8_0)" in log and "V (q8_0)" in log
        assert re.search(r"flash_attn\s*=\s*enabled", log)
        _, _, stats = run_turn(Chat(engine), "hello", GenerationOptions(seed=1, max_tokens=4))
        assert stats.completion_tokens > 0


def test_load_progress_is_reported(tiny_model):
    seen: list[float] = []
    with Engine.load(tiny_model, cpu_plan(), progress=seen.append):
        pass
    assert seen and seen[-1] == pytest.approx(1.0)
    assert seen == sorted(seen)


def test_load_prints_nothing_to_stdout(tiny_model, capfd):
    with Engine.load(tiny_model, cpu_plan()) as engine:
        run_turn(Chat(engine), "hello", GenerationOptions(seed=1, max_tokens=3))
    out, err = capfd.readouterr()
    assert out == "" and err == ""


# --- sampling ------------------------------------------------------------------------------------


def test_same_seed_same_text_different_seed_different_text(engine):
    def reply(seed: int) -> str:
        thinking, answer, _ = run_turn(Chat(engine), "hello", GenerationOptions(seed=seed, max_tokens=24))
        return thinking + "|" + answer

    first = reply(7)
    assert reply(7) == first
    assert len({first, reply(8), reply(9)}) > 1


def test_bad_sampling_values_are_usage_errors(engine):
    with pytest.raises(UsageError):
        Chat(engine).send("hello", GenerationOptions(max_tokens=0))
    with pytest.raises(UsageError):
        list(Chat(engine).send("hello", GenerationOptions(top_p=1.5)))


# --- thinking split by token id, budget, prompt forms --------------------------------------------


def test_thinking_and_answer_are_split_by_token_id(engine):
    # Thinking mode: the prompt opens <think>; the grammar forces a thought, </think> and an answer.
    chat = Chat(engine)
    grammar = 'root ::= "hello world" </think> "yes"'
    thinking, answer, stats = run_turn(chat, "hello", GenerationOptions(grammar=grammar, seed=1))
    assert (thinking, answer) == ("hello world", "yes")
    assert stats.stop_reason == "stop"
    assert stats.answer_tokens >= 1 and stats.thinking_tokens >= 2
    assert chat.last_reasoning == "hello world"
    assert chat.messages[-1] == {"role": "assistant", "content": "yes"}


def test_thinking_opened_by_the_model_itself(engine):
    chat = Chat(engine)
    grammar = 'root ::= <think> "the answer" </think> "hello"'
    thinking, answer, _ = run_turn(chat, "hello", GenerationOptions(think=False, grammar=grammar, seed=1))
    assert (thinking, answer) == ("the answer", "hello")


def test_no_think_prompt_form(engine):
    chat = Chat(engine)
    run_turn(chat, "hello", GenerationOptions(think=False, seed=1, max_tokens=1))
    assistant = engine.vocab.tokenize("<|im_start|>assistant\n<think></think>", special=True)
    assert assistant[-2:] == [THINK, END_THINK]
    prompt_end = engine.tokens[: len(engine.tokens) - 1]   # minus the one generated token
    assert prompt_end[-len(assistant):] == assistant


def test_think_prompt_form(engine):
    chat = Chat(engine)
    run_turn(chat, "hello", GenerationOptions(think=True, seed=1, max_tokens=1))
    opening = engine.vocab.tokenize("<|im_start|>assistant\n<think>\n", special=True)
    assert engine.tokens[: len(engine.tokens) - 1][-len(opening):] == opening


def test_think_budget_closes_the_thought_and_the_model_answers(engine):
    # The grammar lets the thought go on forever; only the budget can end it.
    grammar = 'root ::= [a-z ]+ "\\n"? </think> "\\n"* "ok"'
    chat = Chat(engine)
    thinking, answer, stats = run_turn(chat, "hello", GenerationOptions(grammar=grammar, think_budget=5, seed=3))
    assert stats.thinking_tokens == 5
    assert answer == "ok"
    assert stats.stop_reason == "stop"
    assert END_THINK in engine.tokens


def test_budget_spent_without_answer_is_reported(engine):
    # The thought must be 200 characters long before </think> is allowed: 6 tokens cannot get there.
    grammar = 'root ::= [a-z ]{200} </think> "ok"'
    thinking, answer, stats = run_turn(Chat(engine), "hello", GenerationOptions(grammar=grammar, max_tokens=6, seed=3))
    assert answer == "" and thinking
    assert stats.stop_reason == "length" and stats.ended_in_thinking
    assert stats.thinking_tokens == 6


# --- turns, prefix reuse, interruption, overflow --------------------------------------------------


def test_turn_two_evaluates_only_the_new_tokens(engine):
    chat = Chat(engine)
    options = GenerationOptions(seed=1, max_tokens=12)
    _, _, first = run_turn(chat, "hello", options)
    _, _, second = run_turn(chat, "what is the answer", options)
    _, _, third = run_turn(chat, "yes", options)
    assert first.evaluated_tokens == first.prompt_tokens
    new_tokens = second.prompt_tokens - first.context_used
    assert second.evaluated_tokens == new_tokens
    assert new_tokens < 20 < second.prompt_tokens
    assert third.evaluated_tokens == third.prompt_tokens - second.context_used
    assert second.reset_reason is None and third.reset_reason is None
    assert engine.full_reevaluations == 0
    assert [m["role"] for m in chat.messages] == ["user", "assistant"] * 3


def test_template_form_history_costs_a_full_reevaluation(engine):
    # Without prefix reuse the template drops the old reasoning: the prompt diverges from the
    # context and the recurrent state cannot be cut back, so everything is evaluated again.
    chat = Chat(engine, reuse_prefix=False)
    options = GenerationOptions(seed=1, max_tokens=12, grammar='root ::= "abc" </think> "yes"')
    run_turn(chat, "hello", options)
    _, _, second = run_turn(chat, "what is the answer", options)
    assert second.evaluated_tokens == second.prompt_tokens
    assert second.reset_reason is not None
    assert engine.full_reevaluations == 1


def test_closing_the_stream_keeps_what_was_said_and_the_next_turn_works(engine):
    chat = Chat(engine)
    stream = chat.send("hello", GenerationOptions(think=False, seed=1, grammar='root ::= "hello world the end"'))
    pieces = []
    for event in stream:
        pieces.append(event.text)
        if len(pieces) == 2:
            break
    stream.close()
    assert chat.messages[-1] == {"role": "assistant", "content": "".join(pieces).strip()}
    used = chat.context_used
    _, _, stats = run_turn(chat, "yes", GenerationOptions(seed=1, max_tokens=4))
    assert stats.evaluated_tokens == stats.prompt_tokens - used
    assert stats.reset_reason is None


def test_prompt_longer_than_context_is_an_error_with_counts(tiny_model):
    with Engine.load(tiny_model, cpu_plan(n_ctx=256)) as engine:
        chat = Chat(engine)
        with pytest.raises(ContextOverflowError, match=r"prompt is \d+ tokens but the context holds 256"):
            chat.send("hello world " * 300, GenerationOptions())
        assert chat.messages == []
        _, _, stats = run_turn(chat, "hello", GenerationOptions(seed=1, max_tokens=3))
        assert stats.completion_tokens > 0


def test_generation_stops_when_the_context_is_full(tiny_model):
    with Engine.load(tiny_model, cpu_plan(n_ctx=256)) as engine:
        _, _, stats = run_turn(Chat(engine), "hello", GenerationOptions(seed=1, grammar='root ::= [a-z]{1200}'))
        assert stats.context_used == 256
        assert stats.stop_reason == "length"


def test_system_prompt_change_and_save_load(engine):
    chat = Chat(engine, system="be brief")
    run_turn(chat, "hello", GenerationOptions(seed=1, max_tokens=4))
    assert chat.messages[0] == {"role": "system", "content": "be brief"}
    saved = chat.to_dict()
    restored = Chat.from_dict(engine, saved)
    assert restored.messages == chat.messages
    _, _, stats = run_turn(restored, "yes", GenerationOptions(seed=1, max_tokens=4))
    assert stats.prompt_tokens > 0
    with pytest.raises(UsageError):
        Chat.from_dict(engine, {"messages": [{"role": "robot"}]})
    chat.clear()
    assert chat.messages == [{"role": "system", "content": "be brief"}]
    assert chat.context_used == 0


def test_count_tokens(engine):
    assert engine.count_tokens("<|im_start|>") == 1
    assert engine.count_tokens("hello world") >= 2


# --- Ctrl-C while llama.cpp evaluates ---------------------------------------------------------------


def interrupt_decode_call(monkeypatch, number: int) -> None:
    """Make the ``number``-th llama_decode call evaluate its batch and then raise KeyboardInterrupt,
    as Python does when the signal arrived while the C call ran."""
    import llama_cpp

    real = llama_cpp.llama_decode
    calls = [0]

    def decode(ctx, batch):
        calls[0] += 1
        rc = real(ctx, batch)
        if calls[0] == number:
            raise KeyboardInterrupt
        return rc

    monkeypatch.setattr(llama_cpp, "llama_decode", decode)


def held_tokens(engine: Engine) -> int:
    import llama_cpp

    return llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(engine._loaded.ctx), 0) + 1


def test_interrupt_after_a_generated_token_was_evaluated_keeps_the_context_true(engine, monkeypatch):
    chat = Chat(engine)
    options = GenerationOptions(think=False, seed=1, grammar='root ::= "hello world the end of it"')
    interrupt_decode_call(monkeypatch, 4)   # 1: the prompt, then one call per generated token
    with pytest.raises(KeyboardInterrupt):
        list(chat.send("hello", options))
    monkeypatch.undo()
    assert len(engine.tokens) == held_tokens(engine)
    used = chat.context_used
    assert used == len(engine.tokens) > 0
    _, answer, stats = run_turn(chat, "yes", GenerationOptions(think=False, seed=1, grammar='root ::= "ok"'))
    assert answer == "ok"
    assert stats.evaluated_tokens == stats.prompt_tokens - used
    assert len(engine.tokens) == held_tokens(engine) == stats.context_used


def test_interrupt_while_the_prompt_is_evaluated_is_not_evaluated_twice(tiny_model, monkeypatch):
    with Engine.load(tiny_model, cpu_plan(n_batch=16, n_ubatch=16)) as engine:
        chat = Chat(engine)
        interrupt_decode_call(monkeypatch, 2)   # the second 16-token chunk of the prompt
        with pytest.raises(KeyboardInterrupt):
            list(chat.send("hello world " * 30, GenerationOptions(seed=1, max_tokens=2)))
        monkeypatch.undo()
        assert len(engine.tokens) == held_tokens(engine) == 32
        _, _, stats = run_turn(chat, "hello world " * 30, GenerationOptions(seed=1, max_tokens=2))
        assert stats.evaluated_tokens == stats.prompt_tokens - 32
        assert stats.completion_tokens > 0
        assert len(engine.tokens) == held_tokens(engine) == stats.context_used


# --- loading: Ctrl-C, cleanup, KV cache types -------------------------------------------------------


def test_ctrl_c_during_the_load_cancels_it_and_is_an_interrupt(tiny_model, capfd):
    from localcascade.errors import Interrupted

    def progress(fraction: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        Engine.load(tiny_model, cpu_plan(), progress=progress)
    _, err = capfd.readouterr()
    assert "Exception ignored" not in err and "Traceback" not in err


def test_ctrl_c_as_the_context_is_created_frees_model_and_context(tiny_model, monkeypatch):
    import os
    import signal

    import llama_cpp

    from localcascade.errors import Interrupted

    freed = []
    real_init, real_free, real_model_free = (
        llama_cpp.llama_init_from_model, llama_cpp.llama_free, llama_cpp.llama_model_free)

    def init(model, params):   # Ctrl-C arrives while llama.cpp builds the context
        ctx = real_init(model, params)
        os.kill(os.getpid(), signal.SIGINT)
        return ctx

    monkeypatch.setattr(llama_cpp, "llama_init_from_model", init)
    monkeypatch.setattr(llama_cpp, "llama_free", lambda ctx: (freed.append("ctx"), real_free(ctx)))
    monkeypatch.setattr(llama_cpp, "llama_model_free", lambda m: (freed.append("model"), real_model_free(m)))
    with pytest.raises(Interrupted):
        Engine.load(tiny_model, cpu_plan())
    assert freed == ["ctx", "model"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_bad_kv_type_is_refused_before_the_weights_are_read(tiny_model, monkeypatch):
    import llama_cpp

    loads = []
    monkeypatch.setattr(llama_cpp, "llama_model_load_from_file", lambda *a: loads.append(a))
    with pytest.raises(UsageError, match="iq4_nl"):
        Engine.load(tiny_model, cpu_plan(type_k="q3_x"))
    assert loads == []


@pytest.mark.parametrize("name", ["Q8_0", "iq4_nl"])
def test_every_kv_type_the_planner_accepts_loads_in_any_case(tiny_f16_model, name):
    with Engine.load(tiny_f16_model, cpu_plan(type_k=name, type_v=name, flash_attn=True)) as engine:
        assert f"K ({name.lower()})" in "\n".join(engine.load_log)
