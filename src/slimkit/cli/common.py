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

ModelPath = Annotated[
    Path, typer.Argument(help="Checkpoint folder, .safetensors, .pt2, .onnx, a Keras 3 .keras file, or a pickle.")
]
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


def is_keras(path: Path) -> bool:
    """Whether the verb's model argument is a Keras 3 ``.keras`` file (handled by ``slimkit.keras.workflows``)."""
    return path.suffix.lower() == ".keras"


def print_keras_result(result: dict[str, Any]) -> None:
    """Before / after figures of a Keras job (``slimkit.keras.workflows``), and what was skipped."""
    from slimkit.evaluate import compare

    if result.get("before") is not None:
        console.print(compare(result["before"], result["after"]))
    else:
        (p0, p1), (m0, m1) = result["params"], result["macs"]
        console.print(f"params {p0:,} -> {p1:,}; MACs {m0:,} -> {m1:,}")
    for record in result["records"]:
        console.print(str(record), markup=False)  # what changed, and every skipped layer with the reason
    console.print(f"saved {result['output']}")


def load_model(path: Path, factory: str | None, trust_pickle: bool) -> Any:
    if is_keras(path):
        raise SlimkitError(f"{path}: this command does not take .keras models yet")
    from slimkit.io import load

    return load(path, factory=factory, trust_pickle=trust_pickle)
