"""The one way a command opens a model: resolve the spec, probe the machine once, plan, load.

``choose_model`` answers "which file, and how will it be loaded?" without loading anything, so a
front end can show the plan (or refuse) before the minutes a load can take; ``open_model`` loads
that choice. ask, run, serve and bench all go through these two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from localcascade.hardware.facts import Hardware
from localcascade.planning.plan import Plan, PlanRequest

if TYPE_CHECKING:   # the engine imports llama_cpp: only when a model is loaded
    from localcascade.engine.session import Engine


@dataclass(frozen=True)
class ModelChoice:
    """A model file and the plan it will be loaded with, on the hardware that plan was made for."""

    path: Path
    plan: Plan
    hardware: Hardware


def choose_model(spec: str | None, request: PlanRequest | None = None, *,
                 hardware: Hardware | None = None) -> ModelChoice:
    """The file ``spec`` names (with none, the best pulled variant) and its plan; the machine is
    probed once, here, unless ``hardware`` is given. Raises the resolver's and planner's errors."""
    from localcascade.hardware.resolve import hardware_for
    from localcascade.resolve.plans import plan_for_file
    from localcascade.resolve.resolver import resolve

    request = request or PlanRequest()
    if hardware is None:
        hardware = hardware_for()   # this machine, unknown bandwidths filled in
    path = resolve(spec, need="file", hardware=hardware, request=request).path
    return ModelChoice(path, plan_for_file(path, request, hardware), hardware)


def open_model(choice: ModelChoice, *, chat_template: str | None = None, verbose: bool = False,
               progress: Callable[[float], None] | None = None, for_chat: bool = True, grammar: str | None = None,
               threads: int | None = None, for_tools: bool = False) -> "Engine":
    """Load ``choice`` with its plan: the one place a command loads a model."""
    from localcascade.engine.session import Engine

    return Engine.load(choice.path, choice.plan, chat_template=chat_template, verbose=verbose, progress=progress,
                       for_chat=for_chat, grammar=grammar, threads=threads, for_tools=for_tools)
