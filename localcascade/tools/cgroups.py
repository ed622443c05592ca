"""Pids cgroups: a process limit that holds for root, where RLIMIT_NPROC does not.

One cgroup per run, under the cgroup this process is in: cgroup v2 where the pids
controller is delegated to children, else the v1 pids hierarchy. The run's first process
joins it before exec; everything it starts stays in it, so the run's end can kill them all.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

from localcascade.errors import SandboxUnavailableError

_counter = itertools.count()


class PidsCgroups:
    """Makes one pids cgroup per run under ``parent`` (a folder of a pids-controller hierarchy)."""

    def __init__(self, parent: Path) -> None:
        self.parent = parent

    def new(self, max_pids: int) -> "_PidsCgroup":
        return _PidsCgroup(self.parent / f"localcascade-{os.getpid()}-{next(_counter)}", max_pids)


class _PidsCgroup:
    def __init__(self, path: Path, max_pids: int) -> None:
        self.path = path
        self.max_pids = max_pids

    def __enter__(self) -> str:
        try:
            self.path.mkdir()
            (self.path / "pids.max").write_text(str(self.max_pids))
        except OSError as err:
            self._remove()
            raise SandboxUnavailableError(f"cannot make a pids cgroup at {self.path}: {err.strerror or err}") from None
        return str(self.path / "cgroup.procs")

    def __exit__(self, *exc) -> bool:
        self._remove()
        return False

    def _remove(self) -> None:
        for _ in range(100):   # rmdir fails while a killed process is still being reaped
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)


def find_pids_cgroup() -> PidsCgroups | None:
    """A folder where this process may make pids cgroups, or None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    mounts = _cgroup_mounts()
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, relative = rest.partition(":")
        relative = relative.lstrip("/")
        if controllers == "" and "cgroup2" in mounts:          # v2: pids must be delegated to children
            parent = Path(mounts["cgroup2"]) / relative
            try:
                if "pids" in (parent / "cgroup.subtree_control").read_text().split() and os.access(parent, os.W_OK):
                    return PidsCgroups(parent)
            except OSError:
                pass
        elif "pids" in controllers.split(",") and "pids" in mounts:
            parent = Path(mounts["pids"]) / relative
            if os.access(parent, os.W_OK):
                return PidsCgroups(parent)
    return None


def _cgroup_mounts() -> dict[str, str]:
    """{"cgroup2": mount point, "pids": v1 pids mount point} from /proc/self/mounts."""
    found: dict[str, str] = {}
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        where, kind, opts = fields[1], fields[2], fields[3].split(",")
        if kind == "cgroup2":
            found.setdefault("cgroup2", where)
        elif kind == "cgroup" and "pids" in opts:
            found.setdefault("pids", where)
    return found
