"""The README and docs/ say what the program does: every link lands, every command they name exists,
and the README stays a first screen (the two Quickstart commands near the top)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_COMMAND = re.compile(r"`localcascade ([a-z][a-z-]*)\b")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_lands(page):
    broken = []
    for target in _LINK.findall(page.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{page.name}: links that land nowhere: {broken}"


def test_every_command_the_docs_name_exists():
    named = set()
    for page in PAGES:
        named |= set(_COMMAND.findall(page.read_text(encoding="utf-8")))
    out = subprocess.run([sys.executable, "-m", "localcascade", "--help"], capture_output=True, text=True,
                         timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}).stdout
    known = set(re.findall(r"^│ ([a-z][a-z-]*) ", out, re.M)) | set(re.findall(r"^\s{2}([a-z][a-z-]*)\s{2,}", out, re.M))
    assert known, out
    assert named - known == set(), f"the docs name commands that do not exist: {sorted(named - known)}"


def test_the_readme_is_a_first_screen():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: the detail belongs in docs/"
    first = "\n".join(lines[:40])
    assert "<!-- ci:install -->" in first and "<!-- ci:test -->" in first, "the Quickstart commands are not in the first 40 lines"
