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


def _register_verbs() -> None:
    """Import every module of this package: each one adds its verb to ``app``."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name != "common":
            importlib.import_module(f"{__name__}.{info.name}")


_register_verbs()


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
