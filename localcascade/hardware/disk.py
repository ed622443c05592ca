"""Free disk space where models are downloaded."""

from __future__ import annotations

import shutil
from pathlib import Path


def nearest_existing(path: Path) -> Path:
    """The directory itself, or its closest parent that exists (the cache may not exist yet)."""
    path = path.expanduser().absolute()
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return candidate
    return Path(path.anchor or "/")


def free_bytes(model_dir: Path, usage=shutil.disk_usage) -> tuple[int | None, Path]:
    """(free bytes, directory measured) for the filesystem that would hold ``model_dir``."""
    where = nearest_existing(model_dir)
    try:
        return int(usage(where).free), where
    except OSError:
        return None, where
