"""Ensemble distillation: teach one student to reproduce an ensemble, at the cost of one model.

A student started from the best member (by validation accuracy) and distilled at a low learning
rate keeps what that member knows and moves towards the ensemble's predictions; a student of
another (smaller) architecture starts from scratch and needs more epochs.

>>> import copy, slimkit as sk
>>> from slimkit.fuse import best_member, distill_ensemble, ensemble
>>> data = sk.data.load("digits")
>>> members = [sk.zoo.create_for("resnet_cifar", data, depth=8, width=0.5) for _ in range(2)]
>>> student = copy.deepcopy(members[best_member(members, data)[0]])
>>> history = distill_ensemble(student, ensemble(members), data, epochs=1)
>>> len(history.epochs)
1
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from slimkit.core.errors import SlimkitError
from slimkit.core.transform import TransformRecord, add_record
from slimkit.evaluate import data_task
from slimkit.evaluate.cost import count_params
from slimkit.task import Task
from slimkit.train import DistillConfig, History, check_pair, fit

__all__ = ["distill_ensemble"]


def distill_ensemble(
    student: nn.Module,
    ensemble: nn.Module,
    data: Any,
    config: DistillConfig | None = None,
    *,
    epochs: int = 10,
    lr: float = 3e-4,
    augment: bool = True,
    keep_start: bool = True,
    seed: int = 0,
    progress: bool = False,
    task: Task | str | None = None,
    device: str | None = None,
    amp: str | None = None,
) -> History:
    """Train ``student`` in place on ``data`` (a Dataset or Loaders) to match ``ensemble``'s predictions.

    The loss is Hinton et al.'s ``(1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher_T || student_T)``
    (``config``: a :class:`slimkit.train.DistillConfig`, default ``DistillConfig()``) with the
    ensemble as teacher (any module returning logits; an :class:`~slimkit.fuse.Ensemble` returns
    log-probabilities, which are valid logits), Adam with a cosine decay from ``lr``.
    The default ``lr`` suits a student started from a trained member (the usual case: a copy of
    :func:`~slimkit.fuse.best_member`); raise it (e.g. ``1e-3``) for a student trained from scratch.
    ``task`` (default: the data's; classification) gives the loss and the deciding metric: for other
    tasks the soft loss is the task's (e.g. mean squared error to the ensemble's outputs).
    The best validation epoch is kept; with ``keep_start`` the student's starting weights count
    as epoch 0, so when no distillation epoch beats them on the validation metric the student is
    put back as it was (``history.best_epoch == 0``): a student started from the best member is
    then never below that member on validation. The record (``slimkit.records``) holds the
    validation metric (``val_<metric>``) of the teacher, of the student before distillation and
    after it, and whether the start was kept. ``device`` and ``amp`` as in :func:`slimkit.train.fit`.
    """
    if getattr(data, "train", None) is None or getattr(data, "val", None) is None:
        raise SlimkitError("distill_ensemble needs data with train and val splits (a slimkit Dataset or Loaders)")
    config = config or DistillConfig()
    if config.features:
        raise SlimkitError("distill_ensemble does not match features (an ensemble has no single layer to match)")
    check_pair(student, ensemble, count_params)
    teacher = ensemble.eval()
    task = data_task(data, task).bind(teacher)
    key, sign = f"val_{task.metric}", 1 if task.higher_is_better else -1

    def score(model: nn.Module) -> float:
        return task.evaluate(model, data.val)[task.metric]

    before = score(student)
    start_state = copy.deepcopy(student.state_dict()) if keep_start else None
    history = fit(
        student,
        data.train,
        val=data.val,
        teacher=teacher,
        distill=config,
        epochs=epochs,
        lr=lr,
        augment=getattr(data, "augment", None) if augment else None,
        seed=seed,
        progress=progress,
        task=task,
        device=device,
        amp=amp,
    )
    after = history.best_val
    kept_start = False
    if start_state is not None and (after is None or sign * after <= sign * before):  # no epoch beat the start
        student.load_state_dict(start_state)
        history.best_epoch, kept_start = 0, True
    config = {
        "epochs": epochs,
        "lr": lr,
        "temperature": config.temperature,
        "alpha": config.alpha,
        "augment": augment,
        "keep_start": keep_start,
        "seed": seed,
    }
    details = {
        f"teacher_{key}": score(teacher),
        f"start_{key}": before,
        key: before if kept_start else after,
        "best_epoch": history.best_epoch,
        "kept_start": kept_start,
    }
    add_record(student, TransformRecord("fuse.distill_ensemble", config, details=details))
    return history
