"""Ensemble distillation: teach one student to reproduce an ensemble, at the cost of one model.

>>> import slimkit as sk
>>> from slimkit.fuse import distill_ensemble, ensemble
>>> data = sk.data.load("digits")
>>> teacher = ensemble([sk.zoo.create_for("resnet_cifar", data, depth=8, width=0.5) for _ in range(2)])
>>> student = sk.zoo.create_for("resnet_cifar", data, depth=8, width=0.5)
>>> history = distill_ensemble(teacher, student, data, epochs=1)
>>> len(history.epochs)
1
"""

from __future__ import annotations

from typing import Any

from torch import nn

from slimkit.core.transform import TransformRecord, add_record
from slimkit.train import History, fit

__all__ = ["distill_ensemble"]


def distill_ensemble(
    ensemble: nn.Module,
    student: nn.Module,
    data: Any,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    temperature: float = 4.0,
    alpha: float = 0.9,
    augment: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> History:
    """Train ``student`` in place on ``data`` (a Dataset) to match ``ensemble``'s predictions.

    The loss is Hinton et al.'s ``(1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher_T || student_T)``
    with the ensemble as teacher (any module returning logits; an :class:`~slimkit.fuse.Ensemble`
    returns log-probabilities, which are valid logits). The student can be the members'
    architecture or a smaller one; the best validation epoch is kept.
    """
    # Built on slimkit.train.fit, as slimkit.simplify.distill is; switch to it once it takes any teacher.
    history = fit(
        student,
        data.train,
        val=data.val,
        teacher=ensemble.eval(),
        temperature=temperature,
        alpha=alpha,
        epochs=epochs,
        lr=lr,
        augment=data.augment if augment else None,
        seed=seed,
        progress=progress,
    )
    config = {"epochs": epochs, "lr": lr, "temperature": temperature, "alpha": alpha, "augment": augment, "seed": seed}
    add_record(
        student,
        TransformRecord("fuse.distill_ensemble", config, details={"best_val_accuracy": history.best_val_accuracy}),
    )
    return history
