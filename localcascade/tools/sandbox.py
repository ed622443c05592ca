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
address space, file size, captured output bytes and processes. RLIMIT_NPROC is not enforced
for root, so as root on Linux the process count is held by a pids cgroup of the run's own;
where none can be made, root is refused rather than left without a process limit.
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
from pathlib import Path
from typing import Callable, Iterator

from localcascade.errors import SandboxUnavailableError

@dataclass(frozen=True)
class Limits:
    """What one run may use. Defaults suit a calculation, not a long job."""

    cpu_seconds: int = 10
    wall_seconds: float = 20.0
    memory_bytes: int = 2 << 30        # address space; numpy and sympy import well within it
    file_bytes: int = 16 << 20         # any one file written
    tmp_bytes: int = 64 << 20          # the whole private /tmp (Linux)
    output_bytes: int = 1 << 20        # stdout + stderr captured; the process is stopped past it
    processes: int = 32


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
        """A context manager giving the cgroup.procs file the run joins, or None."""
        return contextlib.nullcontext(None)

    def run(self, code: str, limits: Limits, *, should_stop: Callable[[], bool] | None = None) -> RunOutcome:
        """Run ``code`` through the worker under ``limits``; Ctrl-C stops it and propagates."""
        worker = resources.files("localcascade.tools").joinpath("worker.py").read_text(encoding="utf-8")
        with self.private_tmp() as tmp, self.cgroup(limits) as procs_file:
            result_r, result_w = os.pipe()
            args = ["-I", "-c", worker, str(limits.processes), str(result_w), *_site_dirs()]
            argv = self.command(args, limits, tmp)
            return _run_bounded(argv, self.environment(tmp), code.encode("utf-8"), limits, procs_file,
                                (result_r, result_w), should_stop)


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
                 procs_file: str | None, result_pipe: tuple[int, int],
                 should_stop: Callable[[], bool] | None = None) -> RunOutcome:
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
            preexec_fn=_child_setup(limits, procs_file),
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
    try:
        stopped = _collect(proc, result_r, out, err, res, limits, started, should_stop)
    except BaseException:
        _kill(proc, procs_file)
        raise
    finally:
        os.close(result_r)
        _kill(proc, procs_file)   # also what the code left behind in its process group or cgroup
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    code_ = proc.returncode
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
             started: float, should_stop: Callable[[], bool] | None) -> str | None:
    """Read until every stream closes; stop the process past the wall time or the output cap."""
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
            for key, _ in selector.select(timeout=min(left, 0.1)):
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
        left = deadline - time.monotonic()
        try:
            proc.wait(timeout=max(left, 0.01))
        except subprocess.TimeoutExpired:
            return "wall time"
        return None
    finally:
        selector.close()


def _pending(selector) -> bool:
    """Whether any registered stream has data right now."""
    return bool(selector.select(timeout=0))


def _child_setup(limits: Limits, procs_file: str | None):
    """Runs in the child between fork and exec: join the cgroup, then set the limits."""
    import resource

    def setup() -> None:
        if procs_file:
            with open(procs_file, "w") as f:
                f.write(str(os.getpid()))
        for which, value in (
            (resource.RLIMIT_AS, limits.memory_bytes),
            (resource.RLIMIT_FSIZE, limits.file_bytes),
            (resource.RLIMIT_CORE, 0),
        ):
            resource.setrlimit(which, (value, value))
        # A hard limit above the soft one: SIGXCPU (reported as such) comes before SIGKILL.
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
        # The parent may ignore SIGINT/SIGPIPE; the code should meet the defaults.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)

    return setup


def _kill(proc, procs_file: str | None) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _kill_cgroup(procs_file)


def _kill_cgroup(procs_file: str | None) -> None:
    """Kill everything still in the run's cgroup (what left the session or the process group)."""
    if not procs_file:
        return
    for _ in range(50):
        try:
            pids = [int(p) for p in Path(procs_file).read_text().split()]
        except (OSError, ValueError):
            return
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
        # As root even the unsandboxed run gets a process limit where a pids cgroup can be made.
        if sys.platform.startswith("linux") and os.geteuid() == 0:
            from localcascade.tools.cgroups import find_pids_cgroup

            cgroups = find_pids_cgroup()
            if cgroups is not None:
                return cgroups.new(limits.processes)
        return super().cgroup(limits)


def _interpreter() -> str:
    """The running Python's real binary (not a venv's symlink: site folders are added by the worker)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)
