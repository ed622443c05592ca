"""The tiny model on the CPU: the plan engine tests load it with (the `engine` fixture in conftest.py)."""

from __future__ import annotations

from localcascade.planning.plan import Plan


def cpu_plan(**changes) -> Plan:
    """A CPU-only plan with small batches (the tiny model reads a prompt in a few of them); ``changes``
    set any field, e.g. ``n_ctx=256`` for a context a test fills."""
    values = dict(model="tiny", n_ctx=1024, n_batch=256, n_ubatch=128)
    values.update(changes)
    return Plan(**values)
