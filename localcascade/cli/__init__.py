"""The command line: thin commands over the layers below.

Each command lives in its own module here, parses its options, calls one
function of the layer below and renders the result. Heavy libraries
(llama_cpp, huggingface_hub) are imported inside command bodies only, so
``localcascade --help`` stays fast. Errors are typed exceptions
(``localcascade.errors``) turned into one-line messages and exit codes in
``main`` and nowhere else.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from localcascade.errors import LocalCascadeError

# typer >= 0.29 raises the exceptions of its own bundled copy of click; older typers use click itself.
_click = getattr(typer, "_click", None) or importlib.import_module("click")

app = typer.Typer(
    name="localcascade",
    help="Run Nemotron-Cascade-2-30B-A3B on this machine at the best quality it can hold.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Importing a command module registers its command(s) on ``app``.
from localcascade.cli import (  # noqa: E402,F401
    ask,
    bench,
    doctor,
    fit,
    models,
    quantize,
    run,
)


def _print_version(value: bool) -> None:
    if value:
        from localcascade import __version__

        typer.echo(f"localcascade {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", "-V", help="Print the version and exit.",
                                 callback=_print_version, is_eager=True),
) -> None:
    pass


def _fail(message: str, code: int) -> int:
    print(f"localcascade: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and map every failure to one line and an exit code."""
    try:
        result = app(args=argv, prog_name="localcascade", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except LocalCascadeError as err:
        code = _fail(str(err), err.exit_code)
    except typer.Exit as err:
        code = err.exit_code
    except _click.exceptions.NoArgsIsHelpError as err:
        # Bare `localcascade` (or a group without its command): the help is what was asked for.
        typer.echo(err.ctx.get_help())
        code = 0
    except _click.exceptions.UsageError as err:
        hint = f" (see `{err.ctx.command_path} --help`)" if err.ctx is not None else ""
        code = _fail(f"{err.format_message()}{hint}", 2)
    except _click.exceptions.ClickException as err:
        code = _fail(err.format_message(), err.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        code = _fail("interrupted", 130)
    except BrokenPipeError:
        # The reader went away (`| head -1`): stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 0
    sys.exit(code)
