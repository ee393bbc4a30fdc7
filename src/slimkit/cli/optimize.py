"""``slimkit optimize``: meet a budget with the least accuracy lost; checkpoint, ONNX, int8, report."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from slimkit.cli import app
from slimkit.cli.common import (
    Amp,
    DataName,
    Device,
    Factory,
    Force,
    ModelPath,
    Runtime,
    TaskName,
    TrustPickle,
    console,
    is_encoder_folder,
    is_keras,
    load_model,
)

if TYPE_CHECKING:
    from slimkit.optimize import OptimizeResult


@app.command("optimize")
def optimize_command(
    model: ModelPath,
    data: DataName,
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder: outputs, caches, search storage.")],
    target: Annotated[
        list[str],
        typer.Option(
            "--target",
            "-t",
            help="Budget, repeatable or comma-separated: macs=0.25, params=0.2, bytes=0.05, latency=0.3@64 "
            "(shares of the original) or absolute: macs=1.5M, bytes=300KB, latency=2ms@64.",
        ),
    ],
    max_drop: Annotated[
        float | None,
        typer.Option(
            help="How much the deciding metric may degrade on validation, in its units: accuracy points (0.5), "
            "RMSE (0.01), AUC (0.005)."
        ),
    ] = None,
    min_metric: Annotated[
        list[str] | None, typer.Option(help="A validation metric at least this good, e.g. f1=0.97 (repeatable).")
    ] = None,
    metric: Annotated[
        str | None, typer.Option(help="The metric --max-drop limits (default: the task's: accuracy, rmse...).")
    ] = None,
    task: TaskName = None,
    val_batches: Annotated[
        int | None, typer.Option(help="Score at most this many validation batches per check (default: all).")
    ] = None,
    recipe: Annotated[str, typer.Option(help="'auto' or a JSON / YAML recipe file.")] = "auto",
    time_budget: Annotated[
        str | None,
        typer.Option(
            help="Stop training and searching after this long, e.g. 20m, 90s, 1h30m (folding and int8 still run)."
        ),
    ] = None,
    quantize: Annotated[
        bool | None, typer.Option("--quantize/--no-quantize", help="int8 ONNX at the end (auto: by target).")
    ] = None,
    finetune_epochs: Annotated[
        int | None,
        typer.Option(help="Fine-tuning epochs after each pruning round (auto recipe; default 4, 1 for encoders)."),
    ] = None,
    rounds: Annotated[int, typer.Option(help="Pruning rounds (auto recipe).")] = 2,
    steps_per_epoch: Annotated[
        int | None, typer.Option(help="Batches per fine-tuning epoch (auto recipe; needed for endless loaders).")
    ] = None,
    allocation: Annotated[str, typer.Option(help="sensitivity, uniform or global (auto recipe).")] = "sensitivity",
    widths: Annotated[
        str,
        typer.Option(
            help="config: every layer alike, as a transformers config sizes it (checkpoint/ is a from_pretrained "
            "folder); per-layer: each layer its own (closer fit; model.pt2); auto: config when it fits (auto recipe)."
        ),
    ] = "auto",
    round_to: Annotated[
        str | None, typer.Option(help="Widths multiple of this, or 'auto' (default: auto when deploying to ORT).")
    ] = None,
    trials: Annotated[int, typer.Option(help="Optuna trials over recipe parameters (0: one greedy run).")] = 0,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL (default: sqlite file study.db in the run folder).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in the run folder.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for fine-tuning and search.")] = 0,
    device: Device = None,
    amp: Amp = None,
    runtime: Runtime = "onnxruntime",
    factory: Factory = None,
    trust_pickle: TrustPickle = False,
    force: Force = False,
) -> None:
    """Optimize MODEL to meet --target with the least quality lost; writes checkpoint/, model.onnx,
    model.int8.onnx (when quantized), report.json and report.html into --output."""
    from slimkit.core.errors import SlimkitError
    from slimkit.data import load as load_data
    from slimkit.optimize import optimize
    from slimkit.optimize.target import parse_min_metrics, parse_target

    tgt = parse_target(
        target,
        max_drop=max_drop,
        min_metrics=parse_min_metrics(min_metric),
        metric=metric,
        time_budget=time_budget,
        runtime=runtime,
    )
    if is_keras(model):
        return _optimize_keras(
            model,
            data,
            output,
            tgt,
            recipe=recipe,
            quantize=quantize,
            finetune_epochs=finetune_epochs or 4,
            rounds=rounds,
            allocation=allocation,
            round_to=_round_to(round_to),
            trials=trials,
            storage=storage,
            resume=resume,
            seed=seed,
            force=force,
            extra={
                "task": task,
                "val_batches": val_batches,
                "steps_per_epoch": steps_per_epoch,
                "device": device,
                "amp": amp,
                "widths": None if widths == "auto" else widths,
            },
        )
    if is_encoder_folder(model):
        return _optimize_encoder(
            model,
            data,
            output,
            tgt,
            recipe=recipe,
            finetune_epochs=finetune_epochs or 1,
            trials=trials,
            storage=storage,
            resume=resume,
            seed=seed,
            device=device,
            amp=amp,
            force=force,
            extra={
                "val_batches": val_batches,
                "steps_per_epoch": steps_per_epoch,
                "widths": None if widths == "auto" else widths,
            },
            task=task,
        )
    net = load_model(model, factory, trust_pickle)
    if not hasattr(net, "parameters"):
        raise SlimkitError(f"{model} is not a PyTorch model (optimize needs a checkpoint, .pt2 or a pickle)")
    dataset = load_data(data)
    if task is None and getattr(dataset, "task", None) is None and not hasattr(dataset, "splits"):
        console.print("note: no --task given and the data names none: scoring as classification")
    leader = os.environ.get("RANK", "0") == "0"  # of a torchrun job, rank 0 reports
    status = console.status("optimizing") if leader else contextlib.nullcontext()
    with status:

        def log(line: str) -> None:
            if leader:
                status.update(line.strip()[:100])  # type: ignore[union-attr]
                console.print(line)

        result = optimize(
            net,
            dataset,
            tgt,
            task=task,
            val_batches=val_batches,
            recipe=recipe,
            output=output,
            quantize=quantize,
            finetune_epochs=finetune_epochs or 4,
            rounds=rounds,
            allocation=allocation,
            widths=widths,
            round_to=_round_to(round_to),
            steps_per_epoch=steps_per_epoch,
            trials=trials,
            storage=storage,
            resume=resume,
            seed=seed,
            device=device,
            amp=amp,
            force=force,
            log=log,
        )
    if result is not None:
        _print_result(result, output)


def _optimize_keras(
    model: Path,
    data: str,
    output: Path,
    tgt: object,
    *,
    extra: dict[str, object],
    **kwargs: object,
) -> None:
    """``slimkit optimize model.keras``: the same loop with the Keras backend; same outputs, model.keras."""
    from slimkit.keras.optimize import optimize
    from slimkit.keras.workflows import unsupported

    supported = (
        "--target, --max-drop, --min-metric, --metric, --recipe, --time-budget, --quantize, "
        "--finetune-epochs, --rounds, --allocation sensitivity/uniform, --round-to, --trials, --storage, "
        "--resume, --seed, --force"
    )
    used = {f"--{k.replace('_', '-')}": v not in (None, "classification") for k, v in extra.items()}
    for flag, on in used.items():
        if on:
            raise unsupported("optimize", flag, supported)
    with console.status("optimizing") as status:

        def log(line: str) -> None:
            status.update(line.strip()[:100])
            console.print(line)

        result = optimize(model, data, tgt, output=output, log=log, **kwargs)  # type: ignore[arg-type]
    _print_result(result, output)


def _optimize_encoder(
    model: Path,
    data: str,
    output: Path,
    tgt: object,
    *,
    recipe: str,
    finetune_epochs: int,
    extra: dict[str, object],
    task: str | None,
    **kwargs: object,
) -> None:
    """``slimkit optimize ENCODER_FOLDER``: a sentence encoder through the loop with the fidelity task
    (slimkit.text.optimize_encoder); DATA names the sentences (see slimkit.text.sentence_data)."""
    from slimkit.core.errors import SlimkitError
    from slimkit.core.optional import require

    require("sentence_transformers", extra="text", package="sentence-transformers")
    from slimkit import text

    if task not in (None, "fidelity", "embedding"):
        raise SlimkitError(f"a sentence encoder folder is optimized with the fidelity task, not --task {task}")
    for flag, value in extra.items():
        if value is not None:
            raise SlimkitError(f"--{flag.replace('_', '-')} is not available for sentence encoder folders")
    st = text.load(model)
    loaders = text.sentence_data(data, st.tokenizer)
    with console.status("optimizing") as status:

        def log(line: str) -> None:
            status.update(line.strip()[:100])
            console.print(line)

        result = text.optimize_encoder(
            st,
            loaders,
            tgt,  # type: ignore[arg-type]
            recipe=recipe,
            output=output,
            log=log,
            finetune_epochs=finetune_epochs,
            **kwargs,  # type: ignore[arg-type]
        )
    if result is not None:  # None: another rank than 0 of a torchrun job
        _print_result(result, output)


def _print_result(result: OptimizeResult, output: Path) -> None:
    """The test-split comparison, the run's summary and the files written."""
    console.print(result.comparison)
    console.print(result.summary())
    files = ", ".join(f + "/" if k == "checkpoint" else f for k, f in result.files.items())
    files += ", model.int8.onnx" if result.int8_path else ""
    console.print(f"outputs in {output}/: {files}, report.json, report.html")


def _round_to(value: str | None) -> int | str | None:
    from slimkit.core.errors import SlimkitError

    if value is None or value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise SlimkitError(f"--round-to takes a positive integer or 'auto', got {value!r}")
    return int(value)
