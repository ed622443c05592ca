"""The local model store. (Being written: for now it only resolves existing local paths.)"""

from __future__ import annotations

from pathlib import Path

from localcascade.errors import ModelNotFoundError


def find_local_model(spec: str) -> Path:
    """Return the local GGUF file a user named: a path, or a name the store knows."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    raise ModelNotFoundError(f"no model file or known model named {spec!r} (see `localcascade list`)")
