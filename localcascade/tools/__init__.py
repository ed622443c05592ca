"""Tools the model can call while it answers: a Python interpreter in a sandbox.

- ``sandbox``: which sandbox this machine has (bubblewrap on Linux, sandbox-exec on macOS),
  the limits, and running one sandboxed process with its output captured and bounded.
- ``python_tool``: the ``python`` tool: its schema for the chat template and ``PythonTool.execute``.
- ``loop``: a reply with tools: generate, run each call, hand the result back, continue.
"""
