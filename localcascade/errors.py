"""Typed errors. Every failure a user can cause or meet is one of these.

The CLI turns them into a one-line message on stderr and the exit code below
(see ``localcascade.cli.main``); library callers can catch them by class.
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
    """A prompt or conversation longer than the context window."""


class ChatTemplateError(EngineError):
    """The model has no usable chat template."""


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
