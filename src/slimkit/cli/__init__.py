"""The ``slimkit`` command line. One module per verb; user errors print one line, no traceback."""

from __future__ import annotations

import sys

import typer

from slimkit.core.errors import SlimkitError

app = typer.Typer(
    name="slimkit",
    help="Make trained neural networks smaller and faster, and prove it with measurements.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

from slimkit.cli import demo, env, evaluate, export, train  # noqa: E402, F401  (register the verbs)


def main() -> None:
    """Entry point of the ``slimkit`` script."""
    try:
        app()
    except SlimkitError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
