"""What a model is for: one :class:`Task` tells every part of slimkit how to read a batch, the loss of a
batch, the metrics over a data split, which metric decides (and its direction) and how a student
learns from its teacher.

Built-ins (``get_task(name)``): ``classification`` (the default), ``binary`` (click-through: AUC,
log-loss), ``regression`` (MSE, MAE, RMSE), ``ranking`` (per-group AUC, NDCG@k), ``dense``
(per-pixel cross-entropy, mean IoU), ``tokens`` (a class per token: named entities, tagging),
``causal-lm`` (next-token prediction: perplexity), ``seq2seq`` (text to text: perplexity) and
``fidelity`` (cosine to the original model's outputs and nearest-neighbour overlap; needs no labels).

A batch may be an ``(x, y)`` pair, a tuple ``(x1, ..., xn, y)`` (the model takes ``x1, ..., xn``),
a dict (Hugging Face style: ``labels`` / ``label`` is the target, the rest are keyword inputs) or
bare inputs without targets. A model may return a tensor, a tuple (its first item is used) or a
Hugging Face output (``logits``, else ``sentence_embedding``, ``pooler_output``,
``last_hidden_state``). ``batch=`` and ``output=`` override either rule.

>>> import torch
>>> task = get_task("regression")
>>> task.metric, task.higher_is_better
('rmse', False)
>>> model = torch.nn.Linear(3, 1)
>>> batches = [(torch.randn(8, 3), torch.randn(8)) for _ in range(2)]
>>> sorted(task.evaluate(model, batches))
['loss', 'mae', 'mse', 'r2', 'rmse']
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import re
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slimkit.core.device import model_device, same_device, to_device
from slimkit.core.errors import SlimkitError
from slimkit.core.model import eval_mode

__all__ = [
    "Binary",
    "Classification",
    "DensePrediction",
    "Fidelity",
    "LanguageModeling",
    "Ranking",
    "Regression",
    "Seq2SeqLM",
    "Task",
    "TokenClassification",
    "format_metric",
    "get_task",
    "in_points",
    "metric_info",
    "output_tensor",
    "split_batch",
    "worse_by",
]

LABEL_KEYS = ("labels", "label", "targets", "target", "y")
OUTPUT_KEYS = ("logits", "sentence_embedding", "pooler_output", "last_hidden_state")

# name -> (higher is better, shown and compared in points: x100)
_METRICS: dict[str, tuple[bool, bool]] = {
    "accuracy": (True, True),
    "precision": (True, True),
    "recall": (True, True),
    "f1": (True, True),
    "auc": (True, False),
    "user_auc": (True, False),
    "log_loss": (False, False),
    "loss": (False, False),
    "mse": (False, False),
    "rmse": (False, False),
    "mae": (False, False),
    "r2": (True, False),
    "miou": (True, True),
    "perplexity": (False, False),
    "pixel_accuracy": (True, True),
    "cosine": (True, False),
    "min_cosine": (True, False),
}


def metric_info(name: str) -> tuple[bool, bool] | None:
    """``(higher_is_better, in_points)`` of a metric slimkit knows (``ndcg@10``, ``overlap@10`` too), else None."""
    if re.fullmatch(r"(ndcg|overlap)@\d+", name):
        return True, False
    return _METRICS.get(name)


def in_points(name: str) -> bool:
    """Whether a metric is a share shown and compared in points (accuracy 0.9731 -> 97.31)."""
    info = metric_info(name)
    return info is not None and info[1]


def worse_by(name: str, before: float, after: float, higher_is_better: bool | None = None) -> float:
    """How much worse ``after`` is than ``before`` on metric ``name``, in its units (points for shares):
    ``worse_by("accuracy", 0.95, 0.94) == 1.0``, ``worse_by("rmse", 0.90, 0.91) == 0.01``."""
    if higher_is_better is None:
        info = metric_info(name)
        higher_is_better = True if info is None else info[0]
    return (1 if higher_is_better else -1) * (100 if in_points(name) else 1) * (before - after)


def format_metric(name: str, value: float) -> str:
    """``97.31%`` for metrics in points, ``0.8123`` for the others."""
    return f"{100 * value:.2f}%" if in_points(name) else f"{value:.4f}"


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a batch; targets are None when the batch holds inputs only."""
    if isinstance(batch, dict) or hasattr(batch, "keys") and not isinstance(batch, torch.Tensor):
        key = next((k for k in LABEL_KEYS if k in batch), None)
        if key is None:
            return dict(batch), None
        return {k: v for k, v in batch.items() if k != key}, batch[key]
    if isinstance(batch, tuple | list):
        if len(batch) == 1:
            return batch[0], None
        if len(batch) == 2:
            return batch[0], batch[1]
        return tuple(batch[:-1]), batch[-1]
    return batch, None


def output_tensor(raw: Any) -> torch.Tensor:
    """The tensor a task scores in a model's output (see the module docstring)."""
    if isinstance(raw, torch.Tensor):
        return raw
    for key in OUTPUT_KEYS:
        value = raw.get(key) if hasattr(raw, "get") else getattr(raw, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(raw, tuple | list) and raw and isinstance(raw[0], torch.Tensor):
        return raw[0]
    raise SlimkitError(
        f"cannot find the prediction in the model's output ({type(raw).__name__}); "
        "pass output=fn to the task to pick it (e.g. Task(output=lambda out: out['scores']))"
    )


_CPU = torch.device("cpu")


def _rows(t: torch.Tensor) -> int:
    return int(t.shape[0]) if t.dim() else 1


class Meter:
    """Accumulates one split's outputs batch by batch; ``result()`` gives the metrics."""

    samples: int = 0

    def update(self, out: torch.Tensor, targets: Any, inputs: Any) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, float]:
        raise NotImplementedError


@dataclasses.dataclass
class Task:
    """The base of every task: batch reading, the evaluation loop and distillation defaults.

    Subclasses set ``name``, ``metric`` (the deciding metric) and implement ``loss``, ``meter`` and
    (where mean squared error between outputs is not the right distance) ``soft_loss``.
    """

    name: ClassVar[str] = "task"
    needs_targets: ClassVar[bool] = True
    metric: str = ""
    batch: Callable[[Any], tuple[Any, Any]] | None = dataclasses.field(default=None, repr=False)
    output: Callable[[Any], torch.Tensor] | None = dataclasses.field(default=None, repr=False)

    # ---- reading batches and outputs ------------------------------------------------------
    def split(self, batch: Any) -> tuple[Any, Any]:
        """``(inputs, targets)`` of a batch."""
        inputs, targets = (self.batch or split_batch)(batch)
        if targets is None:
            targets = self.implied_targets(inputs)
        if targets is None and self.needs_targets:
            raise SlimkitError(
                f"the {self.name} task needs targets, but a batch holds inputs only; give (inputs, targets) "
                "batches, a dict with 'labels', or task='fidelity' to match the original model without labels"
            )
        return inputs, targets

    def implied_targets(self, inputs: Any) -> Any:
        """Targets a task reads from the inputs when a batch has none (a language model: its input ids)."""
        return None

    def inputs(self, batch: Any) -> Any:
        return (self.batch or split_batch)(batch)[0]

    def predict(self, model: Any, inputs: Any) -> torch.Tensor:
        """The model's prediction tensor on ``inputs`` (float)."""
        from slimkit.graph.trace import call_model

        raw = call_model(model, inputs)
        return (self.output or output_tensor)(raw).float()

    # ---- what subclasses define -------------------------------------------------------------
    def loss(self, out: torch.Tensor, targets: Any) -> torch.Tensor:
        raise NotImplementedError

    def meter(self) -> Meter:
        raise NotImplementedError

    def soft_loss(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        """How far the student's outputs are from the teacher's (default: mean squared error)."""
        return F.mse_loss(student, teacher)

    def distill_loss(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        targets: Any,
        *,
        temperature: float = 4.0,
        alpha: float = 0.5,
    ) -> torch.Tensor:
        """``(1 - alpha) * loss(targets) + alpha * soft_loss(teacher)`` (only the soft part without targets)."""
        soft = self.soft_loss(student, teacher, temperature)
        if targets is None or alpha >= 1:
            return soft
        return (1 - alpha) * self.loss(student, targets) + alpha * soft

    @property
    def higher_is_better(self) -> bool:
        info = metric_info(self.metric)
        return True if info is None else info[0]

    def bind(self, reference: nn.Module) -> Task:
        """The task with the original model bound where it needs one (fidelity); others unchanged."""
        return self

    # ---- evaluation ------------------------------------------------------------------------
    def evaluate(
        self, model: Any, loader: Iterable, *, max_batches: int | None = None, shared: bool = False
    ) -> dict[str, float]:
        """Metrics of ``model`` (a module or an ONNX runner) over ``loader`` (eval mode, no gradients),
        ``loss`` among them; at most ``max_batches`` batches. ``shared``: every rank of a torchrun job
        calls this together and computes its share of the batches (the metrics are the same as one
        process's, on every rank)."""
        return self.run(model, loader, max_batches=max_batches, shared=shared).result()

    def run(self, model: Any, loader: Iterable, *, max_batches: int | None = None, shared: bool = False) -> Meter:
        """The filled :class:`Meter` of :meth:`evaluate` (classification keeps its confusion matrix)."""
        from slimkit import distributed

        meter = self.meter()
        ranks, me = (distributed.world_size(), distributed.rank()) if shared else (1, 0)
        mine: Any = None  # this rank's scored batch of the current round (ranks take turns, batch by batch)
        ctx = eval_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext()
        with ctx, torch.no_grad(), same_device("evaluation"):
            i = -1
            for i, batch in enumerate(itertools.islice(loader, max_batches)):
                if i % ranks == me:
                    inputs, targets = to_device(self.split(batch), model_device(model))
                    out = self.predict(model, inputs)
                    # meters count on the CPU (numpy)
                    mine = to_device((out, self.reference_targets(inputs, targets), inputs), _CPU)
                if ranks == 1:
                    self._count(meter, mine)
                elif i % ranks == ranks - 1:  # a round done: every rank counts every batch, in order
                    for scored in distributed.gather(mine):
                        self._count(meter, scored)
                    mine = None
            if ranks > 1 and (i + 1) % ranks:  # the last, partial round
                for scored in distributed.gather(mine):
                    self._count(meter, scored)
        if not meter.samples:
            raise SlimkitError("cannot evaluate: the data split is empty")
        return meter

    @staticmethod
    def _count(meter: Meter, scored: Any) -> None:
        if scored is not None:
            meter.update(*scored)
            meter.samples += _rows(scored[0])

    def reference_targets(self, inputs: Any, targets: Any) -> Any:
        """The targets a meter scores against (fidelity: the original model's outputs)."""
        return targets


# ---- classification --------------------------------------------------------------------------
class _ConfusionMeter(Meter):
    """Cross-entropy sum and a confusion matrix, grown as classes appear; ``dense`` scores every pixel."""

    def __init__(self, *, dense: DensePrediction | None = None) -> None:
        self.dense = dense
        self.loss, self.n = 0.0, 0
        self.confusion = np.zeros((0, 0), dtype=np.int64)
        self.scores: list[np.ndarray] = []  # binary classification: P(class 1), for AUC / log-loss
        self.labels: list[np.ndarray] = []

    def update(self, out: torch.Tensor, targets: Any, inputs: Any) -> None:
        y = torch.as_tensor(targets).long()
        if self.dense is not None:  # (B, K, ...) -> (N, K)
            out = self.dense.classes_first(out, y)
            out, y = out.movedim(1, -1).reshape(-1, out.shape[1]), y.reshape(-1)
            if self.dense.ignore_index is not None:
                keep = y != self.dense.ignore_index
                out, y = out[keep], y[keep]
        if out.dim() != 2:
            raise SlimkitError(
                f"classification needs (batch, classes) outputs, got shape {tuple(out.shape)}; "
                f"choose the task that fits the model (--task / task=: {', '.join(TASKS)})"
            )
        k = out.shape[1]
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
            raise SlimkitError(f"labels must be class ids in [0, {k}), got values up to {int(y.max())}")
        self.loss += float(F.cross_entropy(out, y, reduction="sum"))
        self.n += len(y)
        pred = out.argmax(1)
        counts = torch.bincount(y * k + pred, minlength=k * k).reshape(k, k).numpy()
        if self.confusion.shape[0] < k:
            grown = np.zeros((k, k), dtype=np.int64)
            grown[: self.confusion.shape[0], : self.confusion.shape[1]] = self.confusion
            self.confusion = grown
        self.confusion[:k, :k] += counts
        if self.dense is None and k == 2:
            self.scores.append(torch.softmax(out, 1)[:, 1].numpy())
            self.labels.append(y.numpy())

    def result(self) -> dict[str, float]:
        if not self.n:
            raise SlimkitError("cannot score: no labelled samples in the data split")
        c = self.confusion.astype(np.float64)
        tp, true, predicted = np.diag(c), c.sum(1), c.sum(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(predicted > 0, tp / predicted, 0.0)
            recall = np.where(true > 0, tp / true, 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
            iou = tp / (true + predicted - tp)
        present = (true + predicted) > 0
        if self.dense is not None:
            accuracy = "pixel_accuracy" if self.dense.class_dim == 1 else "accuracy"
            return {
                accuracy: float(tp.sum() / c.sum()),
                "miou": float(np.mean(iou[present])),
                "f1": float(np.mean(f1[present])),
                "loss": self.loss / self.n,
            }
        out = {
            "accuracy": float(tp.sum() / c.sum()),
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
            "loss": self.loss / self.n,
        }
        if self.scores:
            scores, labels = np.concatenate(self.scores), np.concatenate(self.labels)
            if len(np.unique(labels)) == 2:
                out["auc"] = _auc(labels, scores)
            out["log_loss"] = out["loss"]
        return out


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def _kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(teacher_T || student_T)`` over the last dimension, averaged over rows (Hinton et al. 2015)."""
    k = student.shape[-1]
    return (
        F.kl_div(
            F.log_softmax(student.reshape(-1, k) / temperature, dim=1),
            F.log_softmax(teacher.reshape(-1, k) / temperature, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        * temperature**2
    )


@dataclasses.dataclass
class Classification(Task):
    """One class per sample: cross-entropy; accuracy (decides), macro precision / recall / F1, and AUC
    and log-loss for two classes."""

    name: ClassVar[str] = "classification"
    metric: str = "accuracy"

    def loss(self, out: torch.Tensor, targets: Any) -> torch.Tensor:
        return F.cross_entropy(out, targets)

    def meter(self) -> Meter:
        return _ConfusionMeter()

    def soft_loss(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        return _kd(student, teacher, temperature)


@dataclasses.dataclass
class DensePrediction(Classification):
    """A class per pixel (segmentation): outputs ``(B, K, H, W)`` (the classes on axis ``class_dim``),
    targets ``(B, H, W)`` class ids; per-pixel cross-entropy, mean IoU (decides), pixel accuracy and
    F1 (means over the classes present). Pixels labelled ``ignore_index`` are not scored (-100:
    PyTorch's and Hugging Face's convention)."""

    name: ClassVar[str] = "dense"
    metric: str = "miou"
    ignore_index: int | None = -100
    class_dim: int = 1

    def classes_first(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``out`` with its classes on axis 1, checked against the shape of ``targets``."""
        first = out.movedim(self.class_dim, 1) if out.dim() > 1 else out
        if first.dim() == targets.dim() + 1 and first.shape[:1] + first.shape[2:] == targets.shape:
            return first
        hint = "choose the task that fits the model"
        if self.class_dim == 1 and out.shape[:-1] == targets.shape:
            hint = "the classes look like the last axis, as in token classification: use task='tokens'"
        elif self.class_dim != 1 and out.dim() > 1 and out.shape[:1] + out.shape[2:] == targets.shape:
            hint = "the classes look like axis 1, as in segmentation maps: use task='dense'"
        raise SlimkitError(
            f"the {self.name} task needs outputs with a class axis ({self.class_dim}) over targets of the other "
            f"axes; got outputs {tuple(out.shape)} and targets {tuple(targets.shape)}: {hint}"
        )

    def loss(self, out: torch.Tensor, targets: Any) -> torch.Tensor:
        ignore = -100 if self.ignore_index is None else self.ignore_index
        return F.cross_entropy(self.classes_first(out, targets), targets, ignore_index=ignore)

    def meter(self) -> Meter:
        return _ConfusionMeter(dense=self)

    def soft_loss(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        return _kd(student.movedim(self.class_dim, -1), teacher.movedim(self.class_dim, -1), temperature)


@dataclasses.dataclass
class TokenClassification(DensePrediction):
    """A class per token (named entities, part-of-speech tags; Hugging Face's
    ``...ForTokenClassification``): outputs ``(B, T, K)``, targets ``(B, T)`` with -100 on padding
    and continuation sub-words (not scored); token accuracy, mean IoU and F1 (decides: the mean over
    the classes present, so the rare entity classes count as much as the common "outside" one)."""

    name: ClassVar[str] = "tokens"
    metric: str = "f1"
    class_dim: int = -1


# ---- language modelling ----------------------------------------------------------------------
def _next_tokens(out: torch.Tensor, targets: Any, *, shift: bool, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(B, T, V)`` and labels ``(B, T)`` -> each position's logits and the token it predicts
    (``shift``: the label after it, else its own), ``(N, V)`` and ``(N,)``; -100 labels dropped."""
    y = torch.as_tensor(targets).long()
    if out.dim() != 3 or out.shape[:2] != y.shape:
        raise SlimkitError(
            f"the {task} task needs (batch, tokens, vocabulary) logits over (batch, tokens) labels; got "
            f"outputs {tuple(out.shape)} and labels {tuple(y.shape)}: choose the task that fits the model"
        )
    if shift:
        out, y = out[:, :-1], y[:, 1:]
    logits, predicted = out.reshape(-1, out.shape[-1]), y.reshape(-1)
    keep = predicted != -100
    return logits[keep], predicted[keep]


class _PerplexityMeter(Meter):
    def __init__(self, task: LanguageModeling) -> None:
        self.task = task
        self.nll, self.right, self.n = 0.0, 0, 0

    def update(self, out: torch.Tensor, targets: Any, inputs: Any) -> None:
        logits, y = self.task.predicted(out, targets)
        self.nll += float(F.cross_entropy(logits, y, reduction="sum"))
        self.right += int((logits.argmax(1) == y).sum())
        self.n += len(y)

    def result(self) -> dict[str, float]:
        if not self.n:
            raise SlimkitError("cannot score: no tokens to predict in the data split")
        loss = self.nll / self.n
        return {"perplexity": math.exp(loss), "loss": loss, "accuracy": self.right / self.n}


@dataclasses.dataclass
class LanguageModeling(Task):
    """Next-token prediction (Hugging Face's ``...ForCausalLM``): logits ``(B, T, V)`` against the
    batch's ``labels`` (Hugging Face's convention: the input ids, shifted here; -100 not scored) or,
    without labels, the ``input_ids`` with the padding (``attention_mask`` 0) not scored. Perplexity
    (decides, lower is better), mean token cross-entropy and next-token accuracy; a student learns
    the teacher's distribution over the vocabulary at every position."""

    name: ClassVar[str] = "causal-lm"
    shift: ClassVar[bool] = True  # logits at t predict the label at t + 1
    metric: str = "perplexity"

    def predicted(self, out: torch.Tensor, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Each scored position's logits ``(N, V)`` and the token it predicts ``(N,)``."""
        return _next_tokens(out, targets, shift=self.shift, task=self.name)

    def implied_targets(self, inputs: Any) -> Any:
        ids = inputs.get("input_ids") if isinstance(inputs, dict) else None
        if not isinstance(ids, torch.Tensor):
            return None
        mask = inputs.get("attention_mask")
        return ids if mask is None else ids.masked_fill(mask == 0, -100)

    def loss(self, out: torch.Tensor, targets: Any) -> torch.Tensor:
        logits, y = self.predicted(out, targets)
        return F.cross_entropy(logits, y) if len(y) else out.sum() * 0

    def meter(self) -> Meter:
        return _PerplexityMeter(self)

    def soft_loss(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        return _kd(student, teacher, temperature)


@dataclasses.dataclass
class Seq2SeqLM(LanguageModeling):
    """Text to text (Hugging Face's ``...ForConditionalGeneration``: T5, BART): decoder logits
    ``(B, T, V)`` against the batch's ``labels``, position by position (the batch carries the
    ``decoder_input_ids``, the labels shifted right, as ``DataCollatorForSeq2Seq`` makes them); -100
    not scored. Perplexity decides, as in ``causal-lm``."""

    name: ClassVar[str] = "seq2seq"
    shift: ClassVar[bool] = False

    def implied_targets(self, inputs: Any) -> Any:
        return None  # the input ids are the source text, not the target


# ---- regression ------------------------------------------------------------------------------
def _column(out: torch.Tensor, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and targets of the same shape: a (B, 1) output scores (B,) targets."""
    y = torch.as_tensor(targets).float()
    if out.dim() == y.dim() + 1 and out.shape[-1] == 1:
        out = out.squeeze(-1)
    if out.shape != y.shape:
        raise SlimkitError(f"the model's outputs {tuple(out.shape)} do not match the targets {tuple(y.shape)}")
    return out, y


class _RegressionMeter(Meter):
    def __init__(self) -> None:
        self.sq = self.abs = self.sum = self.sum_sq = 0.0
        self.n = 0

    def update(self, out: torch.Tensor, targets: Any, inputs: Any) -> None:
        out, y = _column(out, targets)
        err = (out - y).double()
        self.sq += float((err**2).sum())
        self.abs += float(err.abs().sum())
        self.sum += float(y.double().sum())
        self.sum_sq += float((y.double() ** 2).sum())
        self.n += y.numel()

    def result(self) -> dict[str, float]:
        if not self.n:
            raise SlimkitError("cannot score: no samples in the data split")
        mse = self.sq / self.n
        var = self.sum_sq / self.n - (self.sum / self.n) ** 2
        return {
            "rmse": math.sqrt(mse),
            "mse": mse,
            "mae": self.abs / self.n,
            "r2": 1 - mse / var if var > 0 else float("nan"),
            "loss": mse,
        }


@dataclasses.dataclass
class Regression(Task):
    """Real-valued targets: mean squared error; RMSE (decides), MSE, MAE, R^2."""

    name: ClassVar[str] = "regression"
    metric: str = "rmse"

    def loss(self, out: torch.Tensor, targets: Any) -> torch.Tensor:
        return F.mse_loss(*_column(out, targets))

    def meter(self) -> Meter:
        return _RegressionMeter()

    def soft_loss(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        return F.mse_loss(student.squeeze(-1), teacher.squeeze(-1))


# ---- binary / click-through and ranking --------------------------------------------------------
def _logit(out: torch.Tensor) -> torch.Tensor:
    """One logit per sample: (B,), (B, 1), or the class-1 margin of (B, 2) outputs."""
    if out.dim() == 2 and out.shape[1] == 2:
        return out[:, 1] - out[:, 0]
    if out.dim() == 2 and out.shape[1] == 1:
        return out[:, 0]
    if out.dim() != 1:
        raise SlimkitError(f"a binary task needs one logit per sample (or two classes), got shape {tuple(out.shape)}")
    return out


class _ScoreMeter(Meter):
    """Keeps every score, label (and group id for ranking) of the split: AUC and NDCG need them all."""

    def __init__(self, group: Callable[[Any], torch.Tensor] | None, k: int) -> None:
        self.group, self.k = group, k
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.groups: list[np.ndarray] = []

    def update(self, out: torch.Tensor, targets: Any, inputs: Any) -> None:
        z = _logit(out)
        self.scores.append(z.double().numpy())
        self.labels.append(torch.as_tensor(targets).reshape(-1).double().numpy())
        if self.group is not None:
            self.groups.append(torch.as_tensor(self.group(inputs)).reshape(-1).numpy())

    def result(self) -> dict[str, float]:
        if not self.scores:
            raise SlimkitError("cannot score: no samples in the data split")
        z, y = np.concatenate(self.scores), np.concatenate(self.labels)
        binary = (y > 0).astype(np.float64)
        p = np.clip(1 / (1 + np.exp(-z)), 1e-7, 1 - 1e-7)
        out = {
            "log_loss": float(-(binary * np.log(p) + (1 - binary) * np.log(1 - p)).mean()),
            "accuracy": float(((z > 0) == (binary > 0)).mean()),
        }
        out["loss"] = out["log_loss"]
        if len(np.unique(binary)) == 2:
            out["auc"] = _auc(binary, z)
        if self.group is not None:
            out |= _ranking(np.concatenate(self.groups), z, y, self.k)
        return out


def _ranking(groups: np.ndarray, scores: np.ndarray, relevance: np.ndarray, k: int) -> dict[str, float]:
    """Mean per-group AUC (groups with both classes) and NDCG@k (groups with a relevant item)."""
    from sklearn.metrics import roc_auc_score

    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.diff(groups[order])) + 1
    aucs, ndcgs = [], []
    discounts = 1 / np.log2(np.arange(2, k + 2))
    for idx in np.split(order, bounds):
        s, r = scores[idx], relevance[idx]
        if 0 < (r > 0).sum() < len(r):
            aucs.append(roc_auc_score(r > 0, s))
        if (r > 0).any():
            gains = 2 ** r[np.argsort(-s, kind="stable")][:k] - 1
            ideal = 2 ** np.sort(r)[::-1][:k] - 1
            ndcgs.append(float((gains * discounts[: len(gains)]).sum() / (ideal * discounts[: len(ideal)]).sum()))
    out = {}
    if aucs:
        out["user_auc"] = float(np.mean(aucs))
    if ndcgs:
        out[f"ndcg@{k}"] = float(np.mean(ndcgs))
    return out


def _bce(out: torch.Tensor, targets: Any) -> torch.Tensor:
    y = (torch.as_tensor(targets).reshape(-1).float() > 0).float()
    return F.binary_cross_entropy_with_logits(_logit(out), y)


@dataclasses.dataclass
class Binary(Task):
    """Yes / no per sample (click-through): one logit (or two classes); binary cross-entropy; AUC
    (decides), log-loss, accuracy at 0.5."""

    name: ClassVar[str] = "binary"
    metric: str = "auc"

    def loss(self, out: torch.Tensor, targets: Any) -> torch.Tensor:
        return _bce(out, targets)

    def meter(self) -> Meter:
        return _ScoreMeter(None, 0)

    def soft_loss(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        soft_targets = torch.sigmoid(_logit(teacher) / temperature)
        return F.binary_cross_entropy_with_logits(_logit(student) / temperature, soft_targets) * temperature**2


def _first_column(inputs: Any) -> torch.Tensor:
    """The group (user / query) id of each sample: the first input's first column."""
    x = inputs
    while isinstance(x, tuple | list):
        x = x[0]
    if isinstance(x, dict):
        x = next(iter(x.values()))
    return x[:, 0] if x.dim() > 1 else x


@dataclasses.dataclass
class Ranking(Binary):
    """Scores ranked within groups (users, queries): trained pointwise with binary cross-entropy on
    relevance > 0; mean per-group AUC (``user_auc``, decides) and NDCG@``k`` (graded relevance).
    ``group(inputs)`` gives each sample's group id (default: the first input column, the user id of a
    recommender's ``(B, fields)`` id tensor)."""

    name: ClassVar[str] = "ranking"
    metric: str = "user_auc"
    group: Callable[[Any], torch.Tensor] = dataclasses.field(default=_first_column, repr=False)
    k: int = 10

    def meter(self) -> Meter:
        return _ScoreMeter(self.group, self.k)


# ---- fidelity ----------------------------------------------------------------------------------
class _FidelityMeter(Meter):
    def __init__(self, k: int, max_neighbours: int) -> None:
        self.k, self.cap = k, max_neighbours
        self.cos: list[np.ndarray] = []
        self.sq, self.n = 0.0, 0
        self.mine: list[torch.Tensor] = []
        self.ref: list[torch.Tensor] = []
        self.kept = 0

    def update(self, out: torch.Tensor, targets: Any, inputs: Any) -> None:
        a, b = out.reshape(len(out), -1).double(), targets.reshape(len(targets), -1).double()
        if a.shape != b.shape:
            raise SlimkitError(
                f"the model's outputs {tuple(out.shape)} do not match the original's {tuple(targets.shape)}"
            )
        self.cos.append(F.cosine_similarity(a, b, dim=1).numpy())
        self.sq += float(((a - b) ** 2).sum())
        self.n += a.numel()
        room = self.cap - self.kept
        if room > 0:
            self.mine.append(F.normalize(a[:room], dim=1))
            self.ref.append(F.normalize(b[:room], dim=1))
            self.kept += len(self.mine[-1])

    def result(self) -> dict[str, float]:
        if not self.cos:
            raise SlimkitError("cannot score: no samples in the data split")
        cos = np.concatenate(self.cos)
        out = {"cosine": float(cos.mean()), "min_cosine": float(cos.min()), "loss": self.sq / self.n}
        a, b = torch.cat(self.mine), torch.cat(self.ref)
        k = min(self.k, len(a) - 1)
        if k >= 1:
            out[f"overlap@{self.k}"] = _overlap(a, b, k)
        return out


def _overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """Mean share of each row's ``k`` nearest rows (cosine) under ``a`` that are also among them under ``b``."""
    eye = torch.eye(len(a), dtype=torch.bool)
    near_a = (a @ a.T).masked_fill(eye, -math.inf).topk(k, dim=1).indices
    near_b = (b @ b.T).masked_fill(eye, -math.inf).topk(k, dim=1).indices
    hits = (near_a.unsqueeze(2) == near_b.unsqueeze(1)).any(2).sum(1)
    return float(hits.double().mean() / k)


@dataclasses.dataclass
class Fidelity(Task):
    """Stay close to the original model's outputs (sentence embeddings, features): no labels needed.
    Loss: mean squared error to the original's outputs; metrics: mean cosine (decides), the worst
    cosine, and ``overlap@k``: the share of each sample's ``k`` nearest neighbours (cosine, among
    the first ``max_neighbours`` samples of the split) that the original also ranks in its ``k``
    nearest, what a semantic-search user notices. The loop binds the original model as
    ``reference``."""

    name: ClassVar[str] = "fidelity"
    needs_targets: ClassVar[bool] = False
    metric: str = "cosine"
    reference: nn.Module | None = dataclasses.field(default=None, repr=False)
    k: int = 10
    max_neighbours: int = 4096

    def split(self, batch: Any) -> tuple[Any, Any]:
        return self.inputs(batch), None

    def bind(self, reference: nn.Module) -> Task:
        return self if self.reference is not None else dataclasses.replace(self, reference=reference)

    def reference_targets(self, inputs: Any, targets: Any) -> Any:
        if self.reference is None:
            raise SlimkitError(
                "the fidelity task has no original model to compare with: pass Fidelity(reference=model)"
            )
        with eval_mode(self.reference), torch.no_grad():
            return self.predict(self.reference, inputs)

    def loss(self, out: torch.Tensor, targets: Any) -> torch.Tensor:
        if targets is None:
            raise SlimkitError("the fidelity task trains only against a teacher: fine-tune with distillation on")
        return F.mse_loss(out, targets)

    def meter(self) -> Meter:
        return _FidelityMeter(self.k, self.max_neighbours)


TASKS: dict[str, type[Task]] = {
    t.name: t
    for t in (
        Classification,
        Binary,
        Regression,
        Ranking,
        DensePrediction,
        TokenClassification,
        LanguageModeling,
        Seq2SeqLM,
        Fidelity,
    )
}
ALIASES = {
    **dict.fromkeys(("segmentation", "dense-prediction"), "dense"),
    **dict.fromkeys(("token-classification", "ner"), "tokens"),
    **dict.fromkeys(("lm", "language-modeling", "next-token"), "causal-lm"),
    **dict.fromkeys(("text2text", "translation", "summarization"), "seq2seq"),
    "ctr": "binary",
    "embedding": "fidelity",
}


def get_task(task: Task | str | None = None, **kwargs: Any) -> Task:
    """A :class:`Task` from itself, its name (``classification``, ``binary``, ``regression``, ``ranking``,
    ``dense``, ``tokens``, ``causal-lm``, ``seq2seq``, ``fidelity``; :data:`ALIASES` too) or None (classification);
    ``kwargs`` go to its constructor."""
    if isinstance(task, Task):
        return dataclasses.replace(task, **kwargs) if kwargs else task
    name = (task or "classification").strip().lower().replace("_", "-")
    name = ALIASES.get(name, name)
    if name not in TASKS:
        raise SlimkitError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    try:
        return TASKS[name](**kwargs)
    except TypeError as exc:
        raise SlimkitError(f"task {name}: {exc}") from None
