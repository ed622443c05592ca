"""The rich Console every command and the chat render with, honouring NO_COLOR and TERM=dumb in one place.

rich's ``no_color`` only drops colours; bold, italic and dim are still written as ANSI codes.
NO_COLOR here means no escape codes at all, which rich gives with ``color_system=None``.
"""

from __future__ import annotations

from rich.console import Console

from localcascade.settings import dumb_terminal, no_color

# Below this a table wraps into fragments, and at 0 (COLUMNS=0) rich prints nothing at all.
_MIN_WIDTH = 40


def make_console(*, stderr: bool = False, file=None, min_width: int = _MIN_WIDTH, **options) -> Console:
    """A Console on stdout (``stderr=True``: stderr; or ``file``), at least ``min_width`` columns wide.

    Emoji codes stay text (``:smile:`` in a model's reply or a path is not a picture), and rich's
    highlighter is off: what is printed is what the command wrote.
    """
    options.setdefault("highlight", False)
    options.setdefault("emoji", False)
    if no_color():
        options.update(color_system=None, no_color=True)
    console = Console(stderr=stderr, file=file, **options)
    if "width" not in options and console.width < min_width:
        console.width = min_width
    return console


def can_redraw(console: Console) -> bool:
    """Can output on ``console`` move the cursor (a live progress bar, a reply re-rendered as markdown)?

    Not in a pipe or a file, not on a dumb terminal, and not with NO_COLOR: rich's live regions write
    cursor codes whatever their colour system.
    """
    return console.is_terminal and not console.is_dumb_terminal and not dumb_terminal() and not no_color()
