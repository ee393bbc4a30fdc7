"""Members to fuse: several models of one architecture, trained on one dataset, and the best of them.

The two fusion families need different members:

- prediction ensembles (and distillation from them) gain from *diverse* members: train each from
  its own initialisation (``from_start=False``); members fine-tuned from one start make nearly
  the same mistakes, so averaging their predictions changes little;
- weight averaging (soups) needs members in *one basin* of the loss: one base training
  (``start_epochs``), then ``n`` fine-tunes from it that differ in seed (data order, augmentation
  draws). Averaging independently trained networks gives a poor model.

Prediction ensembles gain most from members trained on *different data* (Breiman's bagging,
1996): ``bag="cv"`` pools the training and validation samples and trains member ``i`` on all of
them but its own ``1/n`` part, which it is validated on (cross-validation members: together they
see every sample, each sees ``(n - 1)/n`` of them); ``bag="bootstrap"`` trains each member on its
own bootstrap sample of the training split and validates all on the common validation split.

A fused model is judged against the member a user would pick without it: the one with the best
*validation* accuracy (:func:`best_member`; for ``bag="cv"`` members, the best accuracy on its own
held-out part, :meth:`Members.best`). Picking the best member by test accuracy is the maximum of
``n`` noisy estimates and favours the member over any fused model.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from slimkit.core.errors import SlimkitError
from slimkit.data.base import Augment, Dataset, as_loader
from slimkit.evaluate import accuracy
from slimkit.fuse.augment import elastic, random_affine
from slimkit.train import History, fit
from slimkit.zoo import create_for

__all__ = ["BAGS", "Members", "bag_datasets", "best_member", "train_members"]

SEED_STRIDE = 1000  # run ``seed`` uses seeds seed * 1000 (start) and seed * 1000 + 1 + i (member i)
CHECKPOINTS = ("best-val", "last")  # which weights of each training a member keeps
AUGMENTS = ("affine", "elastic")  # augmentations by name, besides True (the dataset's own) and False (none)
AugmentSpec = bool | str | Augment | None  # one member's augmentation (see train_members)
BAGS = ("cv", "bootstrap")  # how members' training data may differ (see train_members)


@dataclasses.dataclass
class Members:
    """Trained ``members``, their training ``histories``, and the shared ``start`` (None when independent).

    ``bag`` is the bagging rule the members were trained with (None: all on the training split);
    ``datasets[i]`` is the data member ``i`` was trained (``train``) and validated (``val``) on:
    the input dataset itself unless bagged.
    """

    members: list[nn.Module]
    histories: list[History]
    start: nn.Module | None = None
    start_history: History | None = None
    seeds: list[int] = dataclasses.field(default_factory=list)
    bag: str | None = None
    datasets: list[Any] = dataclasses.field(default_factory=list)

    @property
    def kind(self) -> str:
        """``"shared-start"`` (for soups) or ``"independent"`` (for ensembles and distillation)."""
        return "independent" if self.start is None else "shared-start"

    def held_out_accuracies(self) -> list[float]:
        """Each member's accuracy on the validation split *it* was trained with (its own part under ``bag="cv"``)."""
        if len(self.datasets) != len(self.members):
            raise SlimkitError("these members do not record their validation data (Members.datasets)")
        return [accuracy(m, as_loader(d, "val")) for m, d in zip(self.members, self.datasets, strict=True)]

    def best(self) -> tuple[int, list[float]]:
        """The member a user would pick: the best accuracy on its own validation data (ties: the first), and all.

        For unbagged or bootstrap members this is :func:`best_member` on the common validation
        split; for ``bag="cv"`` members every member is scored on the part it did not train on
        (the only samples it has not seen; the parts differ, so this compares estimates on
        different samples of equal size).
        """
        accs = self.held_out_accuracies()
        return accs.index(max(accs)), accs


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
    return accs.index(max(accs)), accs


def bag_datasets(data: Dataset, n: int, bag: str, seed: int = 0) -> list[Dataset]:
    """The ``n`` datasets that ``bag`` gives the members of a bagged ensemble (see :func:`train_members`).

    ``"cv"``: the ``train`` and ``val`` samples are pooled, shuffled (torch generator seeded with
    ``seed``) and dealt into ``n`` parts, stratified by label when the labels are class indices;
    dataset ``i`` trains on every part but ``i`` and validates on part ``i``. ``"bootstrap"``:
    dataset ``i`` trains on ``len(train)`` samples drawn with replacement from ``train``
    (generator seeded with ``seed + i``) and validates on the common ``val``. The ``test`` split is
    never used and is passed through unchanged.

    >>> import slimkit as sk
    >>> data = sk.data.load("digits")
    >>> parts = bag_datasets(data, 3, "cv")
    >>> sum(d.sizes()["val"] for d in parts) == data.sizes()["train"] + data.sizes()["val"]
    True
    >>> all(d.sizes()["train"] + d.sizes()["val"] == data.sizes()["train"] + data.sizes()["val"] for d in parts)
    True
    """
    if bag not in BAGS:
        raise SlimkitError(f"unknown bagging rule {bag!r}; choose one of {', '.join(BAGS)}")
    if n < 1:
        raise SlimkitError(f"bag={bag!r} needs at least 1 member, got n={n}")
    if not isinstance(data, Dataset):
        raise SlimkitError(
            f"bag={bag!r} needs a slimkit Dataset (its train and val tensors), got {type(data).__name__}"
        )
    (xt, yt), (xv, yv) = data.splits["train"], data.splits["val"]
    if bag == "bootstrap":
        out = []
        for i in range(n):
            g = torch.Generator().manual_seed(seed + i)
            pick = torch.randint(len(yt), (len(yt),), generator=g)
            splits = {**data.splits, "train": (xt[pick], yt[pick])}
            out.append(dataclasses.replace(data, name=f"{data.name}-bootstrap{i}", splits=splits))
        return out
    x, y = torch.cat([xt, xv]), torch.cat([yt, yv])
    if n < 2 or len(y) < n:
        raise SlimkitError(
            f'bag="cv" needs at least 2 members and one train/val sample per member, got n={n} and {len(y)} samples'
        )
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    if y.dim() == 1 and not y.is_floating_point():  # class labels: deal each class round the parts
        order = order[torch.argsort(y[order], stable=True)]
    part = torch.empty(len(y), dtype=torch.long)
    part[order] = torch.arange(len(y)) % n
    out = []
    for i in range(n):
        own = part == i
        splits = {**data.splits, "train": (x[~own], y[~own]), "val": (x[own], y[own])}
        out.append(dataclasses.replace(data, name=f"{data.name}-cv{i}of{n}", splits=splits))
    return out


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
    bag: str | None = None,
    seed: int = 0,
    progress: bool = False,
    device: str | None = None,
    amp: str | None = None,
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
    ``bag`` (independent members only): ``None`` trains every member on ``data.train``;
    ``"cv"`` trains member ``i`` on the pooled train and val samples except its own ``1/n`` part,
    its validation set (cross-validation members: together they see every non-test sample);
    ``"bootstrap"`` trains member ``i`` on a bootstrap sample of ``data.train`` (see
    :func:`bag_datasets`; the partition or the draws are seeded with ``1000 * seed``). Bagged
    members differ in their data as well as their initialisation, the classic source of an
    ensemble's gain (Breiman 1996). Pick the baseline member with :meth:`Members.best` (under
    ``"cv"`` the common ``val`` split is training data for all but one member).
    ``on_member(i, model, history)`` is called after each member (e.g. to save it). ``device`` and
    ``amp``: where and in which precision members train (:func:`slimkit.train.fit`).

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
    if bag is not None:
        if from_start:
            raise SlimkitError(
                f"bag={bag!r} trains members from their own initialisation (for ensembles); use from_start=False "
                "(CLI: --independent): soups need members fine-tuned from one start on one dataset"
            )
        datasets = bag_datasets(data, n, bag, seed=SEED_STRIDE * seed)
    else:
        datasets = [data] * n
    if isinstance(augment, (list, tuple)):
        if len(augment) != n:
            raise SlimkitError(f"augment lists one augmentation per member: expected {n}, got {len(augment)}")
        augs = [resolve_augment(a, data) for a in augment]
    else:
        augs = [resolve_augment(augment, data)] * n
    restore_best = checkpoint == "best-val"

    def train(net: nn.Module, n_epochs: int, rate: float, s: int, aug: Augment | None, on: Any = data) -> History:
        return fit(
            net,
            on.train,
            val=on.val,
            epochs=n_epochs,
            lr=rate,
            augment=aug,
            seed=s,
            restore_best=restore_best,
            progress=progress,
            device=device,
            amp=amp,
        )

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
            history = train(member, epochs, lr, s, augs[i], datasets[i])
        members.append(member)
        histories.append(history)
        seeds.append(s)
        if on_member is not None:
            on_member(i, member, history)
    return Members(members, histories, start, start_history, seeds, bag, datasets)
