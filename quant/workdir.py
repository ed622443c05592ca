"""The temporary folder a quantization writes into, and the clean-up of abandoned ones.

Output is written inside ``.<name>.<random>.partial/`` next to the final file and renamed out
only when complete. Ctrl-C and errors remove the folder, but a killed process (SIGKILL, a
power cut) cannot, and the folder can hold tens of GB. Each live folder therefore holds an
OS file lock for as long as its quantization runs; any later quantization into the same
directory removes the folders whose lock nobody holds.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

_LOCK_NAME = ".lock"
# A folder younger than this may belong to a run that has not taken its lock yet.
_GRACE_S = 60.0


@contextlib.contextmanager
def work_dir_for(dst: Path) -> Iterator[Path]:
    """A fresh, locked work folder next to ``dst``; removed with everything in it on exit."""
    folder = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
    lock = FileLock(folder / _LOCK_NAME)
    try:
        lock.acquire()
        yield folder
    finally:
        lock.release()
        shutil.rmtree(folder, ignore_errors=True)


def sweep_abandoned(directory: Path) -> int:
    """Remove the work folders in ``directory`` that no running quantization holds; bytes freed."""
    freed = 0
    for folder in directory.glob(".*.gguf.*.partial"):
        if not folder.is_dir() or time.time() - folder.stat().st_mtime < _GRACE_S:
            continue
        lock = FileLock(folder / _LOCK_NAME)
        try:
            lock.acquire(timeout=0)
        except (Timeout, OSError):
            continue  # a live run holds it (or we cannot tell): leave it
        try:
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                freed += size
        finally:
            lock.release()
    return freed
