"""Layer-drop by measured importance: remove the residual blocks the model misses least.

Each removable block is replaced by its identity path in a copy of the model and the copy's
validation metric is measured (the task's deciding one: accuracy for classification, RMSE for
regression...); the blocks whose removal costs the least are then
removed from the model (up to the budget) with :class:`RemoveBlocksConfig`, and the measured
drops go into the record. Fine-tune afterwards (``slimkit.train.fit``) to recover.

>>> import slimkit as sk
>>> from slimkit.simplify import drop_blocks_
>>> data = sk.data.load("digits")
>>> model = sk.zoo.create_for("resnet_cifar", data, depth=8)
>>> record = sk.records(drop_blocks_(model, data.val, budget=1))[-1]
>>> len(record.details["dropped"])
1
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.utils.data import DataLoader

from slimkit.core.errors import SlimkitError
from slimkit.core.transform import records, select
from slimkit.graph import map_batch
from slimkit.simplify.remove import identity_path, removable_blocks, remove_blocks_
from slimkit.task import Task, get_task


def block_importance(
    model: nn.Module, loader: DataLoader, candidates: list[str] | None = None, *, task: Task | str | None = None
) -> dict[str, float]:
    """How much worse the deciding metric of ``task`` (default classification: accuracy) gets on
    ``loader`` when each candidate block alone is removed, in the metric's units (positive: worse)."""
    names = select(model, candidates) if candidates is not None else removable_blocks(model)
    task = get_task(task).bind(model)
    sign = 1 if task.higher_is_better else -1

    def score(m: nn.Module) -> float:
        return task.evaluate(m, loader)[task.metric]

    base = score(model)
    drops: dict[str, float] = {}
    for name in names:
        path = identity_path(model.get_submodule(name))
        if path is None:
            raise SlimkitError(
                f"{name} is not a removable residual block; removable: {', '.join(removable_blocks(model))}"
            )
        trial = copy.deepcopy(model)
        parent, _, attr = name.rpartition(".")
        setattr(trial.get_submodule(parent) if parent else trial, attr, path)  # a throwaway copy: not recorded
        drops[name] = round(sign * (base - score(trial)), 6)
    return drops


def budget_count(budget: int | float, available: int) -> int:
    """Blocks to drop: an int is a count, a float in (0, 1) a fraction of the candidates (rounded up)."""
    if isinstance(budget, float) and not budget.is_integer():
        if not 0 < budget < 1:
            raise SlimkitError(f"a fractional budget must be in (0, 1), got {budget}")
        return math.ceil(budget * available - 1e-9)
    count = int(budget)
    if count < 0 or count > available:
        raise SlimkitError(f"cannot drop {count} blocks: the model has {available} removable blocks")
    return count


def drop_blocks_(
    model: nn.Module,
    val: DataLoader,
    budget: int | float,
    *,
    candidates: list[str] | None = None,
    example_inputs: torch.Tensor | None = None,
    task: Task | str | None = None,
) -> nn.Module:
    """Measure every candidate block's importance on ``val`` and remove the ``budget`` least important.

    ``budget`` is a number of blocks or a fraction of the candidates (0.25 = a quarter, rounded
    up). Blocks are ranked by what ``task``'s deciding metric loses when each is removed alone
    (:func:`block_importance`); ties keep model order. Returns the model; its record
    (``slimkit.records(model)[-1]``) holds every measured drop (``importance_drop``, in the units of
    ``metric``).
    """
    names = select(model, candidates) if candidates is not None else removable_blocks(model)
    if not names:
        raise SlimkitError(
            "the model has no removable residual blocks (ResNet blocks, inverted residuals, encoder blocks)"
        )
    count = budget_count(budget, len(names))
    task = get_task(task)
    drops = block_importance(model, val, names, task=task)
    chosen = sorted(names, key=lambda n: drops[n])[:count]
    if example_inputs is None:
        example_inputs = map_batch(task.inputs(next(iter(val))), lambda t: t[:4])
    remove_blocks_(model, sorted(chosen, key=names.index), example_inputs)
    records(model)[-1].details |= {
        "metric": task.metric,
        "importance_drop": drops,
        "dropped": chosen,
        "budget": count,
        "candidates": len(names),
    }
    return model
