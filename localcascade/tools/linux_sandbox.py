"""The Linux sandbox: bubblewrap, plus a pids cgroup when running as root.

What the code inside sees (and nothing else):
- ``/usr`` and the ``/bin``, ``/sbin``, ``/lib*`` links or folders, read-only (system libraries);
  ``/etc/ld.so.cache`` and ``/etc/localtime`` only, not the rest of ``/etc``;
- the interpreter's binary, its standard library, its ``libpython`` and its site-packages
  folders (venv, base and user site), read-only, each bound by name, also under the home folder;
- a fresh ``/proc`` of its own PID namespace (no host process is visible) and a minimal ``/dev``;
- ``/tmp``: an empty tmpfs of ``Limits.tmp_bytes``, gone when the run ends.
The root is never bound (that would expose every Unix socket of the host, ``/run`` and ``/tmp``);
the network namespace is empty but for a down loopback; the uid inside is 65534 (nobody).

RLIMIT_NPROC is not enforced for root (inside a user namespace or not: the host uid decides),
so a fork bomb run by root would take the machine. As root the run joins a pids cgroup of its
own (cgroup v2 where the pids controller is delegated, else the v1 pids hierarchy), and root
without a usable one is refused.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Iterator

from localcascade.errors import SandboxUnavailableError
from localcascade.tools.cgroups import PidsCgroups, find_pids_cgroup
from localcascade.tools.sandbox import Limits, Sandbox, _interpreter, _site_dirs, worker_environment

_INSTALL = ("install bubblewrap (Debian/Ubuntu: apt install bubblewrap; Fedora: dnf install bubblewrap; "
            "Arch: pacman -S bubblewrap)")
_SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")


class Bubblewrap(Sandbox):
    name = "bubblewrap"

    def __init__(self, bwrap: str, cgroups: PidsCgroups | None) -> None:
        self.bwrap = bwrap
        self.cgroups = cgroups

    def environment(self, tmp: str) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin"}   # bwrap clears it and sets the worker's (--setenv)

    @contextlib.contextmanager
    def private_tmp(self) -> Iterator[str]:
        yield "/tmp"   # a tmpfs inside the sandbox: nothing on the host to delete

    def command(self, worker_args: list[str], limits: Limits, tmp: str) -> list[str]:
        argv = [
            self.bwrap,
            "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534",
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
        argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"]
        for path in python_paths():
            argv += ["--ro-bind", path, path]
        argv += ["--remount-ro", "/", "--chdir", "/tmp", "--", _interpreter(), *worker_args]
        return argv

    def cgroup(self, limits: Limits):
        if self.cgroups is None:
            return super().cgroup(limits)
        return self.cgroups.new(limits.processes)


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
    cgroups = None
    if os.geteuid() == 0:
        cgroups = find_pids_cgroup()
        if cgroups is None:
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
