"""The machine this runs on, as a Hardware: one small source per kind of fact, composed here."""

from __future__ import annotations

from pathlib import Path

from localcascade import settings
from localcascade.hardware import amd, apple, calibration, cpu, disk, llama_build, nvidia
from localcascade.hardware.facts import Hardware
from localcascade.hardware.findings import GPUFindings


def detect_gpus() -> GPUFindings:
    """NVIDIA, then Apple, then AMD GPUs; each source reports nothing where it does not apply."""
    found = GPUFindings()
    for source in (nvidia.gpus, apple.gpus, amd.gpus):
        part = source()
        found.gpus.extend(part.gpus)
        found.warnings.extend(part.warnings)
        # "No NVIDIA driver" is noise once another vendor's GPU was found.
        found.notes.extend(part.notes)
    if found.gpus:
        found.notes = [n for n in found.notes if not n.startswith(nvidia.NO_DRIVER_NOTE)]
    return found


def detect(model_dir: Path | None = None) -> Hardware:
    """Everything the planner needs to know about this machine. Never raises for missing hardware."""
    gpus = detect_gpus()
    ram_total, ram_available = cpu.memory()
    model_dir = model_dir if model_dir is not None else settings.hf_hub_cache()
    free, measured = disk.free_bytes(model_dir)
    notes = list(gpus.notes)
    if measured != model_dir.expanduser().absolute():
        notes.append(f"{model_dir} does not exist yet; free space measured at {measured}")
    this_cpu, build = cpu.cpu(), llama_build.build()
    return Hardware(
        gpus=tuple(gpus.gpus),
        ram_total_bytes=ram_total,
        ram_available_bytes=ram_available,
        cpu=this_cpu,
        disk_free_bytes=free,
        llama_cpp=build,
        calibration=calibration.load(this_cpu.model, build.version),
        source="detected",
        model_dir=str(model_dir),
        notes=tuple(notes),
        warnings=tuple(gpus.warnings),
    )
