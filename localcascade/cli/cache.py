"""`localcascade cache [list|size|clear]`: the prompt-state cache (what was read, kept across processes).

Results go to stdout (`--json` for scripts); the folder, its budget and the way to turn it off
are in docs/chat.md.
"""

from __future__ import annotations

import json
import time

import typer

from localcascade.cli.app import app
from localcascade.errors import UsageError
from localcascade.units import format_bytes

_ACTIONS = ("list", "size", "clear")


@app.command()
def cache(
    action: str = typer.Argument("list", help="list (the entries), size (the total) or clear (remove them all)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """The prompt-state cache: what was read, kept so the next prompt sharing it is not read again."""
    from localcascade import settings
    from localcascade.engine import state_cache

    if action not in _ACTIONS:
        raise UsageError(f"cache takes one of {', '.join(_ACTIONS)}, not {action!r}")
    root = settings.state_cache_dir()
    budget = settings.state_cache_size()
    if action == "clear":
        removed = state_cache.clear(root)
        if as_json:
            typer.echo(json.dumps({"folder": str(root), "removed_bytes": removed}))
        else:
            typer.echo(f"removed {format_bytes(removed)} from {root}")
        return
    found = state_cache.entries(root)
    total = sum(size for _, size, _ in found)
    if as_json:
        data = {"folder": str(root), "budget_bytes": budget, "bytes": total, "entries": len(found)}
        if action == "list":
            data["items"] = [{"model": path.parent.name, "tokens": _tokens(path.name), "bytes": size,
                              "last_used": round(used, 3)} for path, size, used in reversed(found)]
        typer.echo(json.dumps(data))
        return
    limit = f"{format_bytes(budget)} budget" if budget else "disk cache off (LOCALCASCADE_STATE_CACHE_SIZE=0)"
    typer.echo(f"{root}: {len(found)} entries, {format_bytes(total)} of {limit}")
    if action == "list":
        for path, size, used in reversed(found):   # most recently used first
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(used))
            typer.echo(f"  {when}  {_tokens(path.name):>9} tokens  {format_bytes(size):>10}  model {path.parent.name[:12]}")


def _tokens(name: str) -> int:
    count = name.split("-", 1)[0]
    return int(count) if count.isdigit() else 0
