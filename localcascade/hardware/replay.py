"""Recorded answers of the outside world (NVML, psutil), replayed with the same function names.

The probe modules take the library they talk to as a parameter; a replay stands in for it, so
tests (and bug reports from machines we do not have) exercise the real probe code on real answers.

Hidden environment variable, for tests and for reproducing a user's report:

| variable                   | effect                                                            |
|----------------------------|-------------------------------------------------------------------|
| LOCALCASCADE_NVML_REPLAY   | path of an NVML recording; the NVIDIA probe replays it            |
| LOCALCASCADE_LLAMA_REPLAY  | path of a llama-cpp-python build recording; the build probe uses it |

Record this machine's NVML answers with ``python -m localcascade.hardware.replay > gpu.json``.

Recording format (JSON): top-level keys are NVML function names with the value they returned;
``devices`` is a list with one object per device index, keyed the same way (per-device calls).
``nvmlDeviceGetMaxClockInfo`` maps a clock type name ("NVML_CLOCK_MEM") to MHz. Any value may be
``{"raise": "NVMLError_GpuIsLost"}``: the call raises that real ``pynvml`` exception class.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from localcascade.errors import HardwareError

NVML_REPLAY_ENV = "LOCALCASCADE_NVML_REPLAY"
LLAMA_REPLAY_ENV = "LOCALCASCADE_LLAMA_REPLAY"

_CLOCK_NAMES = ("NVML_CLOCK_GRAPHICS", "NVML_CLOCK_SM", "NVML_CLOCK_MEM", "NVML_CLOCK_VIDEO")

# Device functions the probe (and the recorder) use; each takes a handle first.
_DEVICE_CALLS = (
    "nvmlDeviceGetName",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetCudaComputeCapability",
    "nvmlDeviceGetMaxClockInfo",
    "nvmlDeviceGetMemoryBusWidth",
)


def load_recording(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise HardwareError(f"cannot read hardware recording {path}: {err.strerror}") from err
    except ValueError as err:
        raise HardwareError(f"hardware recording {path} is not valid JSON: {err}") from err


class NVMLReplay:
    """Answers the pynvml calls the probe makes from a recording, raising pynvml's own errors."""

    def __init__(self, recording: dict):
        import pynvml  # constants and exception classes are the real ones

        self._pynvml = pynvml
        self._rec = recording
        self.initialized = False

    @classmethod
    def from_file(cls, path: str | Path) -> "NVMLReplay":
        return cls(load_recording(path))

    def __getattr__(self, name: str) -> Any:
        # Constants (NVML_CLOCK_MEM) and exception classes (NVMLError_*) come from pynvml itself.
        return getattr(self._pynvml, name)

    def _answer(self, value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"raise"}:
            error_class = getattr(self._pynvml, value["raise"])
            raise error_class()
        return value

    def _top(self, name: str) -> Any:
        if name not in self._rec:
            # A call the recording never saw: what an old driver without that function says.
            raise self._pynvml.NVMLError_FunctionNotFound()
        return self._answer(self._rec[name])

    def _device(self, handle: int, name: str) -> Any:
        devices = self._rec.get("devices", [])
        if not isinstance(handle, int) or not 0 <= handle < len(devices):
            raise self._pynvml.NVMLError_InvalidArgument()
        entry = devices[handle]
        if name not in entry:
            raise self._pynvml.NVMLError_NotSupported()
        return self._answer(entry[name])

    # --- library lifetime -------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self._answer(self._rec.get("nvmlInit"))
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self._answer(self._rec.get("nvmlShutdown"))
        self.initialized = False

    # --- system -----------------------------------------------------------------------------
    def nvmlSystemGetDriverVersion(self) -> str:
        return self._top("nvmlSystemGetDriverVersion")

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self._top("nvmlSystemGetCudaDriverVersion")

    def nvmlDeviceGetCount(self) -> int:
        return self._top("nvmlDeviceGetCount")

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        devices = self._rec.get("devices", [])
        if 0 <= index < len(devices) and "nvmlDeviceGetHandleByIndex" in devices[index]:
            self._answer(devices[index]["nvmlDeviceGetHandleByIndex"])
        return index

    # --- per device -------------------------------------------------------------------------
    def nvmlDeviceGetName(self, handle: int) -> str:
        return self._device(handle, "nvmlDeviceGetName")

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self._device(handle, "nvmlDeviceGetUUID")

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(**self._device(handle, "nvmlDeviceGetMemoryInfo"))

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        return tuple(self._device(handle, "nvmlDeviceGetCudaComputeCapability"))

    def nvmlDeviceGetMaxClockInfo(self, handle: int, clock_type: int) -> int:
        clocks = self._device(handle, "nvmlDeviceGetMaxClockInfo")
        name = _CLOCK_NAMES[clock_type] if 0 <= clock_type < len(_CLOCK_NAMES) else str(clock_type)
        if name not in clocks:
            raise self._pynvml.NVMLError_NotSupported()
        return self._answer(clocks[name])

    def nvmlDeviceGetMemoryBusWidth(self, handle: int) -> int:
        return self._device(handle, "nvmlDeviceGetMemoryBusWidth")


def nvml_from_environment():
    """The NVML to talk to: a replay when LOCALCASCADE_NVML_REPLAY names a recording, else pynvml."""
    path = os.environ.get(NVML_REPLAY_ENV)
    if path:
        return NVMLReplay.from_file(path)
    import pynvml

    return pynvml


class PsutilReplay:
    """Answers psutil.virtual_memory() and psutil.cpu_count() from a recording:
    ``{"virtual_memory": {"total": ..., "available": ...}, "cpu_count": {"logical": 16, "physical": 8}}``.
    """

    def __init__(self, recording: dict):
        self._rec = recording

    @classmethod
    def from_file(cls, path: str | Path) -> "PsutilReplay":
        return cls(load_recording(path))

    def virtual_memory(self) -> SimpleNamespace:
        return SimpleNamespace(**self._rec["virtual_memory"])

    def cpu_count(self, logical: bool = True) -> int | None:
        return self._rec["cpu_count"]["logical" if logical else "physical"]


class LlamaBuildReplay:
    """Stands in for the llama_cpp module's build queries, from a recording:
    ``{"__version__": "0.3.36", "llama_supports_gpu_offload": true, "llama_print_system_info": "..."}``.
    """

    def __init__(self, recording: dict):
        self.__version__ = recording.get("__version__")
        self._rec = recording

    @classmethod
    def from_file(cls, path: str | Path) -> "LlamaBuildReplay":
        return cls(load_recording(path))

    def llama_supports_gpu_offload(self) -> bool:
        return bool(self._rec["llama_supports_gpu_offload"])

    def llama_print_system_info(self) -> bytes:
        return self._rec["llama_print_system_info"].encode()

    def wheel_tags(self) -> tuple[str, ...]:
        return tuple(self._rec.get("wheel_tags", ()))


def llama_from_environment():
    """A build replay when LOCALCASCADE_LLAMA_REPLAY names a recording, else None (import llama_cpp)."""
    path = os.environ.get(LLAMA_REPLAY_ENV)
    return LlamaBuildReplay.from_file(path) if path else None


def _record_call(call, *args) -> Any:
    import pynvml

    try:
        value = call(*args)
    except pynvml.NVMLError as err:
        return {"raise": type(err).__name__}
    if hasattr(value, "total") and hasattr(value, "free"):
        return {"total": value.total, "free": value.free, "used": value.used}
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return list(value) if isinstance(value, tuple) else value


def record(nvml=None) -> dict:
    """What this machine's NVML answers to the probe's calls, in the replay format."""
    if nvml is None:
        import pynvml as nvml
    recording: dict[str, Any] = {"nvmlInit": _record_call(nvml.nvmlInit)}
    if recording["nvmlInit"] is not None:
        return recording
    try:
        for name in ("nvmlSystemGetDriverVersion", "nvmlSystemGetCudaDriverVersion", "nvmlDeviceGetCount"):
            recording[name] = _record_call(getattr(nvml, name))
        count = recording["nvmlDeviceGetCount"]
        recording["devices"] = []
        for index in range(count if isinstance(count, int) else 0):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            except nvml.NVMLError as err:
                recording["devices"].append({"nvmlDeviceGetHandleByIndex": {"raise": type(err).__name__}})
                continue
            device: dict[str, Any] = {}
            for name in _DEVICE_CALLS:
                if name == "nvmlDeviceGetMaxClockInfo":
                    device[name] = {
                        clock: _record_call(nvml.nvmlDeviceGetMaxClockInfo, handle, getattr(nvml, clock))
                        for clock in ("NVML_CLOCK_MEM", "NVML_CLOCK_SM")
                    }
                else:
                    device[name] = _record_call(getattr(nvml, name), handle)
            recording["devices"].append(device)
    finally:
        _record_call(nvml.nvmlShutdown)
    return recording


if __name__ == "__main__":
    json.dump(record(), sys.stdout, indent=2)
    sys.stdout.write("\n")
