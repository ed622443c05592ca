"""Chat rendering with the model's own Jinja chat template, sandboxed.

The environment mirrors what Hugging Face tokenizers and llama-cpp-python's
Jinja2ChatFormatter give templates (trim/lstrip blocks, ``raise_exception``,
``strftime_now``, a ``tojson`` that does not HTML-escape), so templates
written for them render the same here. Templates come from model files, i.e.
from strangers: the sandbox keeps them from reaching Python internals.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from localcascade import safe_io
from localcascade.errors import ChatTemplateError


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
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.source = source
        self.origin = origin
        self.bos_token = bos_token
        self.eos_token = eos_token
        env = ImmutableSandboxedEnvironment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        env.filters["tojson"] = _tojson
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as err:
            raise ChatTemplateError(f"the {origin} chat template does not compile: {err}") from None

    def render(self, messages: list[dict], *, add_generation_prompt: bool, enable_thinking: bool) -> str:
        import jinja2

        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                enable_thinking=enable_thinking,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except ChatTemplateError:
            raise
        except Exception as err:  # noqa: BLE001 - the template is code from the model file or the user
            detail = str(err) if isinstance(err, jinja2.TemplateError) else f"{type(err).__name__}: {err}"
            raise ChatTemplateError(f"the {self.origin} chat template failed to render: {detail}") from None


def read_template_file(path: str | Path) -> str:
    """The text of a ``--chat-template FILE`` (a pipe such as ``<(cmd)`` too), capped in size;
    a clear usage error if it cannot be read."""
    return safe_io.read_text_input(path, what="chat template", limit=safe_io.TEMPLATE_MAX_BYTES)
