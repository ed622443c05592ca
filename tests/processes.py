"""The processes a test started: found among its command's children (other test workers run theirs
at the same time), and whether one still runs."""

from __future__ import annotations

import psutil


def children_matching(pid: int, marker: str) -> list[psutil.Process]:
    """``pid``'s descendants whose command line holds ``marker``."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    return [p for p in children if marker in " ".join(_cmdline(p))]


def running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []
