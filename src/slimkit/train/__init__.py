"""Training and fine-tuning: seeded, cosine schedule, early stopping, optional distillation.

>>> import slimkit as sk
>>> data = sk.data.load("digits")
>>> model = sk.zoo.create_for("resnet_cifar", data, depth=8)
>>> history = sk.train.fit(model, data.train, val=data.val, epochs=2, progress=False)
>>> len(history.epochs)
2
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from slimkit.core.errors import SlimkitError
from slimkit.core.model import eval_mode

__all__ = ["History", "distillation_loss", "fit", "reestimate_bn"]


@dataclasses.dataclass
class History:
    """Per-epoch records (``epoch``, ``train_loss``, ``val_loss``, ``val_accuracy``, ``lr``, ``seconds``)."""

    epochs: list[dict[str, float]] = dataclasses.field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    @property
    def best_val_accuracy(self) -> float | None:
        accs = [e["val_accuracy"] for e in self.epochs if "val_accuracy" in e]
        return max(accs) if accs else None


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """Hinton et al. (2015): ``(1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher_T || student_T)``."""
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - alpha) * F.cross_entropy(student_logits, labels) + alpha * temperature**2 * soft


def _optimizer(name: str, params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    raise SlimkitError(f"unknown optimizer {name!r}; choose adam, adamw or sgd")


def _evaluate_loss(model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    total, correct, n = 0.0, 0, 0
    with eval_mode(model), torch.no_grad():
        for x, y in loader:
            logits = model(x)
            total += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
    return total / n, correct / n


def _divergence(x: torch.Tensor, epoch: int, loss: float) -> str:
    """Why the loss is not finite: bad inputs or a too high learning rate."""
    if x.is_floating_point() and not torch.isfinite(x).all():
        return f"the training inputs contain NaN or infinite values (epoch {epoch}); clean the data"
    return f"training diverged at epoch {epoch} (loss {loss}); lower the learning rate"


def fit(
    model: nn.Module,
    train: DataLoader,
    *,
    val: DataLoader | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    seed: int = 0,
    patience: int | None = None,
    restore_best: bool = True,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    teacher: nn.Module | Callable[[torch.Tensor], torch.Tensor] | None = None,
    temperature: float = 4.0,
    alpha: float = 0.5,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> History:
    """Train ``model`` in place and return its :class:`History`.

    - ``schedule``: ``"cosine"`` (decays to 0 over all steps, after ``warmup_steps``) or ``"constant"``.
    - ``patience``: stop when validation accuracy has not improved for that many epochs; with
      ``restore_best`` the best validation weights are put back at the end.
    - ``augment``: a batch transform applied to training inputs (e.g. ``slimkit.data.random_shift()``).
    - ``teacher``: distil from these logits with :func:`distillation_loss` (``temperature``, ``alpha``).
    """
    if epochs < 1:
        raise SlimkitError(f"epochs must be at least 1, got {epochs}")
    for name, value, ok, rule in (
        ("lr", lr, lambda v: v > 0, "> 0"),
        ("weight_decay", weight_decay, lambda v: v >= 0, ">= 0"),
        ("temperature", temperature, lambda v: v > 0, "> 0"),
        ("alpha", alpha, lambda v: 0 <= v <= 1, "in [0, 1]"),
        ("patience", 1 if patience is None else patience, lambda v: v >= 1, ">= 1"),
    ):
        if not (math.isfinite(value) and ok(value)):
            raise SlimkitError(f"{name} must be a finite number {rule}, got {value}")
    bad = next((n for n, p in model.named_parameters() if not torch.isfinite(p).all()), None)
    if bad is not None:
        raise SlimkitError(f"the model's weight {bad} holds NaN or infinite values before training; check the model")
    if schedule not in ("cosine", "constant"):
        raise SlimkitError(f"unknown schedule {schedule!r}; choose cosine or constant")
    torch.manual_seed(seed)
    opt = _optimizer(optimizer, [p for p in model.parameters() if p.requires_grad], lr, weight_decay)
    total_steps = epochs * len(train)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    if isinstance(teacher, nn.Module):
        teacher.eval()
    history = History()
    best_acc, best_state, stale = -1.0, None, 0
    bar = _Progress(progress, epochs, len(train))
    with bar:
        for epoch in range(1, epochs + 1):
            model.train()
            start, loss_sum, n = time.perf_counter(), 0.0, 0
            for x, y in train:
                if augment is not None:
                    x = augment(x)
                logits = model(x)
                if teacher is None:
                    loss = F.cross_entropy(logits, y)
                else:
                    with torch.no_grad():
                        t_logits = teacher(x)
                    loss = distillation_loss(logits, t_logits, y, temperature, alpha)
                if not torch.isfinite(loss):
                    raise SlimkitError(_divergence(x, epoch, float(loss.detach())))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += float(loss.detach()) * len(y)
                n += len(y)
                bar.step(f"epoch {epoch}/{epochs} loss {loss_sum / n:.4f}")
            record = {"epoch": epoch, "train_loss": loss_sum / n, "lr": opt.param_groups[0]["lr"]}
            if val is not None:
                record["val_loss"], record["val_accuracy"] = _evaluate_loss(model, val)
            record["seconds"] = time.perf_counter() - start
            history.epochs.append(record)
            bar.epoch_done(record)
            if on_epoch is not None:
                on_epoch(record)
            if val is None:
                continue
            if record["val_accuracy"] > best_acc:
                best_acc, stale, history.best_epoch = record["val_accuracy"], 0, epoch
                best_state = copy.deepcopy(model.state_dict()) if restore_best else None
            else:
                stale += 1
                if patience is not None and stale >= patience:
                    history.stopped_early = True
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


class _Progress:
    """A rich progress bar over all training steps, with one summary line per epoch."""

    def __init__(self, enabled: bool, epochs: int, steps: int) -> None:
        self.enabled = enabled
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.console = Console(stderr=True)
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.task = self.progress.add_task("training", total=epochs * steps)

    def __enter__(self) -> _Progress:
        if self.enabled:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.__exit__(*exc)

    def step(self, text: str) -> None:
        if self.enabled:
            self.progress.update(self.task, advance=1, description=text)

    def epoch_done(self, r: dict[str, float]) -> None:
        if self.enabled:
            val = f"  val loss {r['val_loss']:.4f}  val acc {100 * r['val_accuracy']:.2f}%" if "val_loss" in r else ""
            self.console.print(f"epoch {r['epoch']:>3}  train loss {r['train_loss']:.4f}{val}  ({r['seconds']:.1f} s)")


def reestimate_bn(model: nn.Module, batches: Any, *, max_batches: int | None = None) -> nn.Module:
    """Recompute every BatchNorm's running mean and variance on ``batches`` of ``(x, y)``, in place.

    The statistics are reset and then averaged over the batches with equal weight (momentum
    ``None``); the rest of the model stays in eval mode (no dropout) and no weight changes. Use it
    after anything that shifts activations (pruning, weight averaging): it is cheap and often
    recovers most of the accuracy before any fine-tuning.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return model
    momenta = [m.momentum for m in norms]
    was_training = model.training
    model.eval()
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for i, (x, _) in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                model(x)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return model
