"""The macOS sandbox: ``sandbox-exec`` with the deny-by-default profile ``macos.sb``.

Written to the documented Seatbelt profile language but not tested by this project's CI,
which has no Mac: the README says so. What it allows: running the interpreter, reading the
system libraries and the interpreter's own folders, writing one private temporary folder
(deleted after the run). What it denies: every other file (the home folder, the store, the
Hugging Face cache), the network, and any other program. Resource limits are the same
rlimits as on Linux; macOS enforces RLIMIT_NPROC per user, and not for root.
"""

from __future__ import annotations

import os
from importlib import resources

from localcascade.errors import SandboxUnavailableError
from localcascade.tools.sandbox import Limits, Sandbox, _interpreter, _site_dirs

SANDBOX_EXEC = "/usr/bin/sandbox-exec"


class Seatbelt(Sandbox):
    name = "sandbox-exec"

    def profile(self) -> str:
        text = resources.files("localcascade.tools").joinpath("macos.sb").read_text(encoding="utf-8")
        import sysconfig

        folders = {sysconfig.get_paths()["stdlib"], *(_site_dirs()), os.path.dirname(_interpreter())}
        lines = "\n".join(f'  (subpath "{_quote(os.path.realpath(f))}")' for f in sorted(folders) if f)
        return text.replace("@PYTHON_PATHS@", lines).replace("@PYTHON@", _quote(_interpreter()))

    def command(self, worker_args: list[str], limits: Limits, tmp: str) -> list[str]:
        return [SANDBOX_EXEC, "-p", self.profile(), "-D", f"TMP={os.path.realpath(tmp)}",
                _interpreter(), *worker_args]


def _quote(path: str) -> str:
    return path.replace("\\", "\\\\").replace('"', '\\"')


def seatbelt() -> Seatbelt:
    if not os.path.exists(SANDBOX_EXEC):
        raise SandboxUnavailableError(f"--tools python needs {SANDBOX_EXEC}, which this Mac lacks")
    return Seatbelt()
