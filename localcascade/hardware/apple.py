"""Apple Silicon: the unified memory, seen as one GPU holding the share Metal lets a process wire."""

from __future__ import annotations

import platform
import subprocess

from localcascade.hardware import profiles
from localcascade.hardware.facts import GPU
from localcascade.hardware.findings import GPUFindings


def sysctl(name: str) -> str | None:
    """``sysctl -n NAME``, or None when the key does not exist or sysctl is missing."""
    try:
        result = subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    value = result.stdout.strip()
    return value if result.returncode == 0 and value else None


def is_apple_silicon(system: str, machine: str) -> bool:
    return system == "Darwin" and machine in {"arm64", "aarch64"}


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def gpus(sysctl=sysctl, system: str | None = None, machine: str | None = None) -> GPUFindings:
    """The Apple GPU on an Apple Silicon Mac; nothing elsewhere. ``sysctl(name) -> str | None``."""
    system = system if system is not None else platform.system()
    machine = machine if machine is not None else platform.machine()
    found = GPUFindings()
    if not is_apple_silicon(system, machine):
        return found
    memory = _int(sysctl("hw.memsize"))
    if not memory:
        found.warnings.append("Apple Silicon Mac, but `sysctl hw.memsize` gave no memory size")
        return found
    # iogpu.wired_limit_mb (macOS 14+) replaces Metal's default limit when set above 0.
    wired_limit_mb = _int(sysctl("iogpu.wired_limit_mb"))
    if wired_limit_mb:
        usable = min(wired_limit_mb * 1024**2, memory)
        found.notes.append(f"Metal memory limit set by iogpu.wired_limit_mb={wired_limit_mb}")
    else:
        usable = profiles.metal_usable_bytes(memory)
        found.notes.append(
            f"Metal may use {usable / memory:.0%} of unified memory (macOS default; "
            "raise it with `sudo sysctl iogpu.wired_limit_mb=N`)"
        )
    name = sysctl("machdep.cpu.brand_string") or "Apple Silicon"
    found.gpus.append(
        GPU(
            name=name,
            vram_total_bytes=usable,
            # What other programs hold is not visible without Metal; the planner keeps a margin.
            vram_free_bytes=usable,
            vendor="apple",
            memory_bandwidth_bytes_per_s=profiles.bandwidth_for_gpu(name, usable),
            unified_memory=True,
        )
    )
    return found
