"""The run's cgroups: a process limit that holds for root, and one memory limit for the whole call.

RLIMIT_NPROC does not bind root, and RLIMIT_AS binds each process alone (three children of
2 GiB each hold 6 GiB together). A cgroup holds every process of the call at once, whatever
its uid: ``pids.max`` counts them all, and ``memory.max`` (v2) or ``memory.limit_in_bytes``
(v1) counts all their memory, the pages they write in the sandbox's tmpfs folders included.

One cgroup per run and per controller, under the cgroup this process is in: cgroup v2 where
the controller is delegated to children (``cgroup.subtree_control``), else the controller's
v1 hierarchy. The run's first process joins them before exec; everything it starts stays in
them, so the run's end can kill them all, and a memory overrun is killed by the kernel.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

from localcascade.errors import SandboxUnavailableError

_counter = itertools.count()
CONTROLLERS = ("pids", "memory")


@dataclass(frozen=True)
class CgroupPlace:
    """A folder where this process may make cgroups, and the controllers they get there."""

    parent: Path
    controllers: frozenset[str]
    v2: bool

    def describe(self) -> str:
        return f"cgroup {'v2' if self.v2 else 'v1'}"


class RunCgroups:
    """Makes the cgroups of one run in ``places`` (one folder each; v2 gives both controllers in one)."""

    def __init__(self, places: list[CgroupPlace]) -> None:
        self.places = places

    def has(self, controller: str) -> bool:
        return any(controller in place.controllers for place in self.places)

    def place_of(self, controller: str) -> CgroupPlace | None:
        return next((place for place in self.places if controller in place.controllers), None)

    def new(self, max_pids: int, memory_bytes: int | None) -> "RunCgroup":
        name = f"localcascade-{os.getpid()}-{next(_counter)}"
        return RunCgroup([(place, place.parent / name) for place in self.places], max_pids, memory_bytes)


class RunCgroup:
    """The cgroups of one run, made on enter and removed on exit."""

    def __init__(self, folders: list[tuple[CgroupPlace, Path]], max_pids: int, memory_bytes: int | None) -> None:
        self.folders = folders
        self.max_pids = max_pids
        self.memory_bytes = memory_bytes

    @property
    def limits_memory(self) -> bool:
        return self.memory_bytes is not None and any("memory" in place.controllers for place, _ in self.folders)

    @property
    def procs_files(self) -> list[str]:
        """The files the run's first process writes its pid to (one per hierarchy)."""
        return [str(folder / "cgroup.procs") for _, folder in self.folders]

    def __enter__(self) -> "RunCgroup":
        try:
            for place, folder in self.folders:
                folder.mkdir()
                if "pids" in place.controllers:
                    (folder / "pids.max").write_text(str(self.max_pids))
                if "memory" in place.controllers and self.memory_bytes is not None:
                    _limit_memory(folder, place.v2, self.memory_bytes)
        except OSError as err:
            self._remove()
            raise SandboxUnavailableError(f"cannot make the run's cgroup at {folder}: {err.strerror or err}") from None
        return self

    def __exit__(self, *exc) -> bool:
        self._remove()
        return False

    def pids(self) -> list[int]:
        """The processes still in the run's cgroups."""
        found: set[int] = set()
        for procs in self.procs_files:
            try:
                found.update(int(p) for p in Path(procs).read_text().split())
            except (OSError, ValueError):
                pass
        return sorted(found)

    def memory_killed(self) -> bool:
        """Whether the kernel killed a process of this run for going past the memory limit."""
        for place, folder in self.folders:
            if "memory" not in place.controllers:
                continue
            name = "memory.events" if place.v2 else "memory.oom_control"
            try:
                for line in (folder / name).read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill" and int(value) > 0:
                        return True
            except (OSError, ValueError):
                pass
        return False

    def _remove(self) -> None:
        for _, folder in self.folders:
            for _ in range(100):   # rmdir fails while a killed process is still being reaped
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def _limit_memory(folder: Path, v2: bool, memory_bytes: int) -> None:
    """Memory and swap together at ``memory_bytes``: swap must not be a way past the limit."""
    if v2:
        (folder / "memory.max").write_text(str(memory_bytes))
        _write_if_present(folder / "memory.swap.max", "0")
        return
    (folder / "memory.limit_in_bytes").write_text(str(memory_bytes))
    if not _write_if_present(folder / "memory.memsw.limit_in_bytes", str(memory_bytes)):
        # No swap accounting: a swappiness of 0 keeps the cgroup's pages out of swap.
        _write_if_present(folder / "memory.swappiness", "0")


def _write_if_present(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
        return True
    except FileNotFoundError:
        return False


def find_cgroups() -> RunCgroups:
    """Where this process may make pids and memory cgroups (possibly nowhere)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return RunCgroups([])
    mounts = _cgroup_mounts()
    places: list[CgroupPlace] = []
    wanted = set(CONTROLLERS)
    # v2 first: one folder holds both controllers; v1 hierarchies give the rest.
    for line in sorted(lines, key=lambda line: line.split(":")[1] != ""):
        _, _, rest = line.partition(":")
        controllers, _, relative = rest.partition(":")
        relative = relative.lstrip("/")
        if controllers == "" and "cgroup2" in mounts:
            parent = Path(mounts["cgroup2"]) / relative
            try:
                delegated = set((parent / "cgroup.subtree_control").read_text().split()) & wanted
            except OSError:
                delegated = set()
            if delegated and os.access(parent, os.W_OK):
                places.append(CgroupPlace(parent, frozenset(delegated), v2=True))
                wanted -= delegated
        else:
            for controller in set(controllers.split(",")) & wanted:
                if controller in mounts:
                    parent = Path(mounts[controller]) / relative
                    if os.access(parent, os.W_OK):
                        places.append(CgroupPlace(parent, frozenset({controller}), v2=False))
                        wanted.discard(controller)
    return RunCgroups(places)


def _cgroup_mounts() -> dict[str, str]:
    """{"cgroup2": mount point, "pids"/"memory": v1 mount point} from /proc/self/mounts."""
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
        elif kind == "cgroup":
            for controller in CONTROLLERS:
                if controller in opts:
                    found.setdefault(controller, where)
    return found
