"""The Linux sandbox: bubblewrap, plus the run's cgroups (processes and memory).

What the code inside sees (and nothing else):
- ``/usr`` and the ``/bin``, ``/sbin``, ``/lib*`` links or folders, read-only (system libraries);
  ``/etc/ld.so.cache`` and ``/etc/localtime`` only, not the rest of ``/etc``;
- the interpreter's binary, its standard library, its ``libpython`` and its site-packages
  folders (venv, base and user site), read-only, each bound by name, also under the home folder;
- a fresh ``/proc`` of its own PID namespace (no host process is visible), read-only as a whole,
  with the files container runtimes hide (the host's timers, keys, interrupts, kernel memory)
  covered; no ``/sys``;
- a read-only ``/dev`` holding only null, zero, full, random, urandom, the fd links and
  ``/dev/shm``: an empty tmpfs of ``Limits.shm_bytes``;
- ``/tmp``: an empty tmpfs of ``Limits.tmp_bytes``, gone when the run ends.
The root is never bound (that would expose every Unix socket of the host, ``/run`` and ``/tmp``);
the network namespace is empty but for a down loopback; the uid inside is 65534 (nobody).

Why so much is read-only: bubblewrap run by root maps the sandbox's uid to the host's uid 0.
Its capabilities are dropped, but a file's owner needs none: every kernel file owned by root
(``/proc/sys/kernel/core_pattern``, any sysctl, ``/proc/sysrq-trigger``) and every host device
node (``chmod`` of the host's ``/dev/null``) would be the code's own. So nothing of the host is
on a writable mount: ``/proc`` is remounted read-only, and as root the device nodes are the
run's own copies, owned by a uid the sandbox does not map.

RLIMIT_NPROC is not enforced for root (inside a user namespace or not: the host uid decides),
so a fork bomb run by root would take the machine. As root the run joins a pids cgroup of its
own (cgroup v2 where the pids controller is delegated, else the v1 pids hierarchy), and root
without a usable one is refused. Where a memory cgroup can be made (as root, or where one is
delegated) it holds the whole call to ``Limits.memory_bytes``; elsewhere the parent watches
the call's total memory (``sandbox.memory_watch``).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import glob
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from localcascade.errors import SandboxUnavailableError
from localcascade.tools.cgroups import RunCgroups, find_cgroups
from localcascade.tools.sandbox import Limits, Sandbox, _interpreter, _site_dirs, worker_environment

_INSTALL = ("install bubblewrap (Debian/Ubuntu: apt install bubblewrap; Fedora: dnf install bubblewrap; "
            "Arch: pacman -S bubblewrap)")
_SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")
# What Docker and runc hide in /proc: the host's timers, keys, interrupts, kernel memory, hardware.
_PROC_HIDDEN = ("/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
                "/proc/key-users", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/proc/kallsyms", "/proc/kmsg", "/proc/kpagecgroup",
                "/proc/kpagecount", "/proc/kpageflags", "/proc/sysrq-trigger")
# The character devices the code gets (major, minor): nothing that reaches hardware or a terminal.
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9)}
_NOBODY = 65534


class Bubblewrap(Sandbox):
    name = "bubblewrap"

    def __init__(self, bwrap: str, cgroups: RunCgroups) -> None:
        self.bwrap = bwrap
        self.cgroups = cgroups

    def environment(self, tmp: str) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin"}   # bwrap clears it and sets the worker's (--setenv)

    @contextlib.contextmanager
    def private_tmp(self):
        yield "/tmp"   # a tmpfs inside the sandbox: nothing on the host to delete

    def private_tmpfs(self, limits: Limits) -> dict[str, int]:
        return {"/tmp": limits.tmp_bytes, "/dev/shm": limits.shm_bytes}

    def command(self, worker_args: list[str], limits: Limits, tmp: str) -> list[str]:
        argv = [
            self.bwrap,
            "--unshare-all", "--unshare-user", "--uid", str(_NOBODY), "--gid", str(_NOBODY),
            "--disable-userns",           # no nested namespaces from inside
            "--hostname", "sandbox",
            "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--clearenv",
        ]
        for key, value in worker_environment().items():
            argv += ["--setenv", key, value]
        argv += ["--ro-bind", "/usr", "/usr"]
        for folder in _SYSTEM_DIRS:
            if os.path.islink(folder):
                argv += ["--symlink", os.readlink(folder), folder]
            elif os.path.isdir(folder):
                argv += ["--ro-bind", folder, folder]
        for name in _SYSTEM_FILES:
            argv += ["--ro-bind-try", name, name]
        argv += _proc_options() + _dev_options(device_folder(), limits.shm_bytes)
        argv += ["--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"]
        for path in python_paths():
            argv += ["--ro-bind", path, path]
        argv += ["--remount-ro", "/", "--chdir", "/tmp", "--", _interpreter(), *worker_args]
        return argv

    def cgroup(self, limits: Limits):
        if not self.cgroups.places:
            return super().cgroup(limits)
        return self.cgroups.new(limits.processes, limits.memory_bytes)

    def memory_bound(self, limits: Limits) -> str:
        place = self.cgroups.place_of("memory")
        if place is None:
            return super().memory_bound(limits)
        return self.whole_call_bound(limits, place.describe())


def _proc_options() -> list[str]:
    """A fresh /proc, its host-wide files hidden, then all of it read-only (bwrap leaves /proc/sys writable)."""
    options = ["--proc", "/proc"]
    hidden_folders = []
    for path in _PROC_HIDDEN:
        if os.path.isdir(path):
            options += ["--size", "4096", "--tmpfs", path]
            hidden_folders.append(path)
        elif os.path.exists(path):
            options += ["--ro-bind", "/dev/null", path]   # read-only binds are nodev: it reads nothing
    options += ["--remount-ro", "/proc"]
    for path in hidden_folders:
        options += ["--remount-ro", path]
    return options


def _dev_options(devices: str, shm_bytes: int) -> list[str]:
    """A read-only /dev of a few devices and links, and a small writable /dev/shm."""
    options = ["--size", "65536", "--tmpfs", "/dev"]
    for name in DEVICES:
        options += ["--dev-bind", os.path.join(devices, name), f"/dev/{name}"]
    for link, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        options += ["--symlink", target, f"/dev/{link}"]
    options += ["--dir", "/dev/shm", "--remount-ro", "/dev", "--perms", "1777", "--size", str(shm_bytes),
                "--tmpfs", "/dev/shm"]
    return options


_device_folder: str | None = None


def device_folder() -> str:
    """Where the bound device nodes come from: /dev, or as root, copies the sandbox cannot change.

    Run by root, the sandbox's uid is the host's uid 0, the owner of /dev/null: bound as is,
    the code could ``chmod`` the host's own. The copies are owned by a uid the sandbox does not
    map, in a folder of /dev (a filesystem that always allows device nodes).
    """
    global _device_folder
    if os.geteuid() != 0:
        return "/dev"
    if _device_folder is None or not all(os.path.exists(os.path.join(_device_folder, n)) for n in DEVICES):
        folder = tempfile.mkdtemp(prefix=".localcascade-", dir="/dev")
        try:
            for name, (major, minor) in DEVICES.items():
                node = os.path.join(folder, name)
                os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
                os.chown(node, _NOBODY, _NOBODY)
                os.chmod(node, 0o666)
        except OSError as err:
            shutil.rmtree(folder, ignore_errors=True)
            if not _owns_a_device():
                return "/dev"   # root of a container whose /dev is not its own: its nodes are safe to bind
            raise SandboxUnavailableError(
                f"cannot make the sandbox's devices in {folder}: {err.strerror or err}") from None
        atexit.register(shutil.rmtree, folder, True)
        _device_folder = folder
    return _device_folder


def _owns_a_device() -> bool:
    """Whether this process owns one of /dev's nodes (then the sandbox, mapped to its uid, would too)."""
    for name in DEVICES:
        try:
            if os.stat(f"/dev/{name}").st_uid == os.geteuid():
                return True
        except OSError:
            pass
    return False


def python_paths() -> list[str]:
    """What the interpreter needs, outside /usr, each a path to bind read-only (parents first)."""
    base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix,
                                     "installed_base": sys.base_prefix, "installed_platbase": sys.base_exec_prefix})
    wanted = [_interpreter(), base["stdlib"], base["platstdlib"], *_site_dirs()]
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        wanted += glob.glob(os.path.join(libdir, "libpython*"))
    chosen: list[str] = []
    for path in sorted({os.path.realpath(p) for p in wanted if p and os.path.exists(p)} |
                       {os.path.abspath(p) for p in wanted if p and os.path.exists(p)}, key=len):
        if path == "/usr" or path.startswith("/usr/") or any(path == c or path.startswith(c + "/") for c in chosen):
            continue
        if _hides_private_data(path):
            continue
        chosen.append(path)
    return chosen


def _hides_private_data(path: str) -> bool:
    """True if binding ``path`` would expose the home folder, the model store or the HF cache whole."""
    private = [Path.home()]
    for name in ("LOCALCASCADE_HOME", "HF_HOME", "HF_HUB_CACHE"):
        if os.environ.get(name):
            private.append(Path(os.environ[name]))
    target = Path(path)
    for folder in private:
        try:
            folder = folder.resolve()
        except OSError:
            continue
        if folder == target or target in folder.parents or str(target) == "/":
            return True
    return False


@functools.lru_cache(maxsize=1)
def bubblewrap() -> Bubblewrap:
    """The working bubblewrap sandbox, or SandboxUnavailableError saying what to do."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailableError(f"--tools python runs the model's code in a sandbox and none was found: {_INSTALL}")
    cgroups = find_cgroups()
    if os.geteuid() == 0 and not cgroups.has("pids"):
        raise SandboxUnavailableError(
            "--tools python as root needs a writable pids cgroup to limit the code's processes "
            "(RLIMIT_NPROC does not bind root) and none was found: run localcascade as a normal user"
        )
    sandbox = Bubblewrap(bwrap, cgroups)
    _check_it_starts(sandbox)
    return sandbox


def _check_it_starts(sandbox: Bubblewrap) -> None:
    """bwrap can be installed yet unable to make namespaces (a container, an AppArmor policy): try it."""
    argv = sandbox.command(["-I", "-S", "-c", "pass"], Limits(), "/tmp")
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                              env={"PATH": "/usr/bin:/bin"})
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SandboxUnavailableError(f"bubblewrap does not start here: {err}") from None
    if proc.returncode != 0:
        said = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = said[-1] if said else f"exit status {proc.returncode}"
        raise SandboxUnavailableError(
            f"bubblewrap cannot make its sandbox here ({detail}); user namespaces may be disabled "
            "(sysctl kernel.unprivileged_userns_clone, or AppArmor's kernel.apparmor_restrict_unprivileged_userns)"
        )
