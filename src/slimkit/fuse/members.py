"""Members to fuse: several models of one architecture, trained on one dataset, and the best of them.

The two fusion families need different members:

- prediction ensembles (and distillation from them) gain from *diverse* members: train each from
  its own initialisation (``from_start=False``); members fine-tuned from one start make nearly
  the same mistakes, so averaging their predictions changes little;
- weight averaging (soups) needs members in *one basin* of the loss: one base training
  (``start_epochs``), then ``n`` fine-tunes from it that differ in seed (data order, augmentation
  draws). Averaging independently trained networks gives a poor model.

A fused model is judged against the member a user would pick without it: the one with the best
*validation* accuracy (:func:`best_member`). Picking the best member by test accuracy is the
maximum of ``n`` noisy estimates and favours the member over any fused model.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from slimkit.core.errors import SlimkitError
from slimkit.data.base import as_loader
from slimkit.evaluate import accuracy
from slimkit.train import History, fit
from slimkit.zoo import create_for

__all__ = ["Members", "best_member", "train_members"]

SEED_STRIDE = 1000  # run ``seed`` uses seeds seed * 1000 (start) and seed * 1000 + 1 + i (member i)


@dataclasses.dataclass
class Members:
    """Trained ``members``, their training ``histories``, and the shared ``start`` (None when independent)."""

    members: list[nn.Module]
    histories: list[History]
    start: nn.Module | None = None
    start_history: History | None = None
    seeds: list[int] = dataclasses.field(default_factory=list)

    @property
    def kind(self) -> str:
        """``"shared-start"`` (for soups) or ``"independent"`` (for ensembles and distillation)."""
        return "independent" if self.start is None else "shared-start"


def best_member(models: Sequence[nn.Module], val: Any) -> tuple[int, list[float]]:
    """The index of the model with the best validation accuracy (ties: the first), and every model's accuracy.

    ``val`` is a Dataset (its ``val`` split is read) or a DataLoader. This is the fair baseline
    for a fused model: the single model a user would have chosen with the data they can see.

    >>> import slimkit as sk
    >>> data = sk.data.load("digits")
    >>> models = [sk.zoo.create_for("resnet_cifar", data, depth=8, width=0.5) for _ in range(2)]
    >>> index, accs = best_member(models, data)
    >>> accs[index] == max(accs)
    True
    """
    if not models:
        raise SlimkitError("best_member needs at least one model")
    loader = as_loader(val, "val", what="val")
    if loader is None:
        raise SlimkitError("best_member needs validation data (val=Dataset or DataLoader)")
    accs = [accuracy(m, loader) for m in models]
    return max(range(len(models)), key=lambda i: (accs[i], -i)), accs


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

    ``from_start=True`` (members for soups): train one base model for ``start_epochs`` (torch seed
    ``1000 * seed``), then fine-tune a copy of it for ``epochs`` per member at ``finetune_lr``
    (default ``lr / 2``) with seed ``1000 * seed + 1 + i``. ``from_start=False`` (members for
    ensembles): train each member from its own initialisation (same seeds) for ``epochs`` at
    ``lr``, so runs with different ``seed`` never share a member; give it
    the budget of a start plus a fine-tune (``start_epochs + epochs``) for a like-for-like
    comparison. Each training keeps its best validation epoch.
    ``on_member(i, model, history)`` is called after each member (e.g. to save it).

    >>> import slimkit as sk
    >>> data = sk.data.load("digits")
    >>> small = {"depth": 8, "width": 0.5}
    >>> result = train_members("resnet_cifar", data, n=2, model_args=small, start_epochs=1, epochs=1)
    >>> len(result.members), result.seeds, result.kind
    (2, [1, 2], 'shared-start')
    """
    if not 1 <= n < SEED_STRIDE:
        raise SlimkitError(f"n must be between 1 and {SEED_STRIDE - 1}, got {n}")
    if epochs < 1:
        raise SlimkitError(f"epochs must be at least 1, got {epochs}")
    if from_start and start_epochs < 1:
        raise SlimkitError(
            f"start_epochs must be at least 1 to train a shared start, got {start_epochs}; "
            "for members trained from scratch use from_start=False (CLI: --independent)"
        )
    aug = data.augment if augment else None

    def train(net: nn.Module, n_epochs: int, rate: float, s: int) -> History:
        return fit(net, data.train, val=data.val, epochs=n_epochs, lr=rate, augment=aug, seed=s, progress=progress)

    start, start_history = None, None
    if from_start:
        torch.manual_seed(SEED_STRIDE * seed)
        start = create_for(model, data, **(model_args or {}))
        start_history = train(start, start_epochs, lr, SEED_STRIDE * seed)
    members, histories, seeds = [], [], []
    for i in range(n):
        s = SEED_STRIDE * seed + 1 + i
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
