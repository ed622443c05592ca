"""The hardware a plan is made for: a profile (--gpu), manual sizes (--vram/--ram), or this machine.

Whatever is unknown (a bandwidth NVML could not give, RAM bandwidth of a detected machine) is
filled from profiles/hardware/_defaults.json, and each assumption is stated in ``notes``.
"""

from __future__ import annotations

from dataclasses import replace

from localcascade.errors import HardwareChoiceError
from localcascade.hardware import nvidia, profiles
from localcascade.hardware.facts import GPU, Hardware
from localcascade.hardware.probe import detect
from localcascade.units import format_bytes, parse_size


def hardware_for(gpu: str | None = None, vram: str | None = None, ram: str | None = None,
                 detect_fn=detect) -> Hardware:
    """Hardware from a profile name, manual sizes ("24GiB"), or ``detect_fn()``; ``ram`` alone
    overrides the RAM of a profile or of the detected machine.
    """
    if gpu and vram:
        raise HardwareChoiceError()
    ram_bytes = _positive_size(ram, "ram") if ram else None
    if gpu:
        hardware = profiles.load_profile(gpu)
    elif vram:
        hardware = _manual(detect_fn(), _positive_size(vram, "vram"))
    else:
        hardware = detect_fn()
    if ram_bytes is not None:
        hardware = with_ram(hardware, ram_bytes)
    return fill_unknown_bandwidths(hardware)


def _positive_size(text: str, setting: str) -> int:
    size = parse_size(text)
    if size <= 0:
        raise HardwareChoiceError(setting, text)
    return size


def _manual(base: Hardware, vram_bytes: int) -> Hardware:
    """This machine's RAM, CPU and disk, with one NVIDIA GPU of the size the user gave and the
    CUDA build it would need (the question is what *would* fit, not what this build can do).
    """
    manual_gpu = GPU(name=f"GPU with {format_bytes(vram_bytes)}", vram_total_bytes=vram_bytes,
                     vram_free_bytes=vram_bytes, vendor="nvidia")
    note = f"VRAM given by hand: {format_bytes(vram_bytes)}, all of it free, on an NVIDIA GPU with CUDA"
    build = replace(profiles.build_for_vendor("nvidia"), version=base.llama_cpp.version)
    gpu_notes_dropped = tuple(n for n in base.notes if not n.startswith(nvidia.NO_DRIVER_NOTE))
    return replace(base, gpus=(manual_gpu,), source="manual", llama_cpp=build,
                   notes=gpu_notes_dropped + (note,))


def with_ram(hardware: Hardware, ram_bytes: int) -> Hardware:
    """The same machine with ``ram_bytes`` of system RAM, less the usual reserve for the OS.
    On unified memory the GPU's share follows the new size.
    """
    reserve = int(profiles.defaults()["os_ram_reserve_bytes"])
    gpus = tuple(
        replace(g, vram_total_bytes=profiles.metal_usable_bytes(ram_bytes),
                vram_free_bytes=profiles.metal_usable_bytes(ram_bytes)) if g.unified_memory else g
        for g in hardware.gpus
    )
    note = (f"system RAM given by hand: {format_bytes(ram_bytes)}, "
            f"{format_bytes(reserve)} of it kept for the OS")
    notes = tuple(n for n in hardware.notes if not n.startswith("system RAM assumed")) + (note,)
    return replace(hardware, gpus=gpus, ram_total_bytes=ram_bytes,
                   ram_available_bytes=max(ram_bytes - reserve, 0), notes=notes)


def fill_unknown_bandwidths(hardware: Hardware) -> Hardware:
    """Known bandwidths are kept; unknown ones become the typical value of their class, stated."""
    notes = list(hardware.notes)
    gpus = []
    for g in hardware.gpus:
        if g.memory_bandwidth_bytes_per_s is None:
            bandwidth = profiles.bandwidth_for_gpu(g.name, g.vram_total_bytes)
            if bandwidth is None:
                bandwidth, typical = profiles.default_gpu_bandwidth(g.vram_total_bytes)
                notes.append(f"{g.name}: memory bandwidth assumed {bandwidth / 1e9:.0f} GB/s "
                             f"(typical of its VRAM class: {typical})")
            g = replace(g, memory_bandwidth_bytes_per_s=bandwidth)
        gpus.append(g)
    ram_bandwidth = hardware.ram_bandwidth_bytes_per_s
    if ram_bandwidth is None:
        unified = next((g for g in gpus if g.unified_memory), None)
        if unified is not None:
            ram_bandwidth = unified.memory_bandwidth_bytes_per_s  # one memory, one bandwidth
        else:
            defaults = profiles.defaults()
            ram_bandwidth = float(defaults["ram_bandwidth_bytes_per_s"])
            notes.append(f"system RAM bandwidth assumed {ram_bandwidth / 1e9:.0f} GB/s "
                         f"({defaults['ram_bandwidth_typical']})")
    return replace(hardware, gpus=tuple(gpus), ram_bandwidth_bytes_per_s=ram_bandwidth,
                   notes=tuple(notes))
