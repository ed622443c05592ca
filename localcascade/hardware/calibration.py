"""This machine's measured speeds: stored by `localcascade bench`, read back by the probe.

A calibration holds only for the CPU, the llama-cpp-python build and the thread count it was
measured with; any other machine (or a rebuilt llama.cpp) reads none and gets estimates.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, fields
from pathlib import Path

from localcascade import settings
from localcascade.hardware.facts import Calibration


def path() -> Path:
    return settings.data_dir() / "speed-calibration.json"


def load(cpu_model: str | None, llama_cpp_version: str | None) -> Calibration | None:
    """The stored calibration if it was measured on this CPU with this llama.cpp build, else None.

    A missing, unreadable or malformed file is no calibration: speeds are then estimated.
    """
    try:
        data = json.loads(path().read_text(encoding="utf-8"))
        known = {f.name for f in fields(Calibration)}
        calibration = Calibration(**{k: v for k, v in data.items() if k in known})
        if not (calibration.cpu_scale > 0 and calibration.cpu_prompt_flops > 0 and calibration.threads > 0):
            return None
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if calibration.cpu_model != cpu_model or calibration.llama_cpp_version != llama_cpp_version:
        return None
    return calibration


def save(calibration: Calibration) -> Path:
    """Store ``calibration`` (atomically: a reader never sees half a file). OSError if it cannot."""
    target = path()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(asdict(calibration), indent=2) + "\n")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
