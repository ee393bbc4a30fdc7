"""Layer-drop by measured importance: remove the residual blocks the model misses least.

Each removable block is replaced by its identity path in a copy of the model and the copy's
validation accuracy is measured; the blocks whose removal costs the least accuracy are then
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
from slimkit.evaluate import accuracy
from slimkit.simplify.remove import identity_path, removable_blocks, remove_blocks_


def block_importance(model: nn.Module, loader: DataLoader, candidates: list[str] | None = None) -> dict[str, float]:
    """Accuracy lost (in points, base minus without the block) when each candidate block alone is removed."""
    names = select(model, candidates) if candidates is not None else removable_blocks(model)
    base = accuracy(model, loader)
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
        drops[name] = round(100 * (base - accuracy(trial, loader)), 4)
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
) -> nn.Module:
    """Measure every candidate block's importance on ``val`` and remove the ``budget`` least important.

    ``budget`` is a number of blocks or a fraction of the candidates (0.25 = a quarter, rounded
    up). Blocks are ranked by the accuracy lost when each is removed alone; ties keep model order.
    Returns the model; its record (``slimkit.records(model)[-1]``) holds every measured drop.
    """
    names = select(model, candidates) if candidates is not None else removable_blocks(model)
    if not names:
        raise SlimkitError(
            "the model has no removable residual blocks (ResNet blocks, inverted residuals, encoder blocks)"
        )
    count = budget_count(budget, len(names))
    drops = block_importance(model, val, names)
    chosen = sorted(names, key=lambda n: drops[n])[:count]
    if example_inputs is None:
        example_inputs = next(iter(val))[0][:4]
    remove_blocks_(model, sorted(chosen, key=names.index), example_inputs)
    records(model)[-1].details |= {
        "importance_drop_points": drops,
        "dropped": chosen,
        "budget": count,
        "candidates": len(names),
    }
    return model
