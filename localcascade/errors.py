"""Typed errors. Every failure a user can cause or meet is one of these.

The CLI turns them into a one-line message on stderr and the exit code below
(see ``localcascade.cli.main``); library callers can catch them by class.

Layers below the front ends never name a front end's flag or field: an error about something the
user sets (the context, expert blocks in RAM, the policy's preference, a chat template, the tool,
the machine's sizes, a model's name, a generation option) is a type with its figures as fields, and
``str()`` says it in plain words. Each front end words it with its own name for the setting: the
command line with its flag (``cli/wording.error_line``), the chat with its /set names, the server
with its request's terms (``server/http_errors.error_message``, a 400's ``param``).
"""

from __future__ import annotations


class LocalCascadeError(Exception):
    """Base class: ``str(err)`` is the one-line message shown to the user."""

    exit_code = 1


class UsageError(LocalCascadeError):
    """The command line or its input is wrong (bad option value, empty prompt...)."""

    exit_code = 2


class InputFileError(UsageError):
    """A file the user named as input that cannot be used: missing, not a regular file or a pipe,
    larger than its cap, a pipe that never sends anything, or text that is not UTF-8."""


class OutputTargetError(UsageError):
    """An output path that must not be written: a device node, a folder, a symbolic link, an
    existing file without an explicit replace, or a name another process took meanwhile."""


class OptionError(UsageError):
    """A generation option outside its limits (engine/options.py): ``field`` is GenerationOptions'
    name for it, ``accepted`` what it takes. Each front end names the field its own way."""

    def __init__(self, field: str, value: object, accepted: str):
        self.field, self.value, self.accepted = field, value, accepted
        super().__init__(self.naming(field))

    def naming(self, name: str) -> str:
        """The message with the option called ``name`` (a flag, a /set name, a request field)."""
        return f"{name} takes {self.accepted}, not {self.value!r}"


class UnknownPreferenceError(UsageError):
    """A preference (the policy's other rule) that is none of ``choices``."""

    def __init__(self, value: str, choices: tuple[str, ...]):
        self.value, self.choices = value, choices
        super().__init__(f"the preference takes {', '.join(choices)}, not {value!r}")


class ExpertLayersError(UsageError):
    """More layers asked to keep their experts in RAM than ``model`` has (``n_layer``)."""

    def __init__(self, value: int, n_layer: int, model: str):
        self.value, self.n_layer, self.model = value, n_layer, model
        super().__init__(f"experts of {value} layers in RAM is more than the {n_layer} layers of {model}: "
                         f"give 0 to {n_layer} ({n_layer} keeps every layer's experts in RAM)")


class ContextPastTrainingError(UsageError):
    """A context per conversation past what ``model`` was trained on (``trained`` tokens), refused
    where a reply's reader cannot see a warning (the server's conversations)."""

    def __init__(self, n_ctx: int, trained: int, model: str):
        self.n_ctx, self.trained, self.model = n_ctx, trained, model
        super().__init__(f"a context of {n_ctx:,} tokens per conversation is more than the {trained:,} tokens "
                         f"{model} was trained on")


class NoToolCallTokensError(UsageError):
    """``model``'s vocabulary lacks the tool-call marker tokens (``missing``), so it can never call the tool."""

    def __init__(self, model: str, missing: tuple[str, ...]):
        self.model, self.missing = model, missing
        super().__init__(f"{model} has no {' or '.join(missing)} token, so it cannot call tools: "
                         "the python tool needs a model trained for tool calls")


class BenchSizeError(UsageError):
    """A benchmark that measures nothing (no prompt and no generated tokens), or one larger than the
    context (``n_ctx`` set)."""

    def __init__(self, prompt_tokens: int, gen_tokens: int, n_ctx: int | None = None):
        self.prompt_tokens, self.gen_tokens, self.n_ctx = prompt_tokens, gen_tokens, n_ctx
        if n_ctx is None:
            super().__init__("give a positive prompt or generation token count")
        else:
            super().__init__(f"the context ({n_ctx} tokens) is smaller than the test "
                             f"({max(prompt_tokens, gen_tokens)} tokens)")


class HardwareChoiceError(UsageError):
    """The machine to plan for, given wrongly: a profile and a GPU size both (``setting`` None), or
    a size (``setting`` "vram" or "ram", as ``text``) that is not above zero."""

    def __init__(self, setting: str | None = None, text: str = ""):
        self.setting, self.text = setting, text
        if setting is None:
            super().__init__("give either a hardware profile or a GPU memory size, not both")
        else:
            super().__init__(f"the {'GPU memory' if setting == 'vram' else 'RAM'} size must be above zero, "
                             f"got {text!r}")


class NameTakenError(UsageError):
    """A name a model cannot be registered as: a catalog variant's (``path`` None), or one registered
    to the file at ``path`` (which ``replace`` would take over)."""

    def __init__(self, name: str, path: str | None = None):
        self.name, self.path = name, path
        if path is None:
            super().__init__(f"cannot register a model as {name!r}: it is the name of a catalog variant; "
                             "choose another name")
        else:
            super().__init__(f"a model named {name!r} is already registered ({path}); choose another name, "
                             "or replace it")


class ModelNotFoundError(LocalCascadeError):
    """A model name, file or repository could not be found."""


class GGUFHeaderError(LocalCascadeError):
    """A GGUF file (or split set) whose header cannot be read; the message names the file."""


class HardwareError(LocalCascadeError):
    """A hardware profile or size that cannot be used."""


class UnknownProfileError(HardwareError, UsageError):
    """`--gpu NAME` names no hardware profile: a usage error (exit 2)."""


class DoesNotFitError(LocalCascadeError):
    """A requested placement or override that the memory model says cannot fit."""


class DownloadError(LocalCascadeError):
    """A transfer failed (network, 404, integrity)."""


class AuthError(DownloadError):
    """The hub refused access (401/403): gated or private repository."""


class OfflineError(DownloadError):
    """HF_HUB_OFFLINE=1 forbids the network and the answer needs it (callers may fall back to the catalog)."""


class IntegrityError(DownloadError):
    """A file's sha256 did not match the published one."""


class DiskSpaceError(LocalCascadeError):
    """Not enough free disk for a download or a quantized file."""


class QuantizeError(LocalCascadeError):
    """Quantization refused or failed."""


class OutputPathError(QuantizeError, OutputTargetError):
    """A quantize output path refused before any work (missing folder, the source, an existing file)."""


class EngineError(LocalCascadeError):
    """The model could not be loaded or run."""


class ContextOverflowError(EngineError):
    """A prompt or conversation longer than the context window: ``prompt_tokens`` (``at_least``: it
    was counted only that far) against ``context_tokens``, a conversation's share where the context
    holds several (``per_conversation``). ``str()`` says so without a remedy; each front end adds its own."""

    def __init__(self, message: str = "", *, prompt_tokens: int | None = None, context_tokens: int | None = None,
                 at_least: bool = False, per_conversation: bool = False):
        self.prompt_tokens, self.context_tokens = prompt_tokens, context_tokens
        self.at_least, self.per_conversation = at_least, per_conversation
        if not message:
            count = f"more than {prompt_tokens:,}" if at_least else f"{prompt_tokens}"
            holder = "a conversation's context" if per_conversation else "the context"
            amount = f"{context_tokens:,}" if at_least else f"{context_tokens}"
            message = f"the prompt is {count} tokens but {holder} holds {amount} (and the reply needs room too)"
        super().__init__(message)


class ChatTemplateError(EngineError):
    """The model has no usable chat template."""


class NoChatTemplateError(ChatTemplateError):
    """``model`` carries no chat template and none was given."""

    def __init__(self, model: str):
        self.model = model
        super().__init__(f"{model} has no chat template; give one")


class SandboxUnavailableError(LocalCascadeError):
    """``--tools python`` cannot run code safely here: no sandbox, or one that does not work."""


class Interrupted(LocalCascadeError):
    """The user pressed Ctrl-C."""

    exit_code = 130


class Terminated(SystemExit):
    """SIGTERM or SIGHUP arrived. Not a KeyboardInterrupt: every ``finally`` clean-up runs (a
    quantization's work folder goes), but nothing that treats Ctrl-C as "stop this reply" (the
    chat) can swallow it. A SystemExit, because event loops let only that and KeyboardInterrupt
    through: raised in a callback of prompt-toolkit's loop (a signal during a paste), any other
    exception goes to its handler, which prints it and waits for Enter. Exit status 128 + the
    signal (``cli.main`` catches it before any SystemExit)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
