"""`localcascade --install-completion`: typer's installer, made to write only regular files.

typer writes the completion script and the shell's rc file with ``Path.write_text``, which
follows a symbolic link into whatever it names (as root, any file on the machine). Here the
script is written through ``safe_io`` (a link, a device or a folder at its path is refused; the
script's folder must be a real folder), and the rc file gets its one line appended in place,
opened without following a link, so a dotfile kept as a link elsewhere is refused, not rewritten.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from localcascade import safe_io
from localcascade.errors import OutputTargetError, UsageError


def install(shell: str | None = None, prog_name: str | None = None,
            complete_var: str | None = None) -> tuple[str, Path]:
    """Install completion for ``shell`` (detected when None): (the shell, the script's path)."""
    from typer._completion_shared import _get_shell_name, get_completion_script, get_current_context

    prog_name = prog_name or get_current_context().find_root().info_name or "localcascade"
    complete_var = complete_var or "_{}_COMPLETE".format(prog_name.replace("-", "_").upper())
    shell = shell or _get_shell_name()
    home = Path.home()
    if shell == "bash":
        script, rc = home / ".bash_completions" / f"{prog_name}.sh", home / ".bashrc"
        line = f"source '{script}'"
    elif shell == "zsh":
        script, rc = home / ".zfunc" / f"_{prog_name}", home / ".zshrc"
        line = "fpath+=~/.zfunc; autoload -Uz compinit; compinit"
    elif shell == "fish":
        script, rc, line = home / ".config" / "fish" / "completions" / f"{prog_name}.fish", None, ""
    else:
        raise UsageError(f"completion for {shell or 'this shell'} is not supported: give bash, zsh or fish")
    _real_folder(script.parent)
    text = get_completion_script(prog_name=prog_name, complete_var=complete_var, shell=shell)
    safe_io.write_text_atomic(script, text + "\n", what="the completion script", overwrite=True)
    if rc is not None:
        _append_line(rc, line)
    return shell, script


def _real_folder(folder: Path) -> None:
    """Make ``folder`` (and its missing parents); refuse one that is a link or not a folder."""
    for part in reversed((folder, *folder.parents)):
        if not os.path.lexists(part):
            os.mkdir(part, 0o755)
    if not stat.S_ISDIR(os.lstat(folder).st_mode):
        raise OutputTargetError(f"{folder} is not a folder (a symbolic link?); the completion script is only "
                                "written into a real folder")


def _append_line(rc: Path, line: str) -> None:
    """Add ``line`` to the end of ``rc`` unless it holds it already; ``rc`` is never followed as a link."""
    try:
        fd = os.open(rc, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OutputTargetError(f"{rc} is a symbolic link; add this line to the file it names yourself: "
                                    f"{line}") from None
        raise OutputTargetError(f"cannot write {rc}: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OutputTargetError(f"{rc} is not a regular file; add this line to your shell's startup yourself: "
                                    f"{line}")
        if info.st_size > safe_io.TEMPLATE_MAX_BYTES:
            raise OutputTargetError(f"{rc} is larger than 1 MiB; add this line to it yourself: {line}")
        content = os.pread(fd, info.st_size, 0).decode("utf-8", "replace")
        if line not in content:
            os.write(fd, (("" if not content or content.endswith("\n") else "\n") + line + "\n").encode())
    finally:
        os.close(fd)


def use_safe_installer() -> None:
    """Have ``--install-completion`` call ``install`` above instead of typer's."""
    import typer.completion

    typer.completion.install = install
