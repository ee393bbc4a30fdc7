"""``slimkit evaluate``: quality and cost of a model file on a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimkit.cli import app
from slimkit.cli.common import (
    DataName,
    Factory,
    Force,
    ModelPath,
    Runtime,
    TaskName,
    TrustPickle,
    console,
    is_keras,
    load_model,
)


@app.command("evaluate")
def evaluate_command(
    model: ModelPath,
    data: DataName,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    task: TaskName = None,
    latency: Annotated[bool, typer.Option(help="Measure latency.")] = True,
    runs: Annotated[int, typer.Option(help="Timed runs per latency figure (median reported).")] = 30,
    runtime: Runtime = "onnxruntime",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report to this JSON file.")] = None,
    factory: Factory = None,
    trust_pickle: TrustPickle = False,
    force: Force = False,
) -> None:
    """Print the task's metrics (accuracy, F1...), params, MACs, file size and latency of MODEL on DATA.

    MODEL may also be an ONNX file or an OpenVINO IR (.xml), run on --runtime."""
    import slimkit as sk
    from slimkit.core.errors import SlimkitError
    from slimkit.core.files import check_output
    from slimkit.io.onnx import OnnxModel, check_runtime

    if json_out is not None:
        check_output(json_out, force)  # refuse now, not after the measurements
    check_runtime(runtime)
    dataset = sk.data.load(data)
    if is_keras(model):  # measured through its ONNX export, data laid out for it
        from slimkit.keras.workflows import evaluate as evaluate_keras

        if task is not None:
            raise SlimkitError(
                "--task is for PyTorch models and ONNX files: a Keras model is scored by the data's task"
            )
        report = evaluate_keras(model, dataset, split=split, latency=latency, latency_runs=runs, runtime=runtime)
    else:
        if model.suffix.lower() in (".onnx", ".xml"):
            loaded = OnnxModel(model, runtime=runtime)
        else:
            loaded = load_model(model, factory, trust_pickle)
        report = sk.evaluate(
            loaded, dataset, task=task, split=split, latency=latency, latency_runs=runs, runtime=runtime
        )
    console.print(report)
    if json_out is not None:
        report.to_json(json_out, force=force)
        console.print(f"wrote {json_out}")
