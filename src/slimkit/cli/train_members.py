"""``slimkit train-members``: train several members of one zoo model, for ensembles or soups."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimkit.cli import app
from slimkit.cli.common import Amp, DataName, Device, Force, console, parse_kwargs
from slimkit.core.errors import SlimkitError


@app.command("train-members")
def train_members_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Zoo model name, e.g. seed_cnn.")],
    data: DataName,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write (member-<i>/ checkpoints).")],
    n: Annotated[int, typer.Option("--n", "-n", help="Number of members.")] = 5,
    arg: Annotated[list[str] | None, typer.Option("--arg", "-a", help="Model argument key=value (repeatable).")] = None,
    from_start: Annotated[
        bool,
        typer.Option(
            "--from-start/--independent",
            help="Fine-tune every member from one shared start (needed for soups) or train each from scratch "
            "(diverse members, better for ensembles and distillation).",
        ),
    ] = True,
    start_epochs: Annotated[int, typer.Option(help="Epochs of the shared start.")] = 8,
    epochs: Annotated[int, typer.Option(help="Epochs per member.")] = 8,
    lr: Annotated[float, typer.Option(help="Learning rate (start, or independent members).")] = 1e-3,
    finetune_lr: Annotated[float | None, typer.Option(help="Fine-tuning learning rate (default: lr / 2).")] = None,
    augment: Annotated[bool, typer.Option(help="Use the dataset's training augmentation.")] = True,
    affine: Annotated[
        bool,
        typer.Option(
            "--affine/--no-affine",
            help="Train on small random rotations, scalings and shifts of the images instead of the dataset's "
            "augmentation (diverse, less overfit members).",
        ),
    ] = False,
    elastic: Annotated[
        bool,
        typer.Option(
            "--elastic/--no-elastic",
            help="Train on Simard et al.'s elastic distortions of the images instead of the dataset's augmentation "
            "(on mnist5k the strongest members).",
        ),
    ] = False,
    checkpoint: Annotated[
        str,
        typer.Option(
            help="Weights each member keeps: 'last' (end of the cosine schedule; validation left for the fusion "
            "choices) or 'best-val' (best validation epoch)."
        ),
    ] = "last",
    bag: Annotated[
        str | None,
        typer.Option(
            help="Train each member on different data (with --independent): 'cv' trains member i on the train and "
            "val samples except its own 1/N part, its validation set; 'bootstrap' on a bootstrap sample of the "
            "training split. The best member is then chosen on each member's own validation data."
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Run seed: the start uses 1000 * seed, member i uses 1000 * seed + 1 + i.")
    ] = 0,
    force: Force = False,
    device: Device = None,
    amp: Amp = None,
) -> None:
    """Train N members of MODEL on DATA and save them to OUTPUT/member-<i>/ with OUTPUT/members.json."""
    from slimkit.fuse.workflow import train_members_and_save

    if affine and elastic:
        raise SlimkitError("choose one of --affine and --elastic")
    summary = train_members_and_save(
        model=model,
        data=data,
        n=n,
        output=output,
        model_args=parse_kwargs(arg),
        from_start=from_start,
        start_epochs=start_epochs,
        epochs=epochs,
        lr=lr,
        finetune_lr=finetune_lr,
        augment="elastic" if elastic else "affine" if affine else augment,
        checkpoint=checkpoint,
        bag=bag,
        seed=seed,
        device=device,
        amp=amp,
        force=force,
    )
    rows = ([summary["start"]] if "start" in summary else []) + summary["members"]
    best = summary["members"][summary["best_member"]]["path"]
    for r in rows:
        mark = "  <- best by validation" if r["path"] == best else ""
        own = f"  own val {100 * r['held_out_accuracy']:.2f}%" if "held_out_accuracy" in r else ""
        console.print(
            f"{r['path']:<10} val {100 * r['val_accuracy']:.2f}%{own}  test {100 * r['test_accuracy']:.2f}%{mark}"
        )
    console.print(f"saved {output} ({summary['kind']} members)")
