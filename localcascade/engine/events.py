"""What the engine yields while it answers, and what front ends render.

The engine knows no terminal; front ends (ask, the REPL, bench) know no
llama_cpp. This module is the whole vocabulary between them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ThinkingText:
    """A piece of the reasoning trace (between <think> and </think>)."""

    text: str


@dataclass(frozen=True)
class AnswerText:
    """A piece of the answer (after </think>, or everything when thinking is off)."""

    text: str


@dataclass(frozen=True)
class ToolCallText:
    """A piece of a tool call the model is writing (the text inside <tool_call>...</tool_call>)."""

    text: str


@dataclass(frozen=True)
class TurnStats:
    """The last event of every turn."""

    prompt_tokens: int          # tokens in the rendered prompt for this turn
    evaluated_tokens: int       # prompt tokens actually evaluated (the rest came from the cache)
    thinking_tokens: int
    answer_tokens: int
    prompt_seconds: float
    generation_seconds: float
    context_used: int           # tokens in the context after this turn
    context_limit: int
    stop_reason: str            # "stop" (end of turn), "length" (max_tokens or a full context), "interrupted",
                                # "tool_call" (a complete tool call: continue with Chat.send_tool_results)
    reset_reason: str | None = None  # why the cached context could not be reused, when it was not
    ended_in_thinking: bool = False  # the reply stopped before </think>: no answer came
    drafted_tokens: int = 0          # draft tokens verified (engine/drafts.py) ...
    accepted_tokens: int = 0         # ... and kept

    @property
    def completion_tokens(self) -> int:
        return self.thinking_tokens + self.answer_tokens

    @property
    def prompt_tokens_per_s(self) -> float:
        return self.evaluated_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def generation_tokens_per_s(self) -> float:
        return self.completion_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0


Event = ThinkingText | AnswerText | ToolCallText | TurnStats
