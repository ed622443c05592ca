"""`localcascade --install-completion` writes only regular files: never through a symbolic link."""

from __future__ import annotations

import os
import subprocess
import sys


def install(home, shell="bash"):
    env = {**os.environ, "HOME": str(home), "SHELL": f"/bin/{shell}", "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    return subprocess.run([sys.executable, "-m", "localcascade", "--install-completion", shell],
                          capture_output=True, text=True, timeout=60, env=env)


def test_install_completion_writes_its_script_and_one_rc_line(tmp_path):
    (tmp_path / ".bashrc").write_text("alias ll='ls -l'")
    for _ in range(2):
        out = install(tmp_path)
        assert out.returncode == 0, out.stderr
    script = tmp_path / ".bash_completions" / "localcascade.sh"
    assert "_LOCALCASCADE_COMPLETE" in script.read_text()
    rc = (tmp_path / ".bashrc").read_text()
    assert rc.startswith("alias ll='ls -l'\n") and rc.count(f"source '{script}'") == 1


def test_install_completion_never_writes_through_a_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    home = tmp_path / "home"
    (home / ".bash_completions").mkdir(parents=True)
    (home / ".bash_completions" / "localcascade.sh").symlink_to(victim)
    out = install(home)
    assert out.returncode == 2 and out.stderr.startswith("localcascade: ") and out.stderr.count("\n") == 1, out.stderr
    assert "symbolic link" in out.stderr
    (home / ".bash_completions" / "localcascade.sh").unlink()
    (home / ".bashrc").symlink_to(victim)
    out = install(home)
    assert out.returncode == 2 and "symbolic link" in out.stderr and "source '" in out.stderr, out.stderr
    linked_folder = tmp_path / "home2"
    linked_folder.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (linked_folder / ".zfunc").symlink_to(tmp_path / "elsewhere")
    out = install(linked_folder, "zsh")
    assert out.returncode == 2 and "not a folder" in out.stderr, out.stderr
    assert victim.read_text() == "precious\n" and not list((tmp_path / "elsewhere").iterdir())
