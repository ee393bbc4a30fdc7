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
    optimize: Annotated[bool, typer.Option(help="Run slimkit optimize on the trained model.")] = True,
    force: Force = False,
) -> None:
    """Train seed_cnn on mnist5k, evaluate and export it, then optimize it (4x fewer MACs, int8)."""
    from slimkit.workflows import demo

    result = demo(output, epochs=epochs, optimize=optimize, force=force, log=console.print)
    console.print(result["report"])
    console.print(f"ONNX top-1 agreement with PyTorch on the test set: {100 * result['onnx']['top1_agreement']:.2f}%")
    optimized = result["optimized"]
    if optimized is not None:
        console.print(optimized.comparison)
        console.print(optimized.summary(), markup=False)
        console.print(f"report: {output}/optimized/report.html")
    console.print(f"outputs in {output}/: checkpoint/, model.onnx, report.json" + (", optimized/" if optimized else ""))
