"""Weight averaging ("model soups", Wortsman et al. 2022): one model at the cost of one model.

Averaging works for checkpoints of one architecture fine-tuned from one shared start (they sit in
one basin of the loss); averaging independently trained networks gives a poor model. After
averaging, BatchNorm running statistics no longer match the averaged weights, so they are
re-estimated on training batches.

>>> import torch, slimkit as sk
>>> from slimkit.fuse import uniform_soup
>>> a, b = sk.zoo.create("lenet5"), sk.zoo.create("lenet5")
>>> soup = uniform_soup([a, b])
>>> torch.allclose(soup.conv1.weight, (a.conv1.weight + b.conv1.weight) / 2)
True
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader

from slimkit.core.errors import SlimkitError
from slimkit.core.transform import TransformRecord, add_record
from slimkit.data.base import as_loader
from slimkit.evaluate import data_task
from slimkit.task import Task
from slimkit.train import reestimate_bn

__all__ = ["ArchitectureMismatchError", "check_same_architecture", "greedy_soup", "reestimate_bn", "uniform_soup"]


class ArchitectureMismatchError(SlimkitError, ValueError):
    """Checkpoints whose tensors differ in name or shape, so their weights cannot be averaged."""


def _shape(t: torch.Tensor) -> str:
    return f"({', '.join(map(str, t.shape))})"


def check_same_architecture(models: Sequence[nn.Module]) -> None:
    """Raise :class:`ArchitectureMismatchError` naming the first tensor in which a model differs from the first."""
    if len(models) < 1:
        raise SlimkitError("a soup needs at least one model")
    for i, model in enumerate(models):
        if any(parametrize.is_parametrized(m) for m in model.modules()):
            raise SlimkitError(f"model {i} has masked (sparse) weights; averaging them is not supported")
    ref = models[0].state_dict()
    hint = "weight averaging needs checkpoints of one architecture (fine-tuned from one start)"
    for i, model in enumerate(models[1:], start=1):
        other = model.state_dict()
        for name, t in ref.items():  # in layer order, so the first difference named is the earliest
            if name not in other:
                raise ArchitectureMismatchError(
                    f"cannot average: model {i} has no tensor {name!r} (model 0: {_shape(t)}); {hint}"
                )
            if other[name].shape != t.shape:
                raise ArchitectureMismatchError(
                    f"cannot average: tensor {name!r} is {_shape(t)} in model 0 but {_shape(other[name])} "
                    f"in model {i}; {hint}"
                )
        extra = [name for name in other if name not in ref]
        if extra:
            raise ArchitectureMismatchError(
                f"cannot average: model {i} has a tensor {extra[0]!r} that model 0 lacks; {hint}"
            )


def _average(models: Sequence[nn.Module]) -> nn.Module:
    """A copy of ``models[0]`` holding the mean of every floating tensor (float64 sums, exact for equal inputs)."""
    states = [m.state_dict() for m in models]
    averaged = {}
    for name, t in states[0].items():
        if t.is_floating_point():
            total = sum(s[name].double() for s in states)
            averaged[name] = (total / len(states)).to(t.dtype)
        else:  # counters such as BatchNorm's num_batches_tracked
            averaged[name] = t.clone()
    soup = copy.deepcopy(models[0])
    soup.load_state_dict(averaged)
    return soup.eval()


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules())


def _refresh_bn(soup: nn.Module, bn_data: DataLoader | None, task: Task | None = None) -> None:
    if has_batchnorm(soup):
        if bn_data is None:
            raise SlimkitError(
                "the model has BatchNorm layers whose statistics must be re-estimated after averaging: pass "
                "bn_data (a Dataset or a DataLoader of training batches; CLI: --data)"
            )
        reestimate_bn(soup, bn_data, task=task)


def uniform_soup(models: Sequence[nn.Module], *, bn_data: Any = None, task: Task | str | None = None) -> nn.Module:
    """The average of ``models``' weights, as a new model (the inputs are unchanged).

    ``bn_data`` (a Dataset, whose training split is read in order, or a DataLoader) is needed
    when the model has BatchNorm: its statistics are re-estimated on it after averaging (``task``
    says how to take the inputs from its batches; default: the data's task).
    Models that differ in any tensor name or shape raise :class:`ArchitectureMismatchError`.

    >>> import slimkit as sk
    >>> data = sk.data.load("digits")
    >>> models = [sk.zoo.create_for("resnet_cifar", data, depth=8) for _ in range(2)]
    >>> soup = uniform_soup(models, bn_data=data)
    """
    check_same_architecture(models)
    soup = _average(models)
    _refresh_bn(soup, as_loader(bn_data, "train"), data_task(bn_data, task))
    add_record(
        soup,
        TransformRecord(
            "fuse.uniform_soup", {"models": len(models)}, details={"ingredients": list(range(len(models)))}
        ),
    )
    return soup


def greedy_soup(
    models: Sequence[nn.Module], val: Any, *, bn_data: Any = None, task: Task | str | None = None
) -> nn.Module:
    """Greedy soup: add models in order of validation score, keeping each only if the soup does not get worse.

    The recipe of Wortsman et al. (2022): the soup starts as the best model on validation
    (unchanged: no averaging, no BatchNorm update); each next model is averaged in (BatchNorm
    statistics re-estimated) and kept when the soup's validation score does not get worse. So the
    result is never worse on validation than the best single model. The models should be
    fine-tuned from one start (see :func:`~slimkit.fuse.train_members`). The score is ``task``'s
    deciding metric, its direction respected (default: the data's task, else classification's
    accuracy; e.g. ``task="regression"`` decides by RMSE, lower is better).

    ``val`` is a Dataset (its ``val`` split) or a DataLoader; when ``val`` is a Dataset its
    training split also serves ``bn_data`` unless given. The record (``slimkit.records``) lists
    the order tried, the models kept and the validation metric after each step
    (``val_<metric>``, e.g. ``val_accuracy``).

    >>> import slimkit as sk
    >>> data = sk.data.load("digits")
    >>> models = [sk.zoo.create_for("resnet_cifar", data, depth=8, width=0.5) for _ in range(3)]
    >>> soup = greedy_soup(models, data)
    >>> sk.records(soup)[-1].details["kept"][0] == sk.records(soup)[-1].details["order"][0]
    True
    """
    check_same_architecture(models)
    loader = as_loader(val, "val", what="val")
    if loader is None:
        raise SlimkitError("greedy soup needs validation data (val=Dataset or DataLoader)")
    task = data_task(val, task).bind(models[0])
    bn_loader = as_loader(bn_data if bn_data is not None or isinstance(val, DataLoader) else val, "train")
    key, sign = f"val_{task.metric}", 1 if task.higher_is_better else -1

    def score(model: nn.Module) -> float:
        return task.evaluate(model, loader)[task.metric]

    scores = [score(m) for m in models]
    order = sorted(range(len(models)), key=lambda i: -sign * scores[i])  # stable: ties keep input order
    kept = [order[0]]
    best, best_score = _average([models[order[0]]]), scores[order[0]]
    steps = [{"model": order[0], key: best_score, "kept": True}]
    for i in order[1:]:
        candidate = _average([models[j] for j in [*kept, i]])
        _refresh_bn(candidate, bn_loader, task)
        got = score(candidate)
        keep = sign * got >= sign * best_score
        steps.append({"model": i, key: got, "kept": keep})
        if keep:
            kept.append(i)
            best, best_score = candidate, got
    details = {"order": order, "kept": kept, "metric": task.metric, f"member_{key}": scores, key: best_score}
    details["steps"] = steps
    add_record(best, TransformRecord("fuse.greedy_soup", {"models": len(models)}, details=details))
    return best
