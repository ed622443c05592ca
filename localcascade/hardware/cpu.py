"""System RAM (psutil) and the CPU: model, cores, and the SIMD features llama.cpp cares about."""

from __future__ import annotations

import platform
from pathlib import Path

import psutil

from localcascade.hardware.facts import CPU

# Features that change llama.cpp's speed or safety, in the names Linux /proc/cpuinfo uses.
X86_FEATURES = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni",
    "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
)
# Arm names as /proc/cpuinfo writes them, and the name llama.cpp's system info uses.
ARM_FEATURES = {"asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "sve": "sve", "sve2": "sve2"}

PROC_CPUINFO = Path("/proc/cpuinfo")


def memory(ps=psutil) -> tuple[int, int]:
    """(total, available) bytes of system RAM. ``ps`` is psutil or a replay."""
    vm = ps.virtual_memory()
    return int(vm.total), int(vm.available)


def _first_value(cpuinfo: str, *keys: str) -> str | None:
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in keys and value.strip():
            return value.strip()
    return None


def features_from_cpuinfo(cpuinfo: str) -> tuple[str, ...]:
    """The features of interest listed in /proc/cpuinfo ("flags" on x86, "Features" on Arm)."""
    flags = set((_first_value(cpuinfo, "flags", "features") or "").split())
    found = [f for f in X86_FEATURES if f in flags]
    found += [name for flag, name in ARM_FEATURES.items() if flag in flags]
    return tuple(found)


def _read_cpuinfo() -> str | None:
    try:
        return PROC_CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def cpu(ps=psutil, cpuinfo: str | None = None, sysctl=None, system: str | None = None,
        machine: str | None = None) -> CPU:
    """The CPU. ``cpuinfo`` is /proc/cpuinfo's text (read when None); on macOS ``sysctl`` answers."""
    system = system if system is not None else platform.system()
    machine = machine if machine is not None else platform.machine()
    logical = ps.cpu_count(logical=True) or 1
    physical = ps.cpu_count(logical=False) or logical
    if system == "Linux":
        text = cpuinfo if cpuinfo is not None else (_read_cpuinfo() or "")
        model = _first_value(text, "model name", "hardware", "cpu model") or platform.processor()
        features = features_from_cpuinfo(text)
    elif system == "Darwin":
        if sysctl is None:
            from localcascade.hardware.apple import sysctl
        model = sysctl("machdep.cpu.brand_string") or platform.processor()
        # Every Apple Silicon core has NEON; x86 Macs list their flags in machdep.cpu.features.
        if machine in {"arm64", "aarch64"}:
            features = ("neon",) + (("dotprod",) if sysctl("hw.optional.arm.FEAT_DotProd") == "1" else ())
        else:
            flags = {f.lower().replace(".", "_") for f in (sysctl("machdep.cpu.features") or "").split()}
            flags |= {f.lower() for f in (sysctl("machdep.cpu.leaf7_features") or "").split()}
            features = tuple(f for f in X86_FEATURES if f in flags)
    else:
        model = platform.processor()
        features = ()
    return CPU(
        model=model or "unknown",
        physical_cores=int(physical),
        logical_cores=int(logical),
        features=features,
    )
