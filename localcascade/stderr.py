"""The one way a line for the person reaches stderr, from every command and the server.

``say("loaded ...")`` writes ``localcascade: loaded ...``: the program's name first, so a line in a
script's log says where it came from; ``say(..., prefix=False)`` continues a block already
introduced (indented details under a plan, a table's rows). Flushed at once: stderr may be a pipe,
and a line held in a buffer until exit tells nobody anything.
"""

from __future__ import annotations

import sys

PREFIX = "localcascade: "


def say(*lines: str, prefix: bool = True) -> None:
    """Each of ``lines`` on stderr (none: an empty line), prefixed with the program's name unless told not."""
    stream = sys.stderr
    if stream is None:   # no stderr at all (a daemon's closed descriptor): nothing to say it on
        return
    for line in lines or ("",):
        stream.write((PREFIX if prefix and line else "") + line + "\n")
    stream.flush()
