"""``slimkit simplify``: remove layers or blocks, fine-tune, fold; save the simpler model with its report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimkit.cli import app
from slimkit.cli.common import Factory, Force, ModelPath, TrustPickle, console, is_keras, load_model, print_keras_result


@app.command("simplify")
def simplify_command(
    model: ModelPath,
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint folder to write.")],
    fold: Annotated[bool, typer.Option("--fold", help="Fold BatchNorm, drop Dropout/Identity, merge Linears.")] = False,
    remove: Annotated[list[str] | None, typer.Option("--remove", help="Layer name or re:regex (repeatable).")] = None,
    remove_type: Annotated[
        list[str] | None, typer.Option("--remove-type", help="Remove every layer of this type, e.g. MaxPool2d.")
    ] = None,
    repair: Annotated[str, typer.Option(help="transfer (map old weights where possible) or init.")] = "transfer",
    drop_blocks: Annotated[
        float | None, typer.Option("--drop-blocks", help="Residual blocks to drop by importance (count or fraction).")
    ] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Dataset to measure and fine-tune on.")] = None,
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs after removal (needs --data).")] = 0,
    lr: Annotated[float, typer.Option(help="Fine-tuning learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed for re-initialised layers and fine-tuning.")] = 0,
    factory: Factory = None,
    trust_pickle: TrustPickle = False,
    force: Force = False,
) -> None:
    """Simplify MODEL and save it to OUTPUT (report.json holds every change and the costs before/after)."""
    from slimkit.simplify.workflow import simplify_and_save

    if is_keras(model):
        from slimkit.keras.workflows import simplify_file, unsupported

        if drop_blocks is not None:
            raise unsupported(
                "simplify",
                "--drop-blocks",
                "--fold, --remove, --remove-type (Keras class names), --repair, --data, --epochs, --lr",
            )
        result = simplify_file(
            model,
            output,
            fold=fold,
            remove=remove or [],
            remove_types=remove_type or [],
            repair=repair,
            data=data,
            epochs=epochs,
            lr=lr,
            force=force,
        )
        print_keras_result(result)
        return
    result = simplify_and_save(
        load_model(model, factory, trust_pickle),
        output,
        fold=fold,
        remove=remove,
        remove_types=remove_type,
        repair=repair,
        drop_blocks=drop_blocks,
        data=data,
        epochs=epochs,
        lr=lr,
        seed=seed,
        force=force,
        progress=True,
    )
    for record in result["records"]:
        d = record["details"]
        console.print(f"{record['transform']}: changed {len(record['changed'])} layer(s)")
        if "params_before" in d:
            console.print(f"  params {d['params_before']:,} -> {d['params_after']:,}")
        if "macs_before" in d:
            console.print(f"  MACs {d['macs_before']:,} -> {d['macs_after']:,}")
        for name, how in d.get("repaired", {}).items():
            console.print(f"  repaired {name}: in {how['in'][0]} -> {how['in'][1]} by {how['how']}")
    for label in ("before", "after"):
        if result[label]:
            console.print(f"{label}: accuracy {100 * result[label]['metrics']['accuracy']:.2f}%")
    console.print(f"saved {output}")
