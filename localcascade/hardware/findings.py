"""What one GPU source found: the GPUs, plus notes and warnings for the user, never an exception."""

from __future__ import annotations

from dataclasses import dataclass, field

from localcascade.hardware.facts import GPU


@dataclass
class GPUFindings:
    gpus: list[GPU] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)      # normal absences ("no NVIDIA driver")
    warnings: list[str] = field(default_factory=list)   # a GPU is there but could not be read
