"""The interactive chat behind `localcascade run`, in four parts that each do one thing:

* ``state``: ``ReplState``, what the session holds (the engine, the conversation, the next reply's
  ``GenerationOptions``, how the trace is shown, what the session has seen);
* ``commands``: the slash commands (``run_command`` returns ``Outcome``s of ``Notice`` lines and does
  no terminal I/O, so each command is tested without a terminal);
* ``render``: a streaming reply (thinking apart from the answer), notices and warnings, with rich;
* ``input`` and ``loop``: reading lines (prompt-toolkit on a terminal, plain lines from a pipe), and
  the loop that runs commands and streams replies, Ctrl-C included.

The words for plans, hardware and statistics come from ``localcascade.cli.wording`` and the console
from ``localcascade.cli.console``, as for every command. The engine does the model work; nothing
here imports llama_cpp. Import from the part itself: this ``__init__`` imports nothing, so
the parts, which import each other, never import the package that imports them.
"""
