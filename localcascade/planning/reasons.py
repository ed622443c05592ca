"""Why a plan is what it is, as data: each reason's kind and the figures it rests on.

The planner and the policy decide; they do not talk. A Plan carries these records (and its
alternatives: what each trades, and the plan), and the front ends put them into words in one
place, ``cli/wording.py``, so `fit`, `fit --json`, `show`, `pull`, `ask --verbose`, the chat and
`serve` say the same thing and a wording change is made once. ``kind`` names each record in JSON.
(The alternatives, ``plan.Alternative``, live beside the Plan they hold.)

The planner's refusals are data too: ``NothingFits`` (a DoesNotFitError) carries the placement
that failed and, for several conversations, the (context, conversations) pairs that would fit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar, Union

from localcascade.errors import DoesNotFitError


@dataclass(frozen=True)
class Placed:
    """Where the model goes at one context (``verdict``) and the numbers that decided it."""

    kind: ClassVar[str] = "placed"
    model: str
    verdict: str                 # planning.plan's verdicts: full_gpu, experts_in_ram, partial, cpu_only, wont_fit
    n_ctx: int                   # the whole context: every conversation's share
    n_seq: int                   # conversations sharing it
    gpu_name: str                # the first GPU's name ("GPU" when there is none)
    gpu_bytes: int               # what the plan puts on the GPU(s)
    gpu_usable_bytes: int        # GPU memory the plan may use (free VRAM less the margin)
    moe_blocks_in_ram: int       # experts of this many MoE blocks stay in RAM (experts_in_ram)
    n_cpu_moe: int               # llama.cpp's layer count behind that
    ram_weight_bytes: int        # weights that stay in RAM
    n_gpu_layers: int
    n_layers: int                # layers llama.cpp can offload: the repeating ones and the output layer
    ram_bytes: int               # everything the plan keeps in RAM
    ram_usable_bytes: int        # RAM the plan may use
    gpu_offload_missing: bool    # GPUs are there but the installed llama.cpp build cannot offload to them


@dataclass(frozen=True)
class AsRequested:
    """The user's GPU layers or expert blocks were taken as given, not searched for."""

    kind: ClassVar[str] = "as_requested"


@dataclass(frozen=True)
class GpuEstimated:
    """The GPU's compute buffer and CUDA overhead are estimates (the CPU buffers are calibrated)."""

    kind: ClassVar[str] = "gpu_estimated"


@dataclass(frozen=True)
class FloorLowered:
    """Nothing fits at the policy's context floor; ``n_ctx`` is the largest context that does."""

    kind: ClassVar[str] = "floor_lowered"
    floor: int
    think: bool
    n_ctx: int


@dataclass(frozen=True)
class LongestHeld:
    """The context preference's choice: the longest context this machine holds."""

    kind: ClassVar[str] = "longest_held"
    n_ctx: int


# How a rule picked among the plans that fit (``Picked.how``).
BEST_QUALITY_USABLE = "best_quality_usable"    # the best quality at a usable speed
NONE_USABLE = "none_usable"                    # nothing reaches a usable speed: the fastest
BEST_QUALITY_FULL_GPU = "best_quality_full_gpu"
LEAST_IN_RAM = "least_in_ram"                  # nothing fully on the GPU: the least in system RAM
FASTEST = "fastest"


@dataclass(frozen=True)
class Picked:
    """How the policy's rule chose the plan, at ``n_ctx``; ``full_gpu`` is set by the unified-memory
    rule (whether any plan ran fully on the GPU) and None elsewhere."""

    kind: ClassVar[str] = "picked"
    how: str
    n_ctx: int
    usable_tokens_per_s: float
    tokens_per_s: float | None = None       # the chosen plan's speed (none_usable says it)
    verdict: str = ""                       # where the chosen plan keeps the model (least_in_ram)
    moe_blocks_in_ram: int = 0
    n_gpu_layers: int = 0
    full_gpu: bool | None = None


Reason = Union[Placed, AsRequested, GpuEstimated, FloorLowered, LongestHeld, Picked]


def reason_data(reason: Reason) -> dict:
    """A reason as JSON-ready data: its kind and its figures."""
    return {"kind": reason.kind, **asdict(reason)}


class NothingFits(DoesNotFitError):
    """No placement holds the model: ``reason`` is the best try (verdict wont_fit, or the placement
    the user asked for), ``models`` the variants that were weighed (empty: one file), ``offers``
    the (context per conversation, conversations) pairs that would fit, for several conversations
    (``offers_checked``: they were looked for). The front ends word it; ``str()`` is plain."""

    def __init__(self, reason: Placed, *, models: tuple[str, ...] = (), offers: tuple[tuple[int, int], ...] = (),
                 offers_checked: bool = False, requested: tuple[int, int] | None = None):
        self.reason = reason
        self.models = models
        self.offers = offers
        self.offers_checked = offers_checked
        self.requested = requested     # (n_gpu_layers, n_cpu_moe) the user gave, when they did not fit
        super().__init__(f"{reason.model} at {reason.n_ctx // max(1, reason.n_seq)} tokens of context "
                         f"does not fit this machine")
