"""``slimkit export``: write a deployable ONNX or ``.pt2`` file and check it against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimkit.cli import app
from slimkit.cli.common import Factory, Force, ModelPath, TrustPickle, console, is_keras, load_model


@app.command("export")
def export_command(
    model: ModelPath,
    output: Annotated[Path, typer.Option("--output", "-o", help="A .onnx or .pt2 file.")],
    data: Annotated[str | None, typer.Option("--data", "-d", help="Dataset to check ONNX top-1 agreement on.")] = None,
    factory: Factory = None,
    trust_pickle: TrustPickle = False,
    force: Force = False,
) -> None:
    """Export MODEL to OUTPUT (.onnx or .pt2) with a dynamic batch size."""
    import slimkit as sk
    from slimkit.evaluate import data_task
    from slimkit.io import onnx_agreement

    if is_keras(model):
        from slimkit.keras.workflows import export_file

        out = export_file(model, output, data=data, force=force)
        console.print(f"wrote {output} ({output.stat().st_size / 1024:.1f} KB; input layout as the Keras model's)")
        if "top1_agreement" in out:
            console.print(
                f"ONNX Runtime vs Keras on {data} test: top-1 agreement {100 * out['top1_agreement']:.2f}%, "
                f"max |diff| {out['max_abs_diff']:.2e}"
            )
        return
    module = load_model(model, factory, trust_pickle)
    dataset = sk.data.load(data) if data else None
    sk.export(module, output, dataset.example if dataset else None, force=force)
    console.print(f"wrote {output} ({output.stat().st_size / 1024:.1f} KB)")
    if dataset is not None and output.suffix == ".onnx":
        if hasattr(dataset, "splits"):  # in memory: the whole test split
            inputs, what = dataset.splits["test"][0], "test"
        else:  # the user's loaders: one batch
            inputs, what = data_task(dataset).inputs(next(iter(dataset.test or dataset.val))), "one test batch"
        check = onnx_agreement(module, output, inputs)
        top1 = f"top-1 agreement {100 * check['top1_agreement']:.2f}%, " if "top1_agreement" in check else ""
        console.print(f"ONNX Runtime vs PyTorch on {dataset.name} {what}: {top1}max |diff| {check['max_abs_diff']:.2e}")
