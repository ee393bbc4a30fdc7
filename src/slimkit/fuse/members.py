"""Members to fuse: several models of one architecture, trained on one dataset.

For ensembles, members should differ (independent initialisations: ``from_start=False``). For
weight averaging they must share one basin: one base training (``start_epochs``), then ``n`` short
fine-tunes from it that differ in seed (data order, augmentation draws).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from slimkit.core.errors import SlimkitError
from slimkit.train import History, fit
from slimkit.zoo import create_for

__all__ = ["Members", "train_members"]


@dataclasses.dataclass
class Members:
    """Trained ``members``, their training ``histories``, and the shared ``start`` (None when independent)."""

    members: list[nn.Module]
    histories: list[History]
    start: nn.Module | None = None
    start_history: History | None = None
    seeds: list[int] = dataclasses.field(default_factory=list)


def train_members(
    model: str,
    data: Any,
    n: int = 5,
    *,
    model_args: dict[str, Any] | None = None,
    from_start: bool = True,
    start_epochs: int = 8,
    epochs: int = 8,
    lr: float = 1e-3,
    finetune_lr: float | None = None,
    augment: bool = True,
    seed: int = 0,
    progress: bool = False,
    on_member: Callable[[int, nn.Module, History], None] | None = None,
) -> Members:
    """Train ``n`` members of zoo model ``model`` on ``data`` (a Dataset).

    ``from_start``: train one base model for ``start_epochs`` (seed ``seed``), then fine-tune a copy
    of it for ``epochs`` per member at ``finetune_lr`` (default ``lr / 2``) with seed ``seed + 1 + i``;
    otherwise train each member from its own initialisation (seed ``seed + 1 + i``) for ``epochs``.
    ``on_member(i, model, history)`` is called after each member (e.g. to save it).

    >>> import slimkit as sk
    >>> data = sk.data.load("digits")
    >>> small = {"depth": 8, "width": 0.5}
    >>> result = train_members("resnet_cifar", data, n=2, model_args=small, start_epochs=1, epochs=1)
    >>> len(result.members), result.seeds
    (2, [1, 2])
    """
    if n < 1:
        raise SlimkitError(f"n must be at least 1, got {n}")
    aug = data.augment if augment else None

    def train(net: nn.Module, n_epochs: int, rate: float, s: int) -> History:
        return fit(net, data.train, val=data.val, epochs=n_epochs, lr=rate, augment=aug, seed=s, progress=progress)

    start, start_history = None, None
    if from_start:
        torch.manual_seed(seed)
        start = create_for(model, data, **(model_args or {}))
        start_history = train(start, start_epochs, lr, seed)
    members, histories, seeds = [], [], []
    for i in range(n):
        s = seed + 1 + i
        if start is not None:
            member = copy.deepcopy(start)
            history = train(member, epochs, finetune_lr if finetune_lr is not None else lr / 2, s)
        else:
            torch.manual_seed(s)
            member = create_for(model, data, **(model_args or {}))
            history = train(member, epochs, lr, s)
        members.append(member)
        histories.append(history)
        seeds.append(s)
        if on_member is not None:
            on_member(i, member, history)
    return Members(members, histories, start, start_history, seeds)
