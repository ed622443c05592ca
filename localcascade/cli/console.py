"""The rich Console every command renders with, honouring NO_COLOR and TERM=dumb in one place.

rich's ``no_color`` only drops colours; bold, italic and dim are still written as ANSI codes.
NO_COLOR here means no escape codes at all, which rich gives with ``color_system=None``.
"""

from __future__ import annotations

from rich.console import Console

from localcascade.settings import no_color


# Below this a table wraps into fragments, and at 0 (COLUMNS=0) rich prints nothing at all.
_MIN_WIDTH = 40


def make_console(*, stderr: bool = False, **options) -> Console:
    options.setdefault("highlight", False)
    if "width" not in options and Console(stderr=stderr).width < _MIN_WIDTH:
        options["width"] = _MIN_WIDTH
    if no_color():
        options.update(color_system=None, no_color=True)
    return Console(stderr=stderr, **options)
