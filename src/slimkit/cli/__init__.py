"""The ``slimkit`` command line. One module per verb; user errors print one line, no traceback."""

from __future__ import annotations

import os
import sys

import typer

from slimkit.core.errors import SlimkitError, first_line

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

    from slimkit.cli.common import validated

    for info in pkgutil.iter_modules(__path__):
        if info.name != "common":
            importlib.import_module(f"{__name__}.{info.name}")
    for command in app.registered_commands:  # one validation layer for every verb's options
        command.callback = validated(command.name or "", command.callback)


_register_verbs()


def main() -> None:
    """Entry point of the ``slimkit`` script: user errors print one line and exit 2; a bug prints one
    line and exits 1 (``SLIMKIT_DEBUG=1`` shows its traceback)."""
    # transformers' own bars ("Loading weights", "Writing model shards") for every folder slimkit reads
    # or writes would interleave with slimkit's progress; read when transformers is first imported
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        app()
    except SlimkitError as exc:
        _fail(str(exc), 2)
    except MemoryError:
        _fail("out of memory: the model or data is too large for this machine; use smaller inputs", 2)
    except OSError as exc:  # the file system refused: permissions, a full disk, a path that vanished
        where = f" ({exc.filename})" if exc.filename else ""
        _fail(f"{exc.strerror or type(exc).__name__}{where}; check the path, its permissions and free space", 2)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if _peer_lost(exc):
            _fail(
                f"another process of this torchrun job ended ({first_line(exc)[:200]}); see its message, then rerun "
                "with --resume to continue from the last saved candidate",
                2,
            )
        if _raised_by_a_layer(exc):  # a layer refused its input: the data does not fit the model
            _fail(
                f"the model cannot run on this input ({first_line(exc)[:300]}); check that the data's shape "
                "and dtype match what the model was built for",
                2,
            )
        if os.environ.get("SLIMKIT_DEBUG"):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _fail(
            f"internal error ({type(exc).__name__}: {message[:300]}); this is a bug in slimkit, please report it "
            "with the command and 'slimkit env' (SLIMKIT_DEBUG=1 shows the traceback)",
            1,
        )


def _peer_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another process of the job went away."""
    if "torch.distributed" not in sys.modules or not isinstance(exc, RuntimeError):
        return False
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    return isinstance(exc, getattr(dist, "DistError", ())) or any(w in str(exc) for w in ("gloo", "NCCL", "by peer"))


def _raised_by_a_layer(exc: BaseException) -> bool:
    """Whether ``exc`` is torch refusing a layer's input (a shape or dtype that does not fit), raised
    inside ``torch.nn`` while a model ran."""
    if not isinstance(exc, RuntimeError | ValueError | TypeError | IndexError):
        return False
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename.replace(os.sep, "/")
        if "/torch/nn/modules/" in name or name.endswith("/torch/nn/functional.py"):
            return True
        tb = tb.tb_next
    return False


def _fail(message: str, code: int, limit: int = 600) -> None:
    line = " ".join(message.split())
    typer.secho(f"error: {line if len(line) <= limit else line[: limit - 3] + '...'}", fg=typer.colors.RED, err=True)
    sys.exit(code)
