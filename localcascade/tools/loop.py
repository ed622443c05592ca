"""A reply with tools: generate, run each call the model makes, hand the result back, continue.

``run_with_tools(chat, text, options, tool)`` is what every front end calls (ask, the REPL,
a server): it yields the engine's events (ThinkingText, AnswerText, ToolCallText), a
ToolCallStarted / ToolCallFinished pair around each call it runs, and one TurnStats for the
whole reply (its rounds summed). The reply's limits hold across its rounds: at most
``max_calls`` calls are run, and the thinking budget and max_tokens count every round.
A call past the cap is answered with an error the model can read; if it calls again after
that, the reply ends (stop_reason "tool_limit").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator

from localcascade.engine.events import TurnStats
from localcascade.engine.turn import Turn
from localcascade.tools.python_tool import NAME, STOPPED_BY_USER, PythonTool, ToolResult, schema

DEFAULT_MAX_CALLS = 8


@dataclass(frozen=True)
class ToolCallStarted:
    """The model called the tool; the code is about to run."""

    index: int      # 1-based, within the reply
    code: str


@dataclass(frozen=True)
class ToolCallFinished:
    """A call's result (also for a call that was refused: then ``result.error`` says why)."""

    index: int
    result: ToolResult


def run_with_tools(chat, text: str, options, tool: PythonTool, *, max_calls: int = DEFAULT_MAX_CALLS,
                   should_stop: Callable[[], bool] | None = None) -> Turn:
    """One reply to ``text`` with the python tool available (see the module doc), as a Turn.

    Its ``stop()`` (or ``should_stop``, polled after every event and while code runs) ends the
    reply at the next token, or kills the running code.
    """
    return Turn(lambda turn: _run(chat, text, options, tool, max_calls,
                                  lambda: turn.stopped or (should_stop is not None and should_stop())))


class ToolRounds:
    """What one reply with tools keeps across its rounds: the calls run, the cap, each round's stats.

    Shared by ``run_with_tools`` (one Chat) and the server (rounds resubmitted to its scheduler),
    so the cap, the refusals and the summed usage mean the same everywhere.
    """

    def __init__(self, options, max_calls: int = DEFAULT_MAX_CALLS) -> None:
        self.options = options
        self.max_calls = max_calls
        self.rounds: list[TurnStats] = []
        self.results: list[str] = []      # the last round's tool messages, for the model
        self.interrupted = False
        self._calls_run = 0
        self._seen = 0
        self._refused_after_cap = False

    def end_round(self, stats: TurnStats) -> bool:
        """Record a round; True when it stopped at tool calls that are to be answered now."""
        self.rounds.append(stats)
        if stats.stop_reason != "tool_call":
            return False
        if self._refused_after_cap:
            self.rounds[-1] = replace(stats, stop_reason="tool_limit")
            return False
        return True

    def run_calls(self, calls: list[dict], tool: PythonTool, should_stop: Callable[[], bool]) -> Iterator:
        """Run (or refuse) the round's calls: yields ToolCallStarted / ToolCallFinished; fills ``results``."""
        self.results = []
        self.interrupted = False
        if not calls:   # a <tool_call> block the parser could not read: say so, and go on
            self.results.append(f"[error] the tool call could not be read: write <function={NAME}> with "
                                "<parameter=code> inside <tool_call>")
        for call in calls:
            function = call.get("function", call)
            code = _code_of(function)
            self._seen += 1
            if self._calls_run >= self.max_calls:
                self._refused_after_cap = True
                result = _refusal(code, f"no more tool calls in this reply (the limit is {self.max_calls}): "
                                        "answer with what you have")
            elif function.get("name") != NAME or code is None:
                result = _refusal(code or "", f"there is no tool {function.get('name')!r} with those arguments: "
                                              f"the one tool is {NAME}(code)")
            else:
                self._calls_run += 1
                yield ToolCallStarted(self._seen, code)
                result = tool.execute(code, should_stop=should_stop)
                self.interrupted = result.error == STOPPED_BY_USER
            yield ToolCallFinished(self._seen, result)
            self.results.append(result.for_model())
            if self.interrupted:
                break

    def next_options(self, stopped: bool):
        """The next round's options (what is left of max_tokens and the thinking budget), or None
        when the reply ends here (its last round's stop_reason then says why)."""
        last = self.rounds[-1]
        if self.interrupted or stopped:
            self.rounds[-1] = replace(last, stop_reason="interrupted")
            return None
        continued = _remaining(self.options, self.rounds)
        if continued is None:
            self.rounds[-1] = replace(last, stop_reason="length")
        return continued

    def summed(self) -> TurnStats:
        return _summed(self.rounds)


def _run(chat, text: str, options, tool: PythonTool, max_calls: int, should_stop: Callable[[], bool]) -> Iterator:
    tools = [schema()]
    state = ToolRounds(options, max_calls)
    reasoning: list[str] = []
    events = chat.send(text, replace(options, tools=tools))
    while True:
        stats = None
        for event in events:
            if isinstance(event, TurnStats):
                stats = event
            else:
                yield event
            if should_stop():
                events.stop()   # the engine checks it before every token
        if stats is None:
            return
        if chat.last_reasoning:
            reasoning.append(chat.last_reasoning)
        if not state.end_round(stats):
            break
        yield from state.run_calls(chat.messages[-1].get("tool_calls") or [], tool, should_stop)
        continued = state.next_options(should_stop())
        if continued is None:
            break
        events = chat.send_tool_results(state.results, replace(continued, tools=tools))
    chat.last_reasoning = "\n\n".join(reasoning) or None
    yield state.summed()


def _code_of(function: dict) -> str | None:
    arguments = function.get("arguments")
    if not isinstance(arguments, dict) or "code" not in arguments:
        return None
    code = arguments["code"]
    if isinstance(code, str):
        return code
    import json

    # The parser read the value as JSON (a bare number, a list): the code is its text.
    return json.dumps(code)


def _refusal(code: str, why: str) -> ToolResult:
    return ToolResult(code=code, stdout="", stderr="", result=None, exit=None, seconds=0.0, error=why)


def _remaining(options, rounds: list[TurnStats]):
    """The options for the next round: what is left of max_tokens and the thinking budget, or None."""
    used = sum(r.completion_tokens for r in rounds)
    thought = sum(r.thinking_tokens for r in rounds)
    max_tokens = options.max_tokens
    if max_tokens is not None:
        max_tokens -= used
        if max_tokens <= 0:
            return None
    budget = options.think_budget
    if budget is not None:
        budget = max(0, budget - thought)
    return replace(options, max_tokens=max_tokens, think_budget=budget)


def _summed(rounds: list[TurnStats]) -> TurnStats:
    first, last = rounds[0], rounds[-1]
    return TurnStats(
        prompt_tokens=first.prompt_tokens,
        evaluated_tokens=sum(r.evaluated_tokens for r in rounds),
        thinking_tokens=sum(r.thinking_tokens for r in rounds),
        answer_tokens=sum(r.answer_tokens for r in rounds),
        prompt_seconds=sum(r.prompt_seconds for r in rounds),
        generation_seconds=sum(r.generation_seconds for r in rounds),
        context_used=last.context_used,
        context_limit=last.context_limit,
        stop_reason=last.stop_reason,
        reset_reason=next((r.reset_reason for r in rounds if r.reset_reason), None),
        ended_in_thinking=last.ended_in_thinking,
    )

