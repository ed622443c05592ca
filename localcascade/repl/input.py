"""Reading the chat's input: prompt-toolkit on a terminal (history, multi-line input, completion of
slash commands, a cap on a typed line), plain lines from a pipe."""

from __future__ import annotations

import sys
from pathlib import Path

from localcascade import safe_io
from localcascade import settings as lc_settings
from localcascade.repl.commands import COMMANDS, find_command

MULTILINE_FENCE = '"""'


def _slash_completer():
    """Tab completion of slash commands and their first argument (prompt-toolkit is imported only
    when a terminal reads the input: piped chats never need it)."""
    from prompt_toolkit.completion import Completer, Completion

    class SlashCompleter(Completer):
        def get_completions(self, document, complete_event):
            text = document.text_before_cursor
            if not text.startswith("/") or "\n" in text:
                return
            name, space, arg = text.partition(" ")
            if not space:
                for cmd in COMMANDS:
                    if cmd.name.startswith(name.lower()):
                        yield Completion(cmd.name, start_position=-len(name), display_meta=cmd.help)
                return
            command = find_command(name)
            if command is None or " " in arg:
                return
            for choice in command.choices:
                if choice.startswith(arg.lower()):
                    yield Completion(choice, start_position=-len(arg))

    return SlashCompleter()


class UnfinishedBlock(EOFError):
    """The input ended inside a \"\"\" block; ``lines`` is how many lines it held."""

    def __init__(self, lines: int):
        super().__init__(lines)
        self.lines = lines


class InputTooLong(Exception):
    """A typed or piped line past the reader's cap; it was dropped, not sent."""

    def __init__(self, limit: int):
        super().__init__(limit)
        self.limit = limit


# A line typed or pasted at the terminal: prompt-toolkit re-renders and copies the whole line on
# every key it processes (and an unbracketed paste is one key per character), so its cost grows
# with the square of the line. 64 Ki characters (~16K tokens) stays well under a second; longer
# text is piped (`localcascade ask < file`), where a line may be as long as a prompt.
TYPED_LINE_MAX_CHARS = 64 * 1024
# Past this many characters a typed key saves no undo step (each step is a copy of the line), and
# the line is redrawn at most once a second.
_UNDO_STEPS_MAX_CHARS = _LONG_LINE_CHARS = 4096
_LONG_LINE_REDRAW_S = 1.0
# Redraws of the input line at most this often: a paste arrives as thousands of keys at once.
_MIN_REDRAW_S = 0.05


class LineReader:
    """Reads one message at a time: prompt-toolkit on a terminal, plain lines from a pipe.

    ``read(prompt)`` returns the text, raises EOFError on Ctrl-D / end of input
    and KeyboardInterrupt on Ctrl-C (``interrupted_text`` says what was typed).
    """

    def __init__(self, history_path: Path | None = None, *, interactive: bool | None = None,
                 show_prompt: bool | None = None):
        if interactive is None:
            # A dumb terminal (an editor's shell buffer) gets plain lines: prompt-toolkit writes
            # cursor codes even in its dumb mode, and such terminals cannot show them.
            interactive = _stdin_is_terminal() and not lc_settings.dumb_terminal()
        self.interactive = interactive
        # Lines piped in are not typed by anyone: a prompt would only end up in the output,
        # glued to the reply that follows it.
        self.show_prompt = interactive or (_stdin_is_terminal() if show_prompt is None else show_prompt)
        if not interactive and hasattr(sys.stdin, "reconfigure"):
            # Bytes that are not UTF-8 must reach run_repl as text it can refuse line by line;
            # a strict decoder would raise from readline and end the chat.
            sys.stdin.reconfigure(errors="surrogateescape")
        self.session = None
        self.interrupted_text = ""
        self.dropped = 0            # characters typed past TYPED_LINE_MAX_CHARS on this line
        if self.interactive:
            self.session = self._make_session(history_path)
            self.session.app.min_redraw_interval = _MIN_REDRAW_S

    def _make_session(self, history_path: Path | None):
        from prompt_toolkit import PromptSession
        from prompt_toolkit.filters import emacs_insert_mode, vi_insert_mode
        from prompt_toolkit.history import FileHistory, InMemoryHistory
        from prompt_toolkit.key_binding import KeyBindings
        from prompt_toolkit.keys import Keys

        history = InMemoryHistory()
        if history_path is not None:
            try:
                history_path.parent.mkdir(parents=True, exist_ok=True)
                history_path.touch(exist_ok=True)
                history = FileHistory(str(history_path))
            except OSError:
                pass          # a read-only home still gets a working session, without history

        bindings = KeyBindings()

        @bindings.add("escape", "enter")
        def _newline(event):          # Alt-Enter (sent as Esc Enter): a new line, not "send"
            event.current_buffer.insert_text("\n")

        # Typed characters are inserted by this binding rather than prompt-toolkit's own: an
        # unbracketed paste arrives as one key per character, and prompt-toolkit copies the whole
        # line (and saves a copy of it for undo) per key, which grows with the square of the line
        # (32K characters: 7 s of CPU and 640 MB). Here the plain characters queued behind a key
        # go in with it, one copy per burst; past the cap they are counted, not inserted.
        @bindings.add(Keys.Any, filter=vi_insert_mode | emacs_insert_mode, save_before=_undo_step)
        def _insert(event):
            text = event.data * event.arg + _queued_characters(event.key_processor)
            buffer = event.current_buffer
            room = max(0, TYPED_LINE_MAX_CHARS - len(buffer.text))
            self.dropped += max(0, len(text) - room)
            if room:
                buffer.insert_text(text[:room])
            # Drawing a long line costs time in proportion to its length (every wrapped row is laid
            # out), so while a paste streams in, a long line is redrawn rarely.
            long_line = len(buffer.text) >= _LONG_LINE_CHARS
            event.app.min_redraw_interval = _LONG_LINE_REDRAW_S if long_line else _MIN_REDRAW_S

        @bindings.add(Keys.BracketedPaste)
        def _paste(event):            # a bracketed paste is one key: insert only what fits
            data = event.data.replace("\r\n", "\n").replace("\r", "\n")
            room = max(0, TYPED_LINE_MAX_CHARS - len(event.current_buffer.text))
            self.dropped += max(0, len(data) - room)
            event.current_buffer.insert_text(data[:room])

        from prompt_toolkit.output import ColorDepth

        return PromptSession(
            # NO_COLOR: a monochrome input line. Editing it still takes cursor moves and attribute
            # resets (prompt-toolkit cannot edit a line without them); TERM=dumb gets plain lines.
            color_depth=ColorDepth.MONOCHROME if lc_settings.no_color() else None,
            history=history,
            completer=_slash_completer(),
            complete_while_typing=False,
            key_bindings=bindings,
            prompt_continuation=lambda width, line_number, wrap_count: "... ".rjust(width),
            enable_suspend=True,
        )

    def _line(self, prompt: str) -> str:
        if self.session is None:
            if self.show_prompt:
                sys.stdout.write(prompt)
                sys.stdout.flush()
            if sys.stdin is None:             # started with stdin closed
                raise EOFError
            return self._piped_line()
        self.dropped = 0
        try:
            line = self.session.prompt(prompt)
        except KeyboardInterrupt:
            self.interrupted_text = self.session.default_buffer.text
            raise
        if self.dropped:
            raise InputTooLong(TYPED_LINE_MAX_CHARS)
        return line

    @staticmethod
    def _piped_line() -> str:
        """One line of piped input, at most a prompt's worth: `run < /dev/zero` has no newline."""
        limit = safe_io.PROMPT_MAX_BYTES
        line = sys.stdin.readline(limit + 1)
        if not line:
            raise EOFError
        if len(line) > limit and not line.endswith("\n"):
            while True:  # skip the rest of the line, a bounded piece at a time
                rest = sys.stdin.readline(1024 * 1024)
                if not rest or rest.endswith("\n"):
                    break
            raise InputTooLong(limit)
        return line.rstrip("\n")

    def read(self, prompt: str) -> str:
        self.interrupted_text = ""
        first = self._line(prompt)
        if not first.lstrip().startswith(MULTILINE_FENCE):
            return first
        # A """ block: everything up to the closing """ is one message.
        body = first.lstrip()[len(MULTILINE_FENCE):]
        if body.rstrip().endswith(MULTILINE_FENCE) and body.strip() != "":
            return body.rstrip()[: -len(MULTILINE_FENCE)]
        lines = [body] if body else []
        while True:
            try:
                line = self._line("... ")
            except EOFError:
                raise UnfinishedBlock(len(lines)) from None
            if line.rstrip().endswith(MULTILINE_FENCE):
                lines.append(line.rstrip()[: -len(MULTILINE_FENCE)])
                return "\n".join(lines).strip("\n")
            lines.append(line)


def _queued_characters(processor) -> str:
    """The plain characters queued right behind the key being handled, taken off the queue."""
    queue = processor.input_queue
    taken = []
    while queue and _is_plain_character(queue[0]):
        taken.append(queue.popleft().data)
    return "".join(taken)


def _is_plain_character(key_press) -> bool:
    """A printable character (Enter, Tab, escapes and control keys have names of their own)."""
    key = key_press.key
    return isinstance(key, str) and len(key) == 1 and key == key_press.data and key.isprintable()


def _undo_step(event) -> bool:
    """Whether a key saves an undo step: prompt-toolkit's rule (not for a repeat) on a short line; on a
    long one, undo would keep a copy of the whole line per step."""
    return not event.is_repeat and len(event.current_buffer.text) < _UNDO_STEPS_MAX_CHARS


def _stdin_is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()
