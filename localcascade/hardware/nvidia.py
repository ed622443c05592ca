"""NVIDIA GPUs through NVML (the nvidia-ml-py package, module ``pynvml``).

No driver, no NVML library, or NVML errors give an empty list and a note or warning, never an
exception: a machine without an NVIDIA GPU is a normal machine.
"""

from __future__ import annotations

from localcascade.hardware import profiles
from localcascade.hardware.facts import GPU
from localcascade.hardware.findings import GPUFindings
from localcascade.hardware.replay import nvml_from_environment


# Starts the note for a machine without the NVIDIA driver (other modules drop it where moot).
NO_DRIVER_NOTE = "no NVIDIA GPU"


def _text(value) -> str:
    # Older pynvml releases return bytes, newer ones str.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def cuda_version_text(version: int) -> str:
    """NVML's integer CUDA driver version (12060) as people write it (12.6)."""
    return f"{version // 1000}.{version % 1000 // 10}"


def bandwidth_from_clocks(max_memory_clock_mhz: int, bus_width_bits: int) -> float:
    """Peak memory bandwidth in bytes/s. NVML's memory clock is half the per-pin data rate for
    GDDR and HBM alike (a 4090 reports 10501 MHz for 21 Gbps GDDR6X), hence the factor 2.
    """
    return max_memory_clock_mhz * 1e6 * 2 * bus_width_bits / 8


def _optional(nvml, call, *args):
    """A query some GPUs or drivers do not answer (NotSupported, FunctionNotFound): None then."""
    try:
        return call(*args)
    except nvml.NVMLError:
        return None


def _describe_start_failure(nvml, err) -> tuple[str, bool]:
    """(message, is_warning) for an nvmlInit failure; a missing driver is a note, not a problem."""
    if isinstance(err, (nvml.NVMLError_LibraryNotFound, nvml.NVMLError_DriverNotLoaded)):
        return f"{NO_DRIVER_NOTE}: the NVIDIA driver is not available ({err})", False
    return f"NVIDIA driver present but NVML failed to start: {err}", True


def gpus(nvml=None) -> GPUFindings:
    """Every NVIDIA GPU NVML can describe. ``nvml`` is pynvml or a replay of a recording."""
    found = GPUFindings()
    if nvml is None:
        try:
            nvml = nvml_from_environment()
        except ImportError:
            found.notes.append(f"{NO_DRIVER_NOTE}: the nvidia-ml-py package is not installed")
            return found
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as err:
        message, is_warning = _describe_start_failure(nvml, err)
        (found.warnings if is_warning else found.notes).append(message)
        return found
    try:
        driver = _optional(nvml, nvml.nvmlSystemGetDriverVersion)
        cuda = _optional(nvml, nvml.nvmlSystemGetCudaDriverVersion)
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as err:
            found.warnings.append(f"NVIDIA driver present but cannot count GPUs: {err}")
            return found
        for index in range(count):
            try:
                found.gpus.append(_device(nvml, index, driver, cuda))
            except nvml.NVMLError as err:
                found.warnings.append(f"NVIDIA GPU {index} could not be queried: {err}")
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass
    return found


def _device(nvml, index: int, driver, cuda) -> GPU:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = _text(nvml.nvmlDeviceGetName(handle))
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    capability = _optional(nvml, nvml.nvmlDeviceGetCudaComputeCapability, handle)
    clock = _optional(nvml, nvml.nvmlDeviceGetMaxClockInfo, handle, nvml.NVML_CLOCK_MEM)
    bus_width = _optional(nvml, nvml.nvmlDeviceGetMemoryBusWidth, handle)
    if clock and bus_width:
        bandwidth = bandwidth_from_clocks(clock, bus_width)
    else:
        bandwidth = profiles.bandwidth_for_gpu(name, int(memory.total))
    return GPU(
        name=name,
        vram_total_bytes=int(memory.total),
        vram_free_bytes=int(memory.free),
        vendor="nvidia",
        index=index,
        driver_version=_text(driver) if driver is not None else None,
        cuda_version=cuda_version_text(cuda) if cuda else None,
        compute_capability=f"{capability[0]}.{capability[1]}" if capability else None,
        memory_bandwidth_bytes_per_s=bandwidth,
    )
