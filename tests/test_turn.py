"""A reply stopped from another thread: Chat.send's Turn and the decoder's replies."""

from __future__ import annotations

import threading

from localcascade.engine.events import AnswerText, ThinkingText, TurnStats
from localcascade.engine.session import Chat, Engine, GenerationOptions
from localcascade.planning.plan import Plan


def test_a_turn_stopped_from_another_thread_ends_with_its_stats(tiny_model):
    with Engine.load(tiny_model, Plan(model="tiny", n_ctx=4096, n_batch=256, n_ubatch=128)) as engine:
        chat = Chat(engine)
        turn = chat.send("hello", GenerationOptions(seed=1, max_tokens=3000))
        events = []
        for event in turn:
            events.append(event)
            if len(events) == 5:
                stopper = threading.Thread(target=turn.stop)
                stopper.start()
                stopper.join()
        stats = events[-1]
        assert isinstance(stats, TurnStats) and stats.stop_reason == "interrupted"
        assert stats.completion_tokens < 50
        # The conversation goes on: the stopped reply is in the history and the next turn runs.
        assert chat.messages[-1]["role"] == "assistant"
        *_, after = chat.send("again", GenerationOptions(seed=2, max_tokens=4))
        assert after.stop_reason == "length"


def test_a_stop_during_a_long_prompt_ends_the_turn_at_the_next_chunk(tiny_model, monkeypatch):
    import llama_cpp

    with Engine.load(tiny_model, Plan(model="tiny", n_ctx=4096, n_batch=16, n_ubatch=16)) as engine:
        chat = Chat(engine)
        turn = chat.send("the model " * 200, GenerationOptions(seed=1, max_tokens=5))
        decode = llama_cpp.llama_decode
        calls = []

        def decode_then_stop(ctx, batch):   # llama.cpp's decode, and the user's stop after its 3rd chunk
            calls.append(1)
            if len(calls) == 3:
                turn.stop()
            return decode(ctx, batch)

        monkeypatch.setattr(llama_cpp, "llama_decode", decode_then_stop)
        *text, stats = list(turn)
        monkeypatch.undo()
        assert text == [] and stats.stop_reason == "interrupted" and stats.completion_tokens == 0
        assert len(calls) == 3 and stats.evaluated_tokens == 3 * 16 < stats.prompt_tokens
        # The next turn's prompt is the whole conversation (the first message in full, not the
        # half-read context), and the part already read is not read again.
        *_, after = chat.send("again", GenerationOptions(seed=2, max_tokens=4))
        assert after.stop_reason == "length" and after.prompt_tokens > stats.prompt_tokens
        assert after.evaluated_tokens == after.prompt_tokens - stats.evaluated_tokens


def test_batched_sequences_stop_alone_and_free_their_sequence(tiny_model):
    plan = Plan(model="tiny", n_ctx=2048, n_batch=256, n_ubatch=128, n_seq=2)
    with Engine.load(tiny_model, plan) as engine:
        decoder = engine.decoder
        got = {0: [], 1: []}
        prompt = engine.tokenize_prompt(engine.template.render(
            [{"role": "user", "content": "hello"}], add_generation_prompt=True, enable_thinking=True))
        turns = [decoder.start(seq, prompt, GenerationOptions(seed=seq, max_tokens=40), got[seq].append)
                 for seq in (0, 1)]
        for _ in range(5):
            decoder.step()
        turns[0].stop()
        while not decoder.idle:
            decoder.step()
        first, second = got[0][-1], got[1][-1]
        assert first.stop_reason == "interrupted" and first.completion_tokens < 10
        assert second.stop_reason == "length" and second.completion_tokens == 40
        assert all(isinstance(e, (ThinkingText, AnswerText)) for e in got[1][:-1])
        # Sequence 0 takes a new reply at once.
        again = decoder.start(0, prompt, GenerationOptions(seed=3, max_tokens=3), got[0].append)
        while not decoder.idle:
            decoder.step()
        assert again.stop_reason == "length"
        decoder.close()


def test_a_long_prompt_is_read_in_micro_batches_while_another_reply_generates(tiny_model):
    plan = Plan(model="tiny", n_ctx=4096, n_batch=1024, n_ubatch=128, n_seq=2)
    with Engine.load(tiny_model, plan) as engine:
        decoder = engine.decoder
        counts = {0: 0, 1: 0}

        def sink(seq):
            def take(event):
                if not isinstance(event, TurnStats):
                    counts[seq] += 1
            return take

        def prompt(text):
            return engine.tokenize_prompt(engine.template.render(
                [{"role": "user", "content": text}], add_generation_prompt=True, enable_thinking=False))

        decoder.start(0, prompt("hello"), GenerationOptions(think=False, seed=1, max_tokens=200, temperature=0), sink(0))
        decoder.step()                                  # its prompt; it generates from now on
        long = prompt("the model " * 300)
        assert len(long) > 4 * 128
        reader = decoder.start(1, long, GenerationOptions(think=False, seed=2, max_tokens=2), sink(1))
        steps = 0
        while reader.first_logits is None:
            before = decoder.turns[0].answer.tokens + decoder.turns[0].thinking.tokens
            decoder.step()
            steps += 1
            after = decoder.turns[0].answer.tokens + decoder.turns[0].thinking.tokens
            assert after == before + 1                  # the generating reply got its token every step
        assert steps >= len(long) // 128
        decoder.close()


def test_llama_decode_is_called_from_one_place_in_the_package():
    import re
    from pathlib import Path

    import localcascade

    root = Path(localcascade.__file__).parent
    calls = [f"{path.relative_to(root)}:{n}" for path in root.rglob("*.py")
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"\bllama_decode\(", line)]
    # Every reply's tokens, verified drafts included, go through decoder.py's one batch.
    assert [c.split(":")[0] for c in calls] == ["engine/decoder.py"], calls
