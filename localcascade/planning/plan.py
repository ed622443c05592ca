"""The Plan: the one object the planner hands to the engine.

It says how to load a model (context, KV types, flash attention, GPU layers,
expert tensors kept in system RAM, batch sizes) and what the memory model
predicts that will cost on each device, with the reasons (planning/reasons.py: each one's kind
and figures; the front ends word them). It holds plain data only, so it can be compared and
serialised to JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from localcascade.planning.reasons import Reason, reason_data

# Verdicts, best first.
FULL_GPU = "full_gpu"            # every layer and every expert tensor on the GPU(s)
EXPERTS_IN_RAM = "experts_in_ram"  # all layers on GPU but the expert tensors of N MoE blocks in RAM
PARTIAL = "partial"              # only some layers on the GPU
CPU_ONLY = "cpu_only"            # nothing on a GPU
WONT_FIT = "wont_fit"            # not even system RAM holds it
VERDICTS = (FULL_GPU, EXPERTS_IN_RAM, PARTIAL, CPU_ONLY, WONT_FIT)


@dataclass(frozen=True)
class Components:
    """Bytes one device holds, by what they are for."""

    weights: int = 0
    kv: int = 0
    recurrent: int = 0
    compute: int = 0
    output: int = 0
    overhead: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.recurrent + self.compute + self.output + self.overhead

    def __add__(self, other: "Components") -> "Components":
        return Components(**{k: getattr(self, k) + getattr(other, k) for k in asdict(self)})


@dataclass(frozen=True)
class Plan:
    """How to load one model file, and what that is predicted to cost."""

    model: str                 # variant name ("Q4_K_M") or file label
    n_ctx: int
    type_k: str = "f16"        # KV cache types: f16, q8_0, q4_0
    type_v: str = "f16"
    flash_attn: bool = True
    n_gpu_layers: int = 0      # llama.cpp meaning: how many repeating layers (+1 = output layer too)
    n_cpu_moe: int = 0         # llama.cpp's --n-cpu-moe: expert tensors of layers 0..N-1 stay in system RAM
    moe_blocks_in_ram: int = 0 # how many MoE blocks that is (what a user wants to read)
    n_batch: int = 2048
    n_ubatch: int = 512
    n_seq: int = 1             # sequences (conversations) in the context; n_ctx holds them all
    n_rs_seq: int = 0          # draft tokens a step verifies (0: no drafting); on a recurrent model
                               # also the state snapshots kept per sequence to roll a rejected draft back
    verdict: str = CPU_ONLY
    gpu: Components = field(default_factory=Components)   # summed over GPUs
    ram: Components = field(default_factory=Components)
    tokens_per_s: float | None = None          # generation, short context
    prompt_tokens_per_s: float | None = None   # reading a prompt
    speed_measured: bool = False               # from this machine's `bench` calibration, else estimated
    tokens_per_s_low: float | None = None      # the range an estimate claims (a measured figure: itself)
    tokens_per_s_high: float | None = None
    prompt_tokens_per_s_low: float | None = None
    prompt_tokens_per_s_high: float | None = None
    reasons: tuple[Reason, ...] = ()
    alternatives: tuple[Alternative, ...] = ()   # other plans of the same model and what each trades
    source: str = "header"     # "header" (a real file's header) or "catalog" (built-in facts)

    def prompt_seconds(self, tokens: int | None = None) -> float | None:
        """How long reading ``tokens`` (default: a full context) of prompt takes at the predicted speed."""
        if not self.prompt_tokens_per_s:
            return None
        return (self.n_ctx if tokens is None else tokens) / self.prompt_tokens_per_s

    @property
    def gpu_bytes(self) -> int:
        return self.gpu.total

    @property
    def ram_bytes(self) -> int:
        return self.ram.total

    def to_dict(self) -> dict:
        """The plan as JSON-ready data; its reasons and alternatives as records (``reason_data``,
        ``alternative_data``), which the front ends also put into words."""
        data = {k: v for k, v in asdict(self).items() if k not in ("reasons", "alternatives")}
        data["gpu_bytes"] = self.gpu_bytes
        data["ram_bytes"] = self.ram_bytes
        data["reason_data"] = [reason_data(r) for r in self.reasons]
        data["alternative_data"] = [{"trade": a.trade, "plan": a.plan.to_dict()} for a in self.alternatives]
        return data


# Draft tokens a step verifies (engine/drafts.py), chosen by measurement (docs/performance.md, "Drafts").
DRAFT_TOKENS = 8


@dataclass(frozen=True)
class Alternative:
    """Another plan of the same model beside the chosen one, and what it trades:
    "higher quality", "longer context" or "faster"."""

    trade: str
    plan: Plan


@dataclass(frozen=True)
class PlanRequest:
    """What the user asked for; None means "let the planner choose".

    Set values are honoured as given (user overrides win) but still checked
    against the memory model: one that cannot fit raises DoesNotFitError.
    """

    n_ctx: int | None = None
    think: bool = True                 # thinking on: the policy's context floor is larger
    type_k: str | None = None
    type_v: str | None = None
    flash_attn: bool | None = None
    n_gpu_layers: int | None = None
    n_cpu_moe: int | None = None
    n_batch: int | None = None
    n_ubatch: int | None = None
    n_seq: int | None = None     # conversations held at once (the server's --parallel); n_ctx is per conversation
    draft_tokens: int | None = None   # drafts verified per step (engine/drafts.py); 0: plain decoding;
                                      # None: DRAFT_TOKENS where drafting pays (placement.place)
    prefer: str | None = None    # another rule than the machine's: "quality", "speed" or "context" (policy.py)
