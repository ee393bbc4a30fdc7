"""Shared CLI helpers: model loading flags, key=value arguments, rich output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from slimkit.core.errors import SlimkitError

console = Console()
err_console = Console(stderr=True)

ModelPath = Annotated[Path, typer.Argument(help="Checkpoint folder, .safetensors, .pt2, .onnx, or a pickle.")]
Factory = Annotated[
    str | None, typer.Option(help="'package.module:function' that builds the model (for .safetensors and pickles).")
]
TrustPickle = Annotated[
    bool,
    typer.Option(
        "--trust-pickle", help="Allow loading a torch.save pickle (it can run code). Use only for files you trust."
    ),
]
Force = Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")]
DataName = Annotated[str, typer.Option("--data", "-d", help="Dataset name (see 'slimkit env') or a .npz file.")]


def parse_kwargs(items: list[str] | None) -> dict[str, Any]:
    """``["width=0.5", "cell=gru"]`` -> ``{"width": 0.5, "cell": "gru"}`` (values read as JSON when they can be)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SlimkitError(f"--arg takes key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def load_model(path: Path, factory: str | None, trust_pickle: bool) -> Any:
    from slimkit.io import load

    return load(path, factory=factory, trust_pickle=trust_pickle)
