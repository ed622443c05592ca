"""Environment variables and default locations, read in one place.

| variable              | meaning                                                       |
|-----------------------|---------------------------------------------------------------|
| LOCALCASCADE_HOME     | where localcascade keeps its own data (store index, history)  |
| HF_HOME / HF_HUB_CACHE| the shared Hugging Face cache where models are downloaded     |
| HF_ENDPOINT           | the hub to talk to (tests point it at a server on 127.0.0.1)  |
| HF_TOKEN              | token for gated/private repositories                          |
| HF_HUB_OFFLINE        | 1 = never touch the network                                   |
| NO_COLOR              | set = no ANSI colour in any output                            |
| LOCALCASCADE_THREADS  | CPU threads for generation and prompts (default: the cores)   |
| LOCALCASCADE_STATE_CACHE | folder of the prompt-state cache (default: the user cache folder) |
| LOCALCASCADE_STATE_CACHE_SIZE | its disk budget (default 8GiB; 0 or off: no disk cache) |
| LOCALCASCADE_STATE_RAM | RAM budget for prompt checkpoints (default 1GiB; 0 or off: none) |

huggingface_hub reads the HF_* variables itself; the helpers here only answer
questions localcascade needs before importing it (which is slow).
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_path, user_data_path

DEFAULT_STATE_CACHE_SIZE = "8GiB"
DEFAULT_STATE_RAM = "1GiB"


def data_dir() -> Path:
    """localcascade's own data directory (store index, REPL history)."""
    override = os.environ.get("LOCALCASCADE_HOME")
    return Path(override).expanduser() if override else user_data_path("localcascade", appauthor=False)


def data_dir_problem() -> str | None:
    """Why localcascade's data directory cannot hold its store index, or None: a file (or something
    else that is not a folder) at its path or on the way to it, or a folder it cannot write."""
    folder = data_dir()
    where = "LOCALCASCADE_HOME" if os.environ.get("LOCALCASCADE_HOME") else "the data directory"
    probe = folder
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        what = "a file" if probe.is_file() else "not a folder"
        return (f"{where} {folder} cannot be used: {probe} is {what}; models cannot be registered or "
                "quantized results recorded until it names a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{where} {folder} is not writable; models cannot be registered there"
    return None


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, resolved like huggingface_hub does, without importing it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "huggingface"
    )
    return Path(hf_home).expanduser() / "hub"


def hf_endpoint() -> str:
    """The hub URL, read at call time (huggingface_hub copies HF_ENDPOINT once, at its import)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    scheme, _, host = endpoint.partition("://")
    if scheme.lower() not in ("http", "https") or not host or any(c.isspace() for c in endpoint):
        from localcascade.errors import UsageError

        raise UsageError(f"HF_ENDPOINT {endpoint!r} is not an http(s) URL (e.g. https://huggingface.co)")
    return endpoint


def hf_token() -> str | None:
    """HF_TOKEN; None lets huggingface_hub fall back to the token `hf auth login` stored."""
    return os.environ.get("HF_TOKEN") or None


def dumb_terminal() -> bool:
    return os.environ.get("TERM") == "dumb"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "on", "yes", "true"}


def no_color() -> bool:
    return bool(os.environ.get("NO_COLOR")) or dumb_terminal()


def threads() -> int | None:
    """LOCALCASCADE_THREADS: one CPU thread count for generation and prompt processing, or None.

    llama-bench's -t: on a machine shared with other work, fewer threads than cores keep llama.cpp's
    spinning thread barriers from waiting on descheduled threads.
    """
    value = os.environ.get("LOCALCASCADE_THREADS", "").strip()
    if not value:
        return None
    if not value.isdigit() or not 1 <= int(value) <= 1024:
        from localcascade.errors import UsageError

        raise UsageError(f"LOCALCASCADE_THREADS must be a whole number from 1 to 1024, not {value!r}")
    return int(value)


def state_cache_dir() -> Path:
    """Where prompt states are kept across processes: LOCALCASCADE_STATE_CACHE, else a folder in
    LOCALCASCADE_HOME when that is set (tests, portable setups), else the user's cache folder."""
    override = os.environ.get("LOCALCASCADE_STATE_CACHE", "").strip()
    if override:
        return Path(override).expanduser()
    if os.environ.get("LOCALCASCADE_HOME"):
        return data_dir() / "state-cache"
    return user_cache_path("localcascade", appauthor=False) / "state"


def _budget(name: str, default: str) -> int:
    from localcascade.units import parse_size

    value = os.environ.get(name, "").strip() or default
    if value.lower() in {"0", "off", "no", "false"}:
        return 0
    try:
        return parse_size(value)
    except Exception:
        from localcascade.errors import UsageError

        raise UsageError(f"{name} must be a size like 8GiB or 512MiB, or 0/off, not {value!r}") from None


def state_cache_size() -> int:
    """LOCALCASCADE_STATE_CACHE_SIZE in bytes: the disk budget of the prompt-state cache (0: off)."""
    return _budget("LOCALCASCADE_STATE_CACHE_SIZE", DEFAULT_STATE_CACHE_SIZE)


def state_ram() -> int:
    """LOCALCASCADE_STATE_RAM in bytes: the RAM budget for prompt checkpoints (0: none)."""
    return _budget("LOCALCASCADE_STATE_RAM", DEFAULT_STATE_RAM)
