"""``slimkit train``: train a zoo model on a dataset and save a checkpoint with its report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from slimkit.cli import app
from slimkit.cli.common import Amp, DataName, Device, Force, console, parse_kwargs


@app.command("train")
def train_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Zoo model name, e.g. seed_cnn.")],
    data: DataName,
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint folder to write.")],
    arg: Annotated[list[str] | None, typer.Option("--arg", "-a", help="Model argument key=value (repeatable).")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 15,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine schedule).")] = 1e-3,
    optimizer: Annotated[str, typer.Option(help="adam, adamw or sgd.")] = "adam",
    batch_size: Annotated[int | None, typer.Option(help="Batch size (default: the dataset's).")] = None,
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience in epochs.")] = None,
    augment: Annotated[bool, typer.Option(help="Use the dataset's training augmentation.")] = True,
    seed: Annotated[int, typer.Option(help="Seed for initialisation and shuffling.")] = 0,
    device: Device = None,
    amp: Amp = None,
    force: Force = False,
) -> None:
    """Train MODEL on DATA and save checkpoint + report.json + config.json to OUTPUT."""
    from slimkit.workflows import train_and_save

    config = {
        "model": model,
        "data": data,
        "model_args": parse_kwargs(arg),
        "epochs": epochs,
        "lr": lr,
        "optimizer": optimizer,
        "batch_size": batch_size,
        "patience": patience,
        "augment": augment,
        "seed": seed,
        "amp": amp,
    }
    report = train_and_save(output=output, device=device, force=force, **config)
    console.print(report)
    console.print(f"saved {output}  (config.json: {json.dumps(config)})")
