"""``slimkit evaluate``: quality and cost of a model file on a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimkit.cli import app
from slimkit.cli.common import DataName, Factory, Force, ModelPath, TrustPickle, console, is_keras, load_model


@app.command("evaluate")
def evaluate_command(
    model: ModelPath,
    data: DataName,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    latency: Annotated[bool, typer.Option(help="Measure latency.")] = True,
    runs: Annotated[int, typer.Option(help="Timed runs per latency figure (median reported).")] = 30,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report to this JSON file.")] = None,
    factory: Factory = None,
    trust_pickle: TrustPickle = False,
    force: Force = False,
) -> None:
    """Print accuracy, precision, recall, F1, params, MACs, file size and latency of MODEL on DATA."""
    import slimkit as sk
    from slimkit.core.files import check_output

    if json_out is not None:
        check_output(json_out, force)  # refuse now, not after the measurements
    dataset = sk.data.load(data)
    if is_keras(model):  # measured through its ONNX export (ONNX Runtime latency), data laid out for it
        from slimkit.keras.workflows import evaluate as evaluate_keras

        report = evaluate_keras(model, dataset, split=split, latency=latency, latency_runs=runs)
    else:
        report = sk.evaluate(
            load_model(model, factory, trust_pickle), dataset, split=split, latency=latency, latency_runs=runs
        )
    console.print(report)
    if json_out is not None:
        report.to_json(json_out, force=force)
        console.print(f"wrote {json_out}")
