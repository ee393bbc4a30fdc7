"""``slimkit fuse``: ensemble or average checkpoints, optionally distil the result into one model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimkit.cli import app
from slimkit.cli.common import Amp, Device, Force, console, is_keras, parse_kwargs, print_keras_result
from slimkit.core.errors import SlimkitError


@app.command("fuse")
def fuse_command(
    checkpoints: Annotated[
        list[Path], typer.Argument(help="Checkpoint folders (or .keras files) of the members (two or more).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint folder to write.")],
    method: Annotated[
        str,
        typer.Option(help="mean, vote, weighted, select, stack (ensembles) or uniform-soup, greedy-soup (averaging)."),
    ] = "mean",
    data: Annotated[
        str | None, typer.Option("--data", "-d", help="Dataset: fits weighted/stack/greedy, BN statistics, accuracy.")
    ] = None,
    distill_into: Annotated[
        str | None,
        typer.Option(
            help="Distil the fused model into a new zoo model (e.g. seed_cnn), or into 'best-member' (a copy of the "
            "member with the best validation accuracy); saves the student."
        ),
    ] = None,
    student_arg: Annotated[
        list[str] | None, typer.Option("--student-arg", help="Student argument key=value, e.g. width=0.5 (repeatable).")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Distillation epochs.")] = 10,
    temperature: Annotated[float, typer.Option(help="Distillation temperature.")] = 4.0,
    alpha: Annotated[float, typer.Option(help="Weight of the distillation term (the rest is cross-entropy).")] = 0.5,
    lr: Annotated[
        float | None, typer.Option(help="Distillation learning rate (default: 3e-4 for best-member, else 1e-3).")
    ] = None,
    l2: Annotated[float, typer.Option(help="Stacking: pull towards plain averaging.")] = 1e-2,
    seed: Annotated[int, typer.Option(help="Seed for the student.")] = 0,
    device: Device = None,
    amp: Amp = None,
    force: Force = False,
) -> None:
    """Fuse CHECKPOINTS (or .keras files) with METHOD and save the result (with report.json) to OUTPUT."""
    if any(is_keras(c) for c in checkpoints):
        from slimkit.keras.workflows import fuse_file, unsupported

        if not all(is_keras(c) for c in checkpoints):
            raise SlimkitError("fuse takes members of one kind: all .keras files or all PyTorch checkpoints")
        for flag, used in (("--distill-into", distill_into), ("--device", device), ("--amp", amp)):
            if used is not None:
                raise unsupported(
                    "fuse",
                    flag,
                    "mean, vote, weighted, uniform-soup, greedy-soup (distil in Python with slimkit.keras.distill)",
                )
        print_keras_result(fuse_file(checkpoints, output, method=method, data=data, force=force))
        return
    from slimkit.fuse.workflow import fuse_and_save

    report = fuse_and_save(
        checkpoints=list(checkpoints),
        method=method,
        output=output,
        data=data,
        distill_into=distill_into,
        student_args=parse_kwargs(student_arg),
        distill_epochs=epochs,
        temperature=temperature,
        alpha=alpha,
        lr=lr,
        l2=l2,
        seed=seed,
        device=device,
        amp=amp,
        force=force,
    )
    for i, m in enumerate(report.get("members", [])):
        best = "  <- best by validation" if i == report["best_member"] else ""
        console.print(
            f"member {i}  val {100 * m['val_accuracy']:.2f}%  test {100 * m['test_accuracy']:.2f}%  "
            f"MACs {m['macs']:,}  ({m['path']}){best}"
        )
    for key in ("fused", "distilled"):
        if key in report:
            r = report[key]
            label = method if key == "fused" else f"distilled into {report['config']['distill_into']}"
            console.print(
                f"{label}  val {100 * r['val_accuracy']:.2f}%  test {100 * r['test_accuracy']:.2f}%  MACs {r['macs']:,}"
            )
    console.print(f"saved {output}  (load with slimkit.load)")
