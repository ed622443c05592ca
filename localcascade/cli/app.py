"""The typer application every command module registers on (imported by them, never the reverse)."""

from __future__ import annotations

import typer

from localcascade.cli.completion import use_safe_installer

use_safe_installer()     # typer's own installer writes through symbolic links
app = typer.Typer(
    name="localcascade",
    help="Run Nemotron-Cascade-2-30B-A3B on this machine at the best quality it can hold.",
    no_args_is_help=True,
    add_completion=True,   # `localcascade --install-completion`: commands, options and model names complete
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
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
