"""``slimkit distill``: train a smaller student from a teacher checkpoint and save it with its report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimkit.cli import app
from slimkit.cli.common import (
    Amp,
    DataName,
    Device,
    Factory,
    Force,
    ModelPath,
    TrustPickle,
    console,
    is_keras,
    load_model,
    parse_kwargs,
    print_keras_result,
)


@app.command("distill")
def distill_command(
    teacher: ModelPath,
    data: DataName,
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint folder to write.")],
    student: Annotated[
        str | None, typer.Option(help="Zoo student 'name:key=value,...', e.g. seed_cnn:width=0.25.")
    ] = None,
    width: Annotated[float, typer.Option(help="Without --student: derive one at this width.")] = 0.5,
    depth: Annotated[int | None, typer.Option(help="Without --student: derived student's depth.")] = None,
    temperature: Annotated[float, typer.Option(help="Softmax temperature.")] = 4.0,
    alpha: Annotated[float, typer.Option(help="Weight of the distillation term (1 - alpha: labels).")] = 0.5,
    feature: Annotated[
        list[str] | None, typer.Option("--feature", help="Feature matching student_layer=teacher_layer (repeatable).")
    ] = None,
    beta: Annotated[float, typer.Option(help="Weight of the feature-matching loss.")] = 1.0,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    device: Device = None,
    amp: Amp = None,
    factory: Factory = None,
    trust_pickle: TrustPickle = False,
    force: Force = False,
) -> None:
    """Distil TEACHER into a smaller student on DATA and save the student to OUTPUT."""
    from slimkit.simplify.workflow import distill_and_save

    features = {k: str(v) for k, v in parse_kwargs(feature).items()} or None
    if is_keras(teacher):
        from slimkit.keras.workflows import distill_file, unsupported

        supported = "--width (a student derived from the teacher), --temperature, --alpha, --epochs, --lr, --seed"
        flags = (
            ("--student", student),
            ("--depth", depth),
            ("--feature", features),
            ("--device", device),
            ("--amp", amp),
        )
        for flag, used in flags:
            if used:
                raise unsupported("distill", flag, supported)
        result = distill_file(
            teacher,
            output,
            data=data,
            width=width,
            temperature=temperature,
            alpha=alpha,
            epochs=epochs,
            lr=lr,
            seed=seed,
            force=force,
        )
        print_keras_result(result)
        return
    result = distill_and_save(
        load_model(teacher, factory, trust_pickle),
        output,
        data=data,
        student=student,
        width=width,
        depth=depth,
        temperature=temperature,
        alpha=alpha,
        features=features,
        beta=beta,
        epochs=epochs,
        lr=lr,
        seed=seed,
        device=device,
        amp=amp,
        force=force,
        progress=True,
    )
    for label, who in (("before", "teacher"), ("after", "student")):
        r = result[label]
        console.print(
            f"{who}: accuracy {100 * r['metrics']['accuracy']:.2f}%  params {r['params']:,}  MACs {r['macs']:,}"
        )
    console.print(f"saved {output}")
