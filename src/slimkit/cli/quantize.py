"""``slimkit quantize``: int8 ONNX model for ONNX Runtime or OpenVINO, checked on a dataset."""

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
    TrustPickle,
    console,
    is_keras,
    load_model,
)


@app.command("quantize")
def quantize_command(
    model: ModelPath,
    data: DataName,
    output: Annotated[Path, typer.Option("--output", "-o", help="The int8 .onnx file to write.")],
    mode: Annotated[
        str, typer.Option(help="auto, static (QDQ, calibrated), dynamic or int4 (weight-only, block-wise).")
    ] = "auto",
    calibration: Annotated[str, typer.Option(help="minmax, entropy or percentile (static mode).")] = "minmax",
    samples: Annotated[int, typer.Option(help="Training samples used for calibration.")] = 512,
    block_size: Annotated[
        int, typer.Option(help="int4 mode: weights per scale (a power of 2 >= 16; smaller is closer, larger smaller).")
    ] = 32,
    max_drop: Annotated[
        float | None, typer.Option(help="Largest allowed accuracy drop in points on the val split.")
    ] = None,
    per_channel: Annotated[
        str, typer.Option(help="Per-channel int8 weights: on, off or auto (dynamic mode keeps the better on val).")
    ] = "auto",
    embeddings: Annotated[
        str,
        typer.Option(
            help="Embedding tables (dynamic mode): rowwise (int8, a scale per row), onnx (ONNX Runtime's per-tensor, "
            "faster lookups) or auto (per-tensor unless row-wise scores better on val)."
        ),
    ] = "auto",
    runtime: Runtime = "onnxruntime",
    placement: Annotated[
        str,
        typer.Option(
            help="Static mode: where the quantize / dequantize pairs go: onnxruntime, nncf or auto (the "
            "runtime's own; with --max-drop ONNX Runtime's, its default scheme and NNCF's are made and the "
            "fastest within the limit at --batch rows is kept)."
        ),
    ] = "auto",
    batch: Annotated[int, typer.Option(help="Batch size the placements are timed at (the one you deploy with).")] = 64,
    factory: Factory = None,
    trust_pickle: TrustPickle = False,
    force: Force = False,
) -> None:
    """Quantize MODEL (checkpoint or fp32 .onnx) to int8 ONNX at OUTPUT and report accuracy before/after."""
    import slimkit as sk
    from slimkit.compress import QuantizeConfig, quantize
    from slimkit.core.errors import SlimkitError

    choices = {"on": True, "off": False, "auto": "auto"}
    if per_channel not in choices:
        raise SlimkitError(f"--per-channel takes on, off or auto, got {per_channel!r}")
    cfg = QuantizeConfig(
        mode=mode,
        calibration=calibration,
        calibration_samples=samples,
        block_size=block_size,
        max_drop=max_drop,
        per_channel=choices[per_channel],
        embeddings=embeddings,
        runtime=runtime,
        placement=placement,
        latency_batch=batch,
    )
    dataset = sk.data.load(data)
    if is_keras(model):  # its fp32 ONNX export, quantized with the data laid out for it
        from slimkit.keras.workflows import quantize_file

        result = quantize_file(model, dataset, cfg, output, force=force)
    else:
        source = model if model.suffix.lower() == ".onnx" else load_model(model, factory, trust_pickle)
        result = quantize(source, dataset, cfg, output, force=force)
    console.print(str(result), markup=False)
