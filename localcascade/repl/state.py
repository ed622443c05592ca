"""What a chat session holds: the model, the conversation, the settings slash commands change, and
what the session has seen so far. Plain data; no terminal here."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from localcascade.engine.events import TurnStats
from localcascade.engine.session import Chat, Engine, GenerationOptions
from localcascade.hardware.facts import Hardware
from localcascade.planning.plan import Plan
from localcascade.tools.python_tool import PythonTool, ToolResult
from localcascade.units import format_tokens

TRACE_MODES = ("show", "hide", "collapse")


@dataclass
class ReplState:
    """Everything a slash command can change, plus what the session has seen so far."""

    engine: Engine
    chat: Chat
    # The next reply's generation settings (thinking, budget, sampling, grammar): /think, /budget
    # and /set change them; None in a sampling field leaves it to the model card's defaults.
    options: GenerationOptions = field(default_factory=GenerationOptions)
    trace: str = "collapse"             # how the thinking trace is shown: show | hide | collapse
    hardware: Hardware | None = None    # for /info and the next larger context's cost
    larger_plan: Plan | bool | None = None   # the next larger context's Plan (False: none fits), once asked
    python_tool: PythonTool | None = None    # once a sandbox was found
    tools: bool = False                 # the model may call python (/tools on|off, run --tools python)
    max_tool_calls: int = 8
    last_tool_calls: list[tuple[int, ToolResult]] = field(default_factory=list)   # of the last reply
    last_trace: str | None = None
    last_trace_tokens: int | None = None
    last_trace_seconds: float | None = None
    last_stats: TurnStats | None = None
    turns: int = 0
    total_prompt_tokens: int = 0
    total_evaluated_tokens: int = 0
    total_completion_tokens: int = 0

    @property
    def think(self) -> bool:
        """The model's thinking mode (the template's enable_thinking)."""
        return self.options.think

    def reply_options(self) -> GenerationOptions:
        """The options for the next reply: a copy, so a command typed later never reaches into a reply."""
        return replace(self.options)

    def prompt_label(self) -> str:
        """The prompt line: both toggles at a glance, e.g. ``[think on · trace collapse] >>> ``."""
        think = "on" if self.think else "off"
        budget = self.options.think_budget
        budget_part = f" · budget {format_tokens(budget)}" if self.think and budget else ""
        tools = " · tools python" if self.tools else ""
        return f"[think {think}{budget_part} · trace {self.trace}{tools}] >>> "

    def record(self, stats: TurnStats) -> None:
        self.last_stats = stats
        self.turns += 1
        self.total_prompt_tokens += stats.prompt_tokens
        self.total_evaluated_tokens += stats.evaluated_tokens
        self.total_completion_tokens += stats.completion_tokens
