"""Chat rendering with the model's own Jinja chat template, sandboxed.

The environment mirrors what Hugging Face tokenizers and llama-cpp-python's
Jinja2ChatFormatter give templates (trim/lstrip blocks, ``raise_exception``,
``strftime_now``, a ``tojson`` that does not HTML-escape), so templates
written for them render the same here. Templates come from model files, i.e.
from strangers: the sandbox keeps them from reaching Python internals.
"""

from __future__ import annotations

import ctypes
import datetime
import json
import re
import threading
import time
from pathlib import Path

from localcascade import safe_io
from localcascade.errors import ChatTemplateError


# A real template renders a long conversation in milliseconds; these bound one that loops or grows
# without end (nested range() loops, "x" * 10**9): in time, in the size of any one value made with
# * or **, and in the size of the prompt, which must fit a context of at most ~1M tokens anyway.
RENDER_TIME_S = 5.0
RENDER_MAX_CHARS = 32 * 1024 * 1024
VALUE_MAX_ITEMS = 1024 * 1024


RENDER_MAX_GROWTH_BYTES = 512 * 1024 * 1024

# A conversation longer than this is refused before rendering: each message costs template work
# and tokenizer calls (240,000 tiny messages fit an 8 MiB request and took minutes). Real chats,
# tool loops included, hold hundreds.
MAX_MESSAGES = 4096

# Around each message's text in a marked rendering (``render(..., mark_content=True)``): what lies
# between them is message content, which the engine tokenizes as text, never as control tokens, so a
# message holding "<|im_end|>" or "<start_of_turn>model" cannot forge a turn. Private-use code
# points: no tokenizer gives them meaning, and content holding them has them replaced.
CONTENT_OPEN = "\ue000"
CONTENT_CLOSE = "\ue001"
_TOOL_TEXT_KEYS = frozenset({"name", "description", "title"})


class _RenderTimeout(Exception):
    """Raised inside the rendering thread by the watchdog."""


class _RenderTooLarge(Exception):
    """Raised inside the rendering thread by the watchdog."""


def _too_large(size: int, what: str) -> None:
    if size > VALUE_MAX_ITEMS:
        raise ChatTemplateError(f"the chat template builds a value of {size:,} characters with {what} "
                                f"(more than {VALUE_MAX_ITEMS:,})")


_NUMBERS = re.compile(r"\d+")


def _format_widths(fmt: str, args) -> int:
    """The widest field a %- or {}-format could pad to: the numbers written in it, and the
    integers given as arguments (``%*s`` and ``{:{w}}`` take widths from them)."""
    values = [int(m) if len(m) < 12 else VALUE_MAX_ITEMS + 1 for m in _NUMBERS.findall(fmt)]
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool):
            values.append(abs(arg))
    return max(values, default=0)


def _check_string_op(name: str, value: str, args: tuple, kwargs: dict) -> None:
    """Refuse a string method or filter that would allocate past VALUE_MAX_ITEMS in one C call,
    before it runs: the watchdog can only stop Python code between bytecodes, and
    ``"x".center(3000000000)`` is one call that grows the process by 6 GB."""
    params = list(args) + list(kwargs.values())
    if name in ("center", "ljust", "rjust", "zfill"):
        width = args[0] if args else kwargs.get("width", 80)
        if isinstance(width, int):
            _too_large(width, name)
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int):
            _too_large(value.count("\t") * size + len(value), name)
    elif name == "replace":
        old, new = (list(args) + [None, None])[:2]
        if isinstance(old, str) and isinstance(new, str):
            times = len(value) + 1 if not old else value.count(old)
            _too_large(len(value) + times * len(new), name)
    elif name in ("format", "format_map", "%"):
        _too_large(_format_widths(value, params), name)
    elif name == "indent":
        width = args[0] if args else kwargs.get("width", 4)
        pad = width if isinstance(width, int) else len(width) if isinstance(width, str) else 0
        _too_large(len(value) + (value.count("\n") + 1) * pad, name)
    elif name == "wordwrap":
        width = args[0] if args else kwargs.get("width", 79)
        wrap = kwargs.get("wrapstring") or (args[3] if len(args) > 3 else None) or "\n"
        if isinstance(width, int) and isinstance(wrap, str):
            _too_large(len(value) + (len(value) // max(1, width) + 1) * len(wrap), name)


_GUARDED_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "format",
                              "format_map"})
_GUARDED_FILTERS = ("center", "indent", "wordwrap", "replace", "format")


def _make_environment():
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "%"})

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                for seq, times in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(times, int) \
                            and len(seq) * times > VALUE_MAX_ITEMS:
                        raise ChatTemplateError(f"the chat template builds a value of {len(seq) * times:,} items "
                                                f"(more than {VALUE_MAX_ITEMS:,})")
            if operator == "**" and isinstance(right, int) and isinstance(left, int) and abs(right) > 1024 \
                    and abs(left) > 1:
                raise ChatTemplateError(f"the chat template computes {left} ** {right}, a number too large")
            if operator == "%" and isinstance(left, str):
                _check_string_op("%", left, right if isinstance(right, tuple) else (right,), {})
            return super().call_binop(context, operator, left, right)

        def wrap_str_format(self, value):
            # str.format reaches templates through this wrapper, not through call().
            wrapped = super().wrap_str_format(value)
            if wrapped is None:
                return None
            text, name = value.__self__, value.__name__

            def guarded(*args, **kwargs):
                mapping = args[0] if name == "format_map" and args and isinstance(args[0], dict) else {}
                _check_string_op("format", text, args + tuple(mapping.values()), kwargs)
                return wrapped(*args, **kwargs)

            return guarded

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja's own signature
            owner = getattr(__obj, "__self__", None)
            if isinstance(owner, str) and getattr(__obj, "__name__", None) in _GUARDED_METHODS:
                _check_string_op(__obj.__name__, owner, args, kwargs)
            return super().call(__context, __obj, *args, **kwargs)

    # loopcontrols: {% break %} and {% continue %}, which llama.cpp-style templates use (and
    # llama-cpp-python's own formatter allows).
    env = BoundedEnvironment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
                             extensions=["jinja2.ext.loopcontrols"])
    for name in _GUARDED_FILTERS:
        env.filters[name] = _guarded_filter(name, env.filters[name])
    return env


def _guarded_filter(name: str, original):
    """``original`` (a Jinja filter taking the value first), refused before it allocates too much."""
    import functools

    pass_env = getattr(original, "jinja_pass_arg", None)

    @functools.wraps(original)
    def guarded(*args, **kwargs):
        rest = args[1:] if pass_env is not None else args
        if rest and isinstance(rest[0], str):
            _check_string_op(name, rest[0], tuple(rest[1:]), kwargs)
        return original(*args, **kwargs)

    if pass_env is not None:
        guarded.jinja_pass_arg = pass_env   # jinja passes the environment/context first, as before
    return guarded


class _Watchdog:
    """Stops a render that runs past ``seconds`` or grows the process by more than ``max_growth``
    bytes, by raising an exception in the rendering thread: Jinja templates are Python code, so it
    lands at the next bytecode, even inside a loop that prints nothing or a ``~`` that doubles a
    string. Works off the main thread (a server), unlike SIGALRM."""

    POLL_S = 0.02

    def __init__(self, seconds: float, max_growth: int) -> None:
        import psutil

        self.seconds, self.max_growth = seconds, max_growth
        self.thread_id = threading.get_ident()
        self.process = psutil.Process()
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.active = True

    def _watch(self) -> None:
        start_rss = self.process.memory_info().rss
        deadline = time.monotonic() + self.seconds
        while not self.done.wait(self.POLL_S):
            if time.monotonic() > deadline:
                return self._fire(_RenderTimeout)
            if self.process.memory_info().rss - start_rss > self.max_growth:
                return self._fire(_RenderTooLarge)

    def _fire(self, exc: type) -> None:
        with self.lock:
            if self.active:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id), ctypes.py_object(exc))

    def __enter__(self) -> "_Watchdog":
        self.thread = threading.Thread(target=self._watch, name="template-watchdog", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self.lock:
            self.active = False
        self.done.set()


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"the chat template refused the conversation: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(value, indent=None, ensure_ascii=False, **kwargs) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, **kwargs)


class ChatTemplate:
    """A compiled chat template and the special-token strings it may use."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "", origin: str = "model") -> None:
        import jinja2

        self.source = source
        self.origin = origin
        self.bos_token = bos_token
        self.eos_token = eos_token
        env = _make_environment()
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        env.filters["tojson"] = _tojson
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as err:
            raise ChatTemplateError(f"the {origin} chat template does not compile: {err}") from None

    def render(self, messages: list[dict], *, add_generation_prompt: bool, enable_thinking: bool,
               tools: list[dict] | None = None, mark_content: bool = False) -> str:
        """The prompt text; ``tools`` (OpenAI function specs) are listed the template's own way.

        With ``mark_content`` each message's text (and the tools' names and descriptions) stands
        between CONTENT_OPEN and CONTENT_CLOSE in the result: see ``split_marked``.
        """
        import jinja2

        from localcascade.errors import UsageError

        if len(messages) > MAX_MESSAGES:
            raise UsageError(f"the conversation has {len(messages):,} messages; at most {MAX_MESSAGES:,} are taken")
        if mark_content:
            messages = [_marked_message(m) for m in messages]
            tools = _marked_tools(tools) if tools else tools
        # ``tools`` is left undefined when there are none: templates test ``tools is defined``.
        extra = {"tools": tools} if tools else {}
        try:
            try:
                with _Watchdog(RENDER_TIME_S, RENDER_MAX_GROWTH_BYTES):
                    return self._bounded_render(dict(
                        messages=messages,
                        add_generation_prompt=add_generation_prompt,
                        enable_thinking=enable_thinking,
                        bos_token=self.bos_token,
                        eos_token=self.eos_token,
                        **extra,
                    ))
            except _RenderTimeout:
                raise ChatTemplateError(f"the {self.origin} chat template did not finish rendering within "
                                        f"{RENDER_TIME_S:.0f} s") from None
            except (_RenderTooLarge, MemoryError):
                # The watchdog polls; a template that doubles a string can reach the process's
                # memory limit between two polls, which is the same failure, met sooner.
                raise ChatTemplateError(f"the {self.origin} chat template took more than "
                                        f"{RENDER_MAX_GROWTH_BYTES // 2**20} MiB of memory to render") from None
        except ChatTemplateError:
            raise
        except Exception as err:  # noqa: BLE001 - the template is code from the model file or the user
            detail = str(err) if isinstance(err, jinja2.TemplateError) else f"{type(err).__name__}: {err}"
            raise ChatTemplateError(f"the {self.origin} chat template failed to render: {detail}") from None

    def _bounded_render(self, variables: dict) -> str:
        parts, size = [], 0
        for part in self._template.generate(**variables):
            size += len(part)
            if size > RENDER_MAX_CHARS:
                raise ChatTemplateError(f"the {self.origin} chat template renders more than "
                                        f"{RENDER_MAX_CHARS:,} characters")
            parts.append(part)
        return "".join(parts)


def _mark(text):
    """``text`` between the content markers, its outer whitespace outside them (so a template's
    ``trim`` still takes it off); blank text is left as it is (templates test ``if content``)."""
    if not isinstance(text, str) or not text.strip():
        return text
    if CONTENT_OPEN in text or CONTENT_CLOSE in text:
        text = text.replace(CONTENT_OPEN, "\ufffd").replace(CONTENT_CLOSE, "\ufffd")
    core = text.strip()
    start = text.index(core[0])
    return f"{text[:start]}{CONTENT_OPEN}{core}{CONTENT_CLOSE}{text[start + len(core):]}"


def _marked_value(value):
    """Every string in a tool call's arguments (keys too: templates write them as parameter names)."""
    if isinstance(value, str):
        return _mark(value)
    if isinstance(value, dict):
        return {_mark(k) if isinstance(k, str) else k: _marked_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_marked_value(v) for v in value]
    return value


def _marked_message(message: dict) -> dict:
    out = dict(message)
    for key in ("content", "reasoning_content", "name", "tool_call_id"):
        if key in out:
            out[key] = _mark(out[key])
    if isinstance(out.get("tool_calls"), list):
        calls = []
        for call in out["tool_calls"]:
            call = dict(call) if isinstance(call, dict) else call
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                function = dict(call["function"])
                function["name"] = _mark(function.get("name"))
                function["arguments"] = _marked_value(function.get("arguments"))
                call["function"] = function
            calls.append(call)
        out["tool_calls"] = calls
    return out


def _marked_tools(value):
    """The tools with their names, titles and descriptions marked: text from the client. Types,
    enums and property names are left as they are: templates compare them."""
    if isinstance(value, dict):
        return {k: (_mark(v) if k in _TOOL_TEXT_KEYS and isinstance(v, str) else _marked_tools(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_marked_tools(v) for v in value]
    return value


def split_marked(text: str) -> list[tuple[str, bool]]:
    """A marked rendering (or any piece of one) as (text, is_content) parts, markers removed.

    A template that cuts a message's text (``content.split(...)``) can leave a marker unpaired;
    then the doubtful side is taken as content: at worst some markup is tokenized as text, never
    message text as markup.
    """
    parts: list[tuple[str, bool]] = []
    depth = 0
    start = 0
    for match in _MARKERS.finditer(text):
        i, marker = match.start(), match.group()
        if i > start:
            parts.append((text[start:i], depth > 0 or marker == CONTENT_CLOSE))
        depth = depth + 1 if marker == CONTENT_OPEN else max(0, depth - 1)
        start = i + 1
    if start < len(text):
        parts.append((text[start:], depth > 0))
    return parts


_MARKERS = re.compile(f"[{CONTENT_OPEN}{CONTENT_CLOSE}]")


def read_template_file(path: str | Path) -> str:
    """The text of a ``--chat-template FILE`` (a pipe such as ``<(cmd)`` too), capped in size;
    a clear usage error if it cannot be read."""
    return safe_io.read_text_input(path, what="chat template", limit=safe_io.TEMPLATE_MAX_BYTES)
