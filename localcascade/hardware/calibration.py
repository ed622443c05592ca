"""This machine's measured speeds: stored by `localcascade bench`, read back by the probe.

A calibration holds only for the CPU, the llama-cpp-python build and the thread count it was
measured with; any other machine (or a rebuilt llama.cpp) reads none and gets estimates.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields, replace
from pathlib import Path

from localcascade import safe_io, settings
from localcascade.errors import LocalCascadeError
from localcascade.hardware.facts import Calibration

_MAX_BYTES = 64 * 1024   # a few hundred bytes in practice


def path() -> Path:
    return settings.data_dir() / "speed-calibration.json"


def load(cpu_model: str | None, llama_cpp_version: str | None) -> Calibration | None:
    """The stored calibration if it was measured on this CPU with this llama.cpp build, else None.

    A missing, unreadable or malformed file is no calibration: speeds are then estimated.
    """
    if not path().exists():
        return None
    try:
        data = safe_io.load_json(safe_io.read_text_input(path(), what="speed calibration", limit=_MAX_BYTES,
                                                          allow_pipe=False))
        known = {f.name for f in fields(Calibration)}
        calibration = Calibration(**{k: v for k, v in data.items() if k in known})
        if not (calibration.cpu_scale > 0 and calibration.cpu_prompt_flops > 0 and calibration.threads > 0):
            return None
        size = calibration.cpu_bytes_per_token
        if size is not None:   # what the calibration can speak for (speed.speaks_for): a positive number
            if isinstance(size, bool) or not float(size) > 0:
                return None
            calibration = replace(calibration, cpu_bytes_per_token=float(size))
    except (OSError, LocalCascadeError, ValueError, TypeError, AttributeError):
        return None
    if calibration.cpu_model != cpu_model or calibration.llama_cpp_version != llama_cpp_version:
        return None
    return calibration


def save(calibration: Calibration) -> Path:
    """Store ``calibration`` (atomically: a reader never sees half a file; never onto a device or
    folder). OSError or LocalCascadeError if it cannot."""
    target = path()
    target.parent.mkdir(parents=True, exist_ok=True)
    return safe_io.write_text_atomic(target, json.dumps(asdict(calibration), indent=2) + "\n",
                                     what="speed calibration", overwrite=True)
