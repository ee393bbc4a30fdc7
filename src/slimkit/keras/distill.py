"""Distillation into a Keras student with a Keras training step, and fine-tuning helpers.

:func:`distiller` wraps a student and a teacher (any Keras model, e.g. an ensemble from
:func:`slimkit.keras.ensemble`) in a ``keras.Model`` whose ``compute_loss`` is Hinton et al.'s
``(1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher_T || student_T)`` (a
:class:`slimkit.train.DistillConfig`), the teacher run on
every batch (so it sees the same augmented inputs as the student). Compile and fit the wrapper
with your own optimizer, callbacks and data; the student's weights are trained in place and the
student is what you save (the wrapper is a training device, not a model file).
:func:`distill` does all of that with slimkit's defaults (Adam, cosine decay, best validation
epoch kept) and returns the student with a record.

Probabilities or logits: students and teachers ending in a softmax are handled (the log of
their probabilities serves as logits), so the brief's ``Dense(10, activation="softmax")`` works.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from slimkit.core.errors import SlimkitError
from slimkit.core.transform import TransformRecord
from slimkit.keras._graph import keras_module, load
from slimkit.keras.cost import count_params
from slimkit.keras.data import batches, for_model, xy
from slimkit.keras.fuse import outputs_probabilities, probabilities
from slimkit.keras.prune import KerasResult
from slimkit.train import DistillConfig, check_pair

__all__ = ["distill", "distiller", "fit", "keep_best_class"]

_classes: dict[str, type] = {}


def _distiller_class() -> type:
    """The ``Distiller`` class (defined on first use: it subclasses ``keras.Model``)."""
    if "Distiller" in _classes:
        return _classes["Distiller"]
    keras = keras_module()
    ops = keras.ops

    class _Hidden:
        """Holds the teacher out of Keras' tracking: its weights are neither trained nor saved."""

        def __init__(self, model: Any) -> None:
            self.model = model

    class Distiller(keras.Model):
        """``student`` trained towards ``teacher``'s soft targets (see :func:`distiller`)."""

        def __init__(
            self,
            student: Any,
            teacher: Any,
            *,
            temperature: float = 4.0,
            alpha: float = 0.9,
            student_probs: bool = False,
            teacher_probs: bool = False,
            **kwargs: Any,
        ) -> None:
            super().__init__(**kwargs)
            self.student = student
            self._teacher = _Hidden(teacher)
            self.temperature = float(temperature)
            self.alpha = float(alpha)
            self.student_probs = student_probs
            self.teacher_probs = teacher_probs

        @property
        def teacher(self) -> Any:
            return self._teacher.model

        def call(self, x: Any, training: bool = False) -> Any:
            return self.student(x, training=training)

        @staticmethod
        def _logits(out: Any, probs: bool) -> Any:
            return ops.log(ops.clip(out, 1e-12, 1.0)) if probs else out

        def compute_loss(
            self, x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None, training: bool = True
        ) -> Any:
            s = self._logits(y_pred, self.student_probs)  # (B, K)
            t = ops.stop_gradient(self._logits(self.teacher(x, training=False), self.teacher_probs))
            temp = self.temperature
            log_s = ops.log_softmax(s / temp, axis=-1)
            p_t = ops.softmax(t / temp, axis=-1)
            kd = ops.mean(ops.sum(p_t * (ops.log(ops.clip(p_t, 1e-12, 1.0)) - log_s), axis=-1)) * temp**2
            loss = self.alpha * kd
            if self.alpha < 1 and y is not None:
                ce = keras.losses.sparse_categorical_crossentropy(ops.reshape(y, (-1,)), s, from_logits=True)
                loss = loss + (1 - self.alpha) * ops.mean(ce)
            return loss

    _classes["Distiller"] = Distiller
    return Distiller


def distiller(student: Any, teacher: Any, config: DistillConfig | None = None) -> Any:
    """A ``keras.Model`` that trains ``student`` (in place) towards ``teacher``; compile and fit it yourself.

    ``config`` (a :class:`slimkit.train.DistillConfig`, default ``DistillConfig()``): ``alpha`` weighs
    the distillation term against cross-entropy on the labels (``alpha=1``: labels unused) at
    ``temperature``. Whether each model outputs probabilities or logits is detected.

    Example::

        d = slimkit.keras.distiller(student, ensemble_model, DistillConfig(alpha=0.9))
        d.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"])
        d.fit(x_train, y_train, epochs=5, validation_data=(x_val, y_val))
        student.save("student.keras")  # plain Keras file
    """
    student, teacher = load(student), load(teacher)
    config = config or DistillConfig()
    if config.features:
        raise SlimkitError("feature matching (DistillConfig.features) is available for PyTorch students only")
    s_out, t_out = tuple(student.outputs[0].shape[1:]), tuple(teacher.outputs[0].shape[1:])
    if s_out != t_out:
        raise SlimkitError(f"the student outputs {s_out} but the teacher {t_out}; they must predict the same classes")
    cls = _distiller_class()
    return cls(
        student,
        teacher,
        temperature=config.temperature,
        alpha=config.alpha,
        student_probs=outputs_probabilities(student),
        teacher_probs=outputs_probabilities(teacher),
        name=f"distill_{student.name}",
    )


def keep_best_class() -> type:
    if "KeepBest" in _classes:
        return _classes["KeepBest"]
    keras = keras_module()

    class KeepBest(keras.callbacks.Callback):
        """Restore the weights of ``target`` (default: the fitted model) from its best validation epoch.

        Validation accuracy is measured on ``(x_val, y_val)`` after every epoch (and once before
        training, so fine-tuning never ends below its start); ``patience`` stops after that many
        epochs without improvement.
        """

        def __init__(
            self, x_val: np.ndarray, y_val: np.ndarray, target: Any = None, patience: int | None = None
        ) -> None:
            super().__init__()
            self.x_val, self.y_val, self.target, self.patience = x_val, y_val, target, patience
            self.history: list[float] = []
            self.best_epoch = -1

        def _score(self) -> float:
            net = self.target or self.model
            return float((probabilities(net, self.x_val).argmax(-1) == self.y_val.reshape(-1)).mean())

        def on_train_begin(self, logs: Any = None) -> None:
            net = self.target or self.model
            self.best, self.best_weights, self.wait = self._score(), net.get_weights(), 0
            self.start = self.best

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            acc = self._score()
            self.history.append(acc)
            if logs is not None:
                logs["val_accuracy_kept"] = acc
            if acc > self.best:
                self.best, self.wait, self.best_epoch = acc, 0, epoch
                self.best_weights = (self.target or self.model).get_weights()
            else:
                self.wait += 1
                if self.patience is not None and self.wait >= self.patience:
                    self.model.stop_training = True

        def on_train_end(self, logs: Any = None) -> None:
            (self.target or self.model).set_weights(self.best_weights)

    _classes["KeepBest"] = KeepBest
    return KeepBest


def __getattr__(name: str) -> Any:
    if name == "KeepBest":
        return keep_best_class()
    if name == "Distiller":
        return _distiller_class()
    raise AttributeError(name)


def _optimizer(name: str, lr: float, steps: int) -> Any:
    keras = keras_module()
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, steps))
    if name == "adam":
        return keras.optimizers.Adam(schedule)
    if name == "adamw":
        return keras.optimizers.AdamW(schedule)
    if name == "sgd":
        return keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
    raise SlimkitError(f"unknown optimizer {name!r}; choose adam, adamw or sgd")


def fit(
    model: Any,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    *,
    epochs: int = 3,
    lr: float = 5e-4,
    optimizer: str = "adam",
    teacher: Any = None,
    distill: DistillConfig | None = None,
    augment: Any = None,
    batch_size: int = 64,
    patience: int | None = None,
    seed: int = 0,
    verbose: int = 0,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Fine-tune ``model`` in place with Keras ``fit`` (slimkit's recovery step); the best validation epoch is kept.

    With ``teacher``, the loss is the distillation loss of :func:`distiller` (``distill``); else
    sparse categorical cross-entropy (on probabilities or logits, as the model outputs). Adam with a
    cosine decay from ``lr``. ``on_epoch({"epoch", "val_accuracy"})`` is called after every epoch (it
    may raise to stop, e.g. an Optuna pruner); training stops after the epoch that passes
    ``deadline`` (a ``time.monotonic()`` value). Returns ``{"start", "best", "history", "best_epoch"}``
    (validation accuracies).
    """
    keras = keras_module()
    if epochs < 1:
        raise SlimkitError(f"epochs must be at least 1, got {epochs}")
    keras.utils.set_random_seed(seed)
    x, y = train
    steps = epochs * -(-len(x) // batch_size)
    if teacher is not None:
        net = distiller(model, teacher, distill)
        net.compile(optimizer=_optimizer(optimizer, lr, steps))
    else:
        net = model
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=not outputs_probabilities(model))
        net.compile(optimizer=_optimizer(optimizer, lr, steps), loss=loss)
    keep = keep_best_class()(val[0], val[1], target=model, patience=patience)
    feed = batches(x, y, batch_size, augment, seed)

    def after_epoch(epoch: int, logs: Any = None) -> None:
        if on_epoch is not None:
            on_epoch({"epoch": epoch + 1, "val_accuracy": keep.history[-1]})
        if deadline is not None and time.monotonic() > deadline:
            net.stop_training = True

    watch = keras.callbacks.LambdaCallback(on_epoch_end=after_epoch)
    net.fit(feed, epochs=epochs, callbacks=[keep, watch], verbose=verbose)
    return {"start": keep.start, "best": keep.best, "history": keep.history, "best_epoch": keep.best_epoch}


def distill(
    student: Any,
    teacher: Any,
    data: Any,
    config: DistillConfig | None = None,
    *,
    val: Any = None,
    epochs: int = 10,
    lr: float = 3e-4,
    augment: bool = True,
    batch_size: int = 64,
    seed: int = 0,
    verbose: int = 0,
) -> KerasResult:
    """Train ``student`` in place to reproduce ``teacher`` (a model or an ensemble); Keras ``fit`` inside.

    The Keras counterpart of :func:`slimkit.fuse.distill_ensemble`: ``data`` is a slimkit Dataset
    (its train split, with its augmentation when ``augment``, and its val split) or a training
    ``(x, y)`` pair with ``val=(x_val, y_val)``; ``config`` a :class:`slimkit.train.DistillConfig`.
    Adam with a cosine decay from ``lr``; the best
    validation epoch is kept. Returns the student (the same object) and a record with the
    validation accuracy of the teacher, of the student before and after.

    Example::

        ens, _ = slimkit.keras.ensemble(members, "mean")
        student, record = slimkit.keras.distill(small_model, ens, sk.data.load("mnist5k"), epochs=5)
    """
    student, teacher = load(student), load(teacher)
    config = config or DistillConfig()
    check_pair(student, teacher, count_params)
    aug = None
    if isinstance(data, tuple | list):
        train = xy(data, student, "train")
        val_xy = xy(val, student, "val", what="val")
        if val_xy is None:
            raise SlimkitError("distill with (x, y) training arrays needs val=(x_val, y_val)")
    else:
        ds = for_model(data, student)
        train, val_xy = xy(ds, student, "train"), xy(ds, student, "val")
        aug = ds.augment if augment else None
    out = fit(
        student,
        train,
        val_xy,
        epochs=epochs,
        lr=lr,
        teacher=teacher,
        distill=config,
        augment=aug,
        batch_size=batch_size,
        seed=seed,
        verbose=verbose,
    )
    teacher_acc = float((probabilities(teacher, val_xy[0]).argmax(-1) == val_xy[1].reshape(-1)).mean())
    config = {"epochs": epochs, "lr": lr, **config.to_dict(), "augment": augment, "seed": seed}
    details = {
        "teacher_val_accuracy": teacher_acc,
        "start_val_accuracy": out["start"],
        "val_accuracy": out["best"],
        "best_epoch": out["best_epoch"],
        "history": out["history"],
    }
    return KerasResult(student, TransformRecord("keras.distill", config, details=details))
