"""Running untrusted code: pick this machine's sandbox, run one process in it, bound everything.

A sandbox here is an operating-system one, never a Python-level filter:

- Linux: bubblewrap (``bwrap``) with new user, PID, network, IPC, UTS and cgroup namespaces;
  a read-only view of only what the interpreter needs, named one by one (see ``linux_sandbox``);
  a private size-limited tmpfs as ``/tmp``; a cleared environment; a new session; it dies
  with its parent.
- macOS: ``sandbox-exec`` with the deny-by-default profile ``macos.sb`` (written, not tested
  on a Mac by this project's CI).
- Anything else, or Linux without bwrap: ``SandboxUnavailableError`` naming what to install
  (``python_tool.find_sandbox``). Running without a sandbox takes the explicit
  ``--tools-unsafe-no-sandbox`` (``Unsandboxed``).

Every run, sandboxed or not, has resource limits (``Limits``): CPU seconds, wall time,
address space, file size, open files, captured output bytes and processes. RLIMIT_NPROC is
not enforced for root, so as root on Linux the process count is held by a pids cgroup of the run's own;
where none can be made, root is refused rather than left without a process limit.

Memory is one limit for the whole call, not per process (RLIMIT_AS alone lets each of 32
processes hold 2 GiB): a memory cgroup where one can be made (``cgroups``), else the parent
sums the resident memory of the call's processes every 20 ms and kills the call past the
limit (``_MemoryWatch``; it can be overrun for that long). ``Sandbox.memory_bound``
says which, in one line.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Iterator

from localcascade.errors import SandboxUnavailableError

@dataclass(frozen=True)
class Limits:
    """What one run may use. Defaults suit a calculation, not a long job."""

    cpu_seconds: int = 10
    wall_seconds: float = 20.0
    memory_bytes: int = 2 << 30        # the whole call's memory, and each process's address space
    file_bytes: int = 16 << 20         # any one file written
    tmp_bytes: int = 64 << 20          # the whole private /tmp (Linux)
    shm_bytes: int = 16 << 20          # the whole /dev/shm (Linux)
    code_bytes: int = 1 << 20          # the code itself (UTF-8)
    output_bytes: int = 1 << 20        # stdout + stderr captured; the process is stopped past it
    processes: int = 32
    open_files: int = 256              # descriptors per process


@dataclass(frozen=True)
class RunOutcome:
    """What a sandboxed process did. ``stopped`` says why it was ended, when it was."""

    stdout: bytes
    stderr: bytes
    result: bytes            # the worker's final-expression value (repr), possibly empty
    exit_code: int | None    # None when it was killed
    seconds: float
    stopped: str | None      # "wall time", "output", a signal's meaning, or None


class Sandbox:
    """A way to run the worker. ``describe`` names it for users; ``command`` builds the argv."""

    name = "none"
    sandboxed = True
    def private_tmpfs(self, limits: Limits) -> dict[str, int]:
        """The run's own tmpfs folders (as seen inside) and their sizes: their files are memory it holds."""
        return {}

    def command(self, worker_args: list[str], limits: Limits, tmp: str) -> list[str]:
        raise NotImplementedError

    def environment(self, tmp: str) -> dict[str, str]:
        """The environment of the process started (the worker's own, unless a launcher sets it)."""
        return worker_environment(tmp)

    @contextlib.contextmanager
    def private_tmp(self) -> Iterator[str]:
        """The run's writable folder, empty at the start and deleted at the end."""
        folder = tempfile.mkdtemp(prefix="localcascade-tool-")
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def cgroup(self, limits: Limits):
        """A context manager giving the run's cgroups (``cgroups.RunCgroup``), or None."""
        return contextlib.nullcontext(None)

    def memory_bound(self, limits: Limits) -> str:
        """How the call's memory is held, in one line for users."""
        from localcascade.units import format_bytes

        return (f"memory: {format_bytes(limits.memory_bytes)} for the whole call, watched by localcascade "
                f"(no memory cgroup here; each process also has {format_bytes(limits.memory_bytes)} "
                "of address space)")

    @staticmethod
    def whole_call_bound(limits: Limits, how: str) -> str:
        from localcascade.units import format_bytes

        return f"memory: {format_bytes(limits.memory_bytes)} for the whole call ({how} memory limit)"

    def run(self, code: str, limits: Limits, *, should_stop: Callable[[], bool] | None = None) -> RunOutcome:
        """Run ``code`` through the worker under ``limits``; Ctrl-C stops it and propagates."""
        worker = resources.files("localcascade.tools").joinpath("worker.py").read_text(encoding="utf-8")
        with self.private_tmp() as tmp, self.cgroup(limits) as cgroup:
            result_r, result_w = os.pipe()
            args = ["-I", "-c", worker, str(limits.processes), str(result_w), *_site_dirs()]
            argv = self.command(args, limits, tmp)
            return _run_bounded(argv, self.environment(tmp), code.encode("utf-8"), limits, cgroup,
                                (result_r, result_w), should_stop, self.private_tmpfs(limits))


def _site_dirs() -> list[str]:
    """The site-packages folders of the running interpreter (venv, base, user), in path order."""
    import site
    import sysconfig

    folders = []
    try:
        folders += site.getsitepackages()
    except AttributeError:  # very old virtualenvs
        pass
    for scheme_vars in ({}, {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}):
        paths = sysconfig.get_paths(vars=scheme_vars) if scheme_vars else sysconfig.get_paths()
        folders += [paths["purelib"], paths["platlib"]]
    user = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    if user:
        folders.append(user)
    seen, out = set(), []
    for folder in folders:
        if folder and folder not in seen and os.path.isdir(folder):
            seen.add(folder)
            out.append(folder)
    return out


def worker_environment(tmp: str = "/tmp") -> dict[str, str]:
    """The whole environment the code sees: nothing of the user's (no tokens, no paths)."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": tmp,
        "TMPDIR": tmp,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        # One thread per BLAS pool: the address-space limit counts every thread's stack.
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }


def _run_bounded(argv: list[str], env: dict[str, str], code: bytes, limits: Limits,
                 cgroup, result_pipe: tuple[int, int],
                 should_stop: Callable[[], bool] | None = None,
                 private_tmpfs: dict[str, int] | None = None) -> RunOutcome:
    """Start ``argv`` with the limits set in the child, feed ``code`` on stdin, capture with bounds.

    ``result_pipe``'s write end is handed to the child at its own number (the worker is told it).
    """
    result_r, result_w = result_pipe
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(result_w,),
            env=env,
            cwd=env.get("TMPDIR", "/"),
            preexec_fn=_child_setup(limits, cgroup.procs_files if cgroup else []),
            start_new_session=True,
            close_fds=True,
        )
    except OSError as err:
        os.close(result_r)
        os.close(result_w)
        raise SandboxUnavailableError(f"cannot start the sandbox ({argv[0]}): {err.strerror or err}") from None
    os.close(result_w)
    feeder = threading.Thread(target=_feed, args=(proc.stdin, code), daemon=True)
    feeder.start()
    out, err, res = bytearray(), bytearray(), bytearray()
    stopped = None
    watch: _CgroupWatch | _MemoryWatch
    if cgroup is not None and cgroup.limits_memory:
        watch = _CgroupWatch(cgroup)
    else:
        watch = _MemoryWatch(proc.pid, limits.memory_bytes, private_tmpfs)
    try:
        stopped = _collect(proc, result_r, out, err, res, limits, started, should_stop, watch)
    except BaseException:
        _kill(proc, cgroup)
        raise
    finally:
        os.close(result_r)
        _kill(proc, cgroup)   # also what the code left behind in its process group or cgroup
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    code_ = proc.returncode
    if stopped is None and cgroup is not None and cgroup.memory_killed():
        # The kernel's kill at the cgroup's limit shows as SIGKILL (or bwrap's 128 + 9): asked first,
        # so a call that ended before the watch's next look still says it was its memory.
        return RunOutcome(bytes(out), bytes(err), bytes(res), None, time.monotonic() - started, "memory")
    if stopped is None and code_ is not None and code_ < 0:
        stopped = _signal_meaning(-code_)
    exit_code = None if stopped is not None and (code_ is None or code_ < 0) else code_
    if stopped is None and _is_bwrap(argv) and code_ is not None and code_ >= 128 + 1 and code_ - 128 < 65:
        # bwrap reports a child killed by a signal as 128 + the signal number.
        stopped, exit_code = _signal_meaning(code_ - 128), None
    return RunOutcome(bytes(out), bytes(err), bytes(res), exit_code, time.monotonic() - started, stopped)


def _is_bwrap(argv: list[str]) -> bool:
    return os.path.basename(argv[0]) == "bwrap"


def _feed(stream, data: bytes) -> None:
    try:
        stream.write(data)
        stream.close()
    except (BrokenPipeError, OSError, ValueError):
        pass


def _collect(proc, result_r: int, out: bytearray, err: bytearray, res: bytearray, limits: Limits,
             started: float, should_stop: Callable[[], bool] | None, watch) -> str | None:
    """Read until every stream closes; stop the process past the wall time, the output cap or
    the memory limit (``watch``: ``_CgroupWatch`` or ``_MemoryWatch``)."""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ, out)
    selector.register(proc.stderr, selectors.EVENT_READ, err)
    selector.register(result_r, selectors.EVENT_READ, res)
    deadline = started + limits.wall_seconds
    try:
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return "wall time"
            if should_stop is not None and should_stop():
                return "interrupted"
            if watch.over():
                return "memory"
            for key, _ in selector.select(timeout=min(left, watch.interval)):
                fd = key.fd
                chunk = os.read(fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                key.data.extend(chunk)
                if len(out) + len(err) > limits.output_bytes:
                    return "output"
            if proc.poll() is not None and not _pending(selector):
                # The process is gone; a stream still open is held by something it left
                # behind, which the cgroup or the PID namespace takes down next.
                break
        while True:
            left = deadline - time.monotonic()
            try:
                proc.wait(timeout=max(min(left, watch.interval), 0.01))
                return None
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    return "wall time"
                if watch.over():
                    return "memory"
    finally:
        selector.close()


def _pending(selector) -> bool:
    """Whether any registered stream has data right now."""
    return bool(selector.select(timeout=0))


class _CgroupWatch:
    """The memory cgroup holds the call; at its first kill the whole call stops, as with the watch
    below (the kernel kills one process; the rest would go on with their share)."""

    interval = 0.1

    def __init__(self, cgroup) -> None:
        self.cgroup = cgroup

    def over(self) -> bool:
        return self.cgroup.memory_killed()


class _MemoryWatch:
    """The call's total resident memory, where no cgroup holds it: every process under the first.

    The sandbox's PID namespace keeps every process the code starts under bwrap (orphans go to
    its init), so the tree is the whole call. Pages shared after a fork are counted once per
    process: the sum errs high, never low. Read from /proc/PID/task/*/children and statm (a few
    files per process, not a scan of the machine's processes); psutil where those are missing.

    What the code writes in the sandbox's own tmpfs folders is memory no RSS shows: their bytes
    count, and so does each file (an inode and a dentry: 0.9 KiB measured, counted as 1 KiB),
    or an empty-file loop would hold a gigabyte of kernel memory within a 64 MiB /tmp.
    """

    interval = 0.02
    FILE_BYTES = 1024

    def __init__(self, pid: int, limit: int, private_tmpfs: dict[str, int] | None = None) -> None:
        self.pid = pid
        self.limit = limit
        self.private_tmpfs = private_tmpfs or {}
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.proc_children = os.path.exists(f"/proc/{pid}/task/{pid}/children")

    def over(self) -> bool:
        tree = self._tree()
        return sum(self._rss(pid) for pid in tree) + self._tmpfs_bytes(tree) > self.limit

    def _tmpfs_bytes(self, tree: list[int]) -> int:
        """The tmpfs folders' use, seen through the root of a process inside.

        The launcher (first in the tree) is outside, and a process still setting the sandbox up
        sees the host's folders: a folder counts only when its size is the one the run gave it.
        """
        total = 0
        for folder, size in self.private_tmpfs.items():
            for pid in tree[1:]:
                try:
                    fs = os.statvfs(f"/proc/{pid}/root{folder}")
                except OSError:
                    continue
                if fs.f_blocks * fs.f_frsize == size:
                    total += (fs.f_blocks - fs.f_bfree) * fs.f_frsize + (fs.f_files - fs.f_ffree) * self.FILE_BYTES
                    break
        return total

    def _tree(self) -> list[int]:
        if not self.proc_children:
            import psutil

            try:
                root = psutil.Process(self.pid)
                return [self.pid, *(p.pid for p in root.children(recursive=True))]
            except psutil.Error:
                return []
        found, todo = [], [self.pid]
        while todo and len(found) < 4096:
            pid = todo.pop()
            found.append(pid)
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as f:
                        todo += [int(child) for child in f.read().split()]
            except (OSError, ValueError):
                pass
        return found

    def _rss(self, pid: int) -> int:
        if self.proc_children:
            try:
                with open(f"/proc/{pid}/statm") as f:
                    return int(f.read().split()[1]) * self.page
            except (OSError, ValueError, IndexError):
                return 0
        import psutil

        try:
            return psutil.Process(pid).memory_info().rss
        except psutil.Error:
            return 0


def _child_setup(limits: Limits, procs_files: list[str]):
    """Runs in the child between fork and exec: join the cgroups, then set the limits."""
    import resource

    new_session_keyring = _session_keyring_joiner()

    def setup() -> None:
        for procs_file in procs_files:
            with open(procs_file, "w") as f:
                f.write(str(os.getpid()))
        new_session_keyring()
        for which, value in (
            (resource.RLIMIT_AS, limits.memory_bytes),
            (resource.RLIMIT_FSIZE, limits.file_bytes),
            (resource.RLIMIT_CORE, 0),
            # Each descriptor can hold kernel memory (pipe and socket buffers) no RSS shows.
            (resource.RLIMIT_NOFILE, limits.open_files),
        ):
            resource.setrlimit(which, (value, value))
        # A hard limit above the soft one: SIGXCPU (reported as such) comes before SIGKILL.
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
        # The parent may ignore SIGINT/SIGPIPE; the code should meet the defaults.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)

    return setup


# keyctl(2) by architecture: glibc has no wrapper (it is libkeyutils').
_KEYCTL_SYSCALL = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "ppc64le": 311, "s390x": 280, "i686": 288}
_KEYCTL_JOIN_SESSION_KEYRING = 1


def _session_keyring_joiner() -> Callable[[], None]:
    """A call (made in the child, before exec) that gives it a new, empty session keyring.

    A process inherits its parent's session keyring, and possessing a keyring is a right to
    read the keys in it (a login's, a root shell's): the code must not hold localcascade's.
    """
    import ctypes
    import platform

    number = _KEYCTL_SYSCALL.get(platform.machine())
    if not sys.platform.startswith("linux") or number is None:
        return lambda: None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (OSError, AttributeError):
        return lambda: None
    syscall.restype = ctypes.c_long

    def join() -> None:
        syscall(ctypes.c_long(number), ctypes.c_long(_KEYCTL_JOIN_SESSION_KEYRING), ctypes.c_void_p(None))

    return join


def _kill(proc, cgroup) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _kill_cgroup(cgroup)


def _kill_cgroup(cgroup) -> None:
    """Kill everything still in the run's cgroups (what left the session or the process group)."""
    if cgroup is None:
        return
    for _ in range(50):
        pids = cgroup.pids()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.02)


def _signal_meaning(signum: int) -> str:
    if signum == signal.SIGXCPU:
        return "CPU time"
    if signum == signal.SIGXFSZ:
        return "file size"
    if signum == signal.SIGKILL:
        return "killed"
    try:
        return f"signal {signal.Signals(signum).name}"
    except ValueError:
        return f"signal {signum}"


# -- choosing the sandbox --------------------------------------------------------------------------


class Unsandboxed(Sandbox):
    """The code runs as the user, with resource limits only. Never a default."""

    name = "none (unsandboxed)"
    sandboxed = False

    def command(self, worker_args: list[str], limits: Limits, tmp: str) -> list[str]:
        return [_interpreter(), *worker_args]

    def cgroup(self, limits: Limits):
        # Even the unsandboxed run gets the process and memory cgroups where they can be made.
        cgroups = _linux_cgroups()
        if cgroups is not None and cgroups.places:
            return cgroups.new(limits.processes, limits.memory_bytes)
        return super().cgroup(limits)

    def memory_bound(self, limits: Limits) -> str:
        cgroups = _linux_cgroups()
        place = cgroups.place_of("memory") if cgroups is not None else None
        if place is None:
            return super().memory_bound(limits)
        return self.whole_call_bound(limits, place.describe())


def _linux_cgroups():
    if not sys.platform.startswith("linux"):
        return None
    from localcascade.tools.cgroups import find_cgroups

    return find_cgroups()


def _interpreter() -> str:
    """The running Python's real binary (not a venv's symlink: site folders are added by the worker)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)
