"""``slimkit demo``: train the design brief's CNN on real MNIST digits, measure it, export it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimkit.cli import app
from slimkit.cli.common import Force, console


@app.command("demo")
def demo_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the demo's outputs.")] = Path("runs/demo"),
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 20,
    force: Force = False,
) -> None:
    """Train seed_cnn on mnist5k, evaluate it, and write checkpoint, ONNX and report.json."""
    from slimkit.workflows import demo

    result = demo(output, epochs=epochs, force=force, log=console.print)
    console.print(result["report"])
    console.print(
        f"ONNX top-1 agreement with PyTorch on the test set: {100 * result['onnx']['top1_agreement']:.2f}%\n"
        f"outputs in {output}/: checkpoint/, model.onnx, report.json"
    )
