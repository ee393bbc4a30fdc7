"""End-to-end simplification and distillation jobs behind ``slimkit simplify`` / ``slimkit distill``.

They call the library in order (transform, fine-tune or distil, measure) and save a checkpoint
with ``report.json`` (records, before/after reports) and ``config.json`` beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.core.errors import SlimkitError
from slimkit.core.files import check_output
from slimkit.core.model import example_input
from slimkit.core.transform import records
from slimkit.evaluate import Report, data_task, evaluate
from slimkit.io import save
from slimkit.simplify.distill import distill, student_for
from slimkit.simplify.drop import drop_blocks_
from slimkit.simplify.fold import fold_
from slimkit.simplify.remove import remove_layers_
from slimkit.train import DistillConfig, fit


def _check_module(model: Any, what: str) -> None:
    if not isinstance(model, nn.Module):
        raise SlimkitError(f"{what} needs a PyTorch model (a slimkit checkpoint or .pt2), not a {type(model).__name__}")


def _dataset(name: str | None) -> Any:
    if name is None:
        return None
    from slimkit import data

    return data.load(name)


def _write(model: nn.Module, output: str | Path, example: torch.Tensor, force: bool, result: dict[str, Any]) -> None:
    extra = {
        "report.json": json.dumps(result, indent=2, default=str) + "\n",
        "config.json": json.dumps(result["config"], indent=2) + "\n",
    }
    save(model, output, example=example, force=force, extra_files=extra)


def simplify_and_save(
    model: nn.Module,
    output: str | Path,
    *,
    fold: bool = False,
    remove: list[str] | None = None,
    remove_types: list[str] | None = None,
    repair: str = "transfer",
    drop_blocks: float | None = None,
    data: str | None = None,
    epochs: int = 0,
    lr: float = 1e-3,
    seed: int = 0,
    force: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Remove layers / drop blocks / fold, optionally fine-tune on ``data``, measure, save to ``output``.

    Order: layer removal, block dropping (needs ``data``: importance is measured on its val split),
    fine-tuning (``epochs`` > 0, needs ``data``), then folding (exact, for inference).
    """
    _check_module(model, "simplify")
    config = {k: v for k, v in locals().items() if k not in ("model", "output", "force", "progress")}
    config["output"] = str(output)
    if not (fold or remove or remove_types or drop_blocks):
        raise SlimkitError("nothing to do: pass --fold, --remove NAME, --remove-type TYPE or --drop-blocks N")
    if (drop_blocks or epochs) and data is None:
        raise SlimkitError("--drop-blocks and fine-tuning (--epochs) need --data to measure and train on")
    check_output(output, force)
    dataset = _dataset(data)
    example = dataset.example if dataset is not None else example_input(model, batch=4)
    if example is None:
        raise SlimkitError("the model has no recorded input shape: pass --data so it can be traced")
    before = evaluate(model, dataset, latency=False) if dataset is not None else None
    if remove or remove_types:
        remove_layers_(model, example, names=remove or None, types=remove_types or None, repair=repair, seed=seed)
    if drop_blocks:
        drop_blocks_(model, dataset.val, drop_blocks, example_inputs=example, task=data_task(dataset))
    history = None
    if epochs:
        history = fit(
            model,
            dataset.train,
            val=dataset.val,
            epochs=epochs,
            lr=lr,
            augment=getattr(dataset, "augment", None),
            seed=seed,
            progress=progress,
            task=data_task(dataset),
        )
    if fold:
        fold_(model.eval(), example)
    after = evaluate(model, dataset, latency=False) if dataset is not None else None
    result = _result(config, model, before, after, history)
    _write(model, output, example, force, result)
    return result


def _result(config: dict, model: nn.Module, before: Report | None, after: Report | None, history: Any) -> dict:
    return {
        "config": config,
        "records": [r.to_dict() for r in records(model)],
        "before": before.to_dict() if before else None,
        "after": after.to_dict() if after else None,
        "history": history.epochs if history is not None else None,
    }


def distill_and_save(
    teacher: nn.Module,
    output: str | Path,
    *,
    data: str,
    student: str | None = None,
    width: float = 0.5,
    depth: int | None = None,
    temperature: float = DistillConfig.temperature,
    alpha: float = DistillConfig.alpha,
    features: dict[str, str] | None = None,
    beta: float = DistillConfig.beta,
    epochs: int = 10,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | None = None,
    amp: str | None = None,
    force: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Build a student (``"name:key=value"`` spec, or derived from the teacher), distil it on ``data``, save it."""
    _check_module(teacher, "distill")
    config = {k: v for k, v in locals().items() if k not in ("teacher", "output", "force", "progress", "device")}
    config["output"] = str(output)
    check_output(output, force)
    dataset = _dataset(data)
    torch.manual_seed(seed)
    net = student_for(teacher, student, dataset, width=width, depth=depth)
    cfg = DistillConfig(temperature=temperature, alpha=alpha, features=features, beta=beta)
    history = distill(
        net, teacher, dataset, cfg, epochs=epochs, lr=lr, seed=seed, progress=progress, device=device, amp=amp
    )
    result = _result(
        config, net, evaluate(teacher, dataset, latency=False), evaluate(net, dataset, latency=False), history
    )
    _write(net, output, dataset.example, force, result)
    return result
