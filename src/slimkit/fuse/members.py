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
from slimkit.data.base import Augment, as_loader
from slimkit.evaluate import accuracy
from slimkit.fuse.augment import elastic, random_affine
from slimkit.train import History, fit
from slimkit.zoo import create_for

__all__ = ["Members", "best_member", "train_members"]

SEED_STRIDE = 1000  # run ``seed`` uses seeds seed * 1000 (start) and seed * 1000 + 1 + i (member i)
CHECKPOINTS = ("best-val", "last")  # which weights of each training a member keeps
AUGMENTS = ("affine", "elastic")  # augmentations by name, besides True (the dataset's own) and False (none)
AugmentSpec = bool | str | Augment | None  # one member's augmentation (see train_members)


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


def resolve_augment(augment: AugmentSpec, data: Any) -> Augment | None:
    """The batch transform meant by ``augment`` (one member's; see :func:`train_members`) for ``data``."""
    if augment is True:
        return data.augment
    if augment is False or augment is None:
        return None
    if augment in AUGMENTS:
        if len(getattr(data, "input_shape", ())) != 3:
            raise SlimkitError(f"augment={augment!r} distorts images (C, H, W); this dataset's inputs are not images")
        return random_affine() if augment == "affine" else elastic()
    if callable(augment):
        return augment
    raise SlimkitError(f"unknown augmentation {augment!r}; choose True, False, {', '.join(map(repr, AUGMENTS))}")


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
    augment: AugmentSpec | Sequence[AugmentSpec] = True,
    checkpoint: str = "last",
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
    comparison.

    ``augment``: ``True`` uses the dataset's own training augmentation (``data.augment``), ``False``
    none, ``"affine"`` small random rotations, scalings and shifts of image inputs
    (:func:`slimkit.fuse.augment.random_affine`), ``"elastic"`` Simard et al.'s elastic
    distortion (:func:`slimkit.fuse.augment.elastic`), or any batch transform. A list or tuple of
    ``n`` of these gives member ``i`` augmentation ``augment[i]`` (the shared start, if any, uses
    ``augment[0]``): members trained on different distortions make more different mistakes,
    which is what a prediction ensemble gains from.
    ``checkpoint``: ``"last"`` (the default) keeps the final, cosine-annealed weights and leaves
    the validation set untouched for the choices made later (the best member, ensemble
    selection, greedy soup); ``"best-val"`` keeps each training's best validation epoch, which
    on a small validation set can be an early, high-learning-rate epoch that merely ties the
    later ones (on mnist5k such members were the ensemble's weakest).
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
    if checkpoint not in CHECKPOINTS:
        raise SlimkitError(f"unknown checkpoint rule {checkpoint!r}; choose one of {', '.join(CHECKPOINTS)}")
    if isinstance(augment, (list, tuple)):
        if len(augment) != n:
            raise SlimkitError(f"augment lists one augmentation per member: expected {n}, got {len(augment)}")
        augs = [resolve_augment(a, data) for a in augment]
    else:
        augs = [resolve_augment(augment, data)] * n
    restore_best = checkpoint == "best-val"

    def train(net: nn.Module, n_epochs: int, rate: float, s: int, aug: Augment | None) -> History:
        return fit(
            net, data.train, val=data.val, epochs=n_epochs, lr=rate, augment=aug, seed=s, restore_best=restore_best,
            progress=progress,
        )  # fmt: skip

    start, start_history = None, None
    if from_start:
        torch.manual_seed(SEED_STRIDE * seed)
        start = create_for(model, data, **(model_args or {}))
        start_history = train(start, start_epochs, lr, SEED_STRIDE * seed, augs[0])
    members, histories, seeds = [], [], []
    for i in range(n):
        s = SEED_STRIDE * seed + 1 + i
        if start is not None:
            member = copy.deepcopy(start)
            history = train(member, epochs, finetune_lr if finetune_lr is not None else lr / 2, s, augs[i])
        else:
            torch.manual_seed(s)
            member = create_for(model, data, **(model_args or {}))
            history = train(member, epochs, lr, s, augs[i])
        members.append(member)
        histories.append(history)
        seeds.append(s)
        if on_member is not None:
            on_member(i, member, history)
    return Members(members, histories, start, start_history, seeds)
