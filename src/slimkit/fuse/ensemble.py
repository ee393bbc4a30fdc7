"""Prediction ensembles as one ``nn.Module``: mean, majority vote, fitted weights, ensemble selection, stacking.

The ensemble runs every member and combines their outputs inside ``forward``, so it evaluates,
distils, saves and exports to ONNX like any single model. Its output is a logit vector: for
``mean``, ``vote``, ``weighted`` and ``select`` it is the log of the combined class probabilities (so
``softmax(output)`` *is* the ensemble's distribution); for ``stack`` it is the stacker's logits.
For any other task (regression, click-through, ranking, dense prediction: ``ensemble(...,
task=...)``, default the validation data's) the members' outputs are averaged as they are
(``mean``, ``weighted`` with weights fitted by the task's loss, ``select`` by it).

>>> import torch, slimkit as sk
>>> from slimkit.fuse import ensemble
>>> members = [sk.zoo.create("lenet5") for _ in range(3)]
>>> ens = ensemble(members, "mean")
>>> x = torch.rand(2, 1, 28, 28)
>>> mean = torch.stack([m(x).softmax(1) for m in members]).mean(0)
>>> torch.allclose(ens(x).softmax(1), mean, atol=1e-6)
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from slimkit.core.errors import ModelFileError, SlimkitError
from slimkit.core.model import arch_of, set_arch
from slimkit.core.transform import TransformRecord, add_record
from slimkit.data.base import as_loader
from slimkit.evaluate import data_task
from slimkit.task import Task, get_task
from slimkit.zoo.registry import register

__all__ = ["METHODS", "SELECT_METRICS", "Ensemble", "build_ensemble", "ensemble", "fit_selection", "member_logits"]

METHODS = ("mean", "vote", "weighted", "select", "stack")
SPACES = ("probabilities", "outputs")  # what is averaged: class probabilities, or the outputs as they are
SELECT_METRICS = ("accuracy", "log-loss")
# Share of the mean probability mixed into a vote, so that tied votes go to the more confident class.
VOTE_TIE_BREAK = 1e-3
_TINY = 1e-12  # keeps log() finite where a combined probability underflows to 0


class Ensemble(nn.Module):
    """Runs ``members`` on the same input and combines their predictions with ``method``.

    ``weights`` (a buffer, one per member, summing to 1) scale each member's probabilities for
    ``mean`` (uniform), ``weighted`` (fitted on validation data), ``select`` (how often ensemble
    selection picked each member) and ``vote`` (uniform: one member, one vote). ``stack`` feeds
    the members' log-probabilities, concatenated, to a linear layer ``head`` (multinomial
    logistic regression) with ``num_classes`` outputs.
    With ``space="outputs"`` (tasks other than classification) the output is the weighted mean of
    the members' outputs. Build one with :func:`ensemble`, which also fits the weights or the stacker.
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        method: str = "mean",
        num_classes: int | None = None,
        space: str = "probabilities",
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise SlimkitError(f"unknown ensemble method {method!r}; choose one of {', '.join(METHODS)}")
        if space not in SPACES:
            raise SlimkitError(f"unknown ensemble space {space!r}; choose one of {', '.join(SPACES)}")
        if space == "outputs" and method in ("vote", "stack"):
            raise SlimkitError(
                f"the {method!r} ensemble combines class probabilities (classification); average the outputs "
                "of other tasks with mean, weighted or select"
            )
        if len(members) < 1:
            raise SlimkitError("an ensemble needs at least one member")
        if method == "stack" and not num_classes:
            raise SlimkitError("a stacking ensemble needs num_classes")
        self.members = nn.ModuleList(members)
        self.method, self.num_classes, self.space = method, num_classes, space
        m = len(members)
        self.register_buffer("weights", torch.full((m,), 1.0 / m))
        self.head = nn.Linear(m * num_classes, num_classes) if method == "stack" else None  # type: ignore[operator]

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits for ``x``: (M, B, K)."""
        return torch.stack([member(x) for member in self.members])

    def combine(self, logits: torch.Tensor) -> torch.Tensor:
        """The ensemble's output (B, K) from the members' logits (M, B, K)."""
        if self.head is not None:
            features = F.log_softmax(logits, dim=-1).transpose(0, 1).flatten(1)  # (B, M*K)
            return self.head(features)
        w = self.weights.view(-1, *[1] * (logits.dim() - 1))  # (M, 1, 1...)
        if self.space == "outputs":
            return (w * logits).sum(0)
        probs = (w * logits.softmax(dim=-1)).sum(0)  # (B, K)
        if self.method == "vote":
            one_hot = torch.zeros_like(logits).scatter(-1, logits.argmax(-1, keepdim=True), 1.0)  # (M, B, K)
            probs = (1 - VOTE_TIE_BREAK) * (w * one_hot).sum(0) + VOTE_TIE_BREAK * probs
        return probs.clamp_min(_TINY).log()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(self.member_logits(x))

    def extra_repr(self) -> str:
        return f"method={self.method!r}, members={len(self.members)}, space={self.space!r}"


def member_logits(
    members: Sequence[nn.Module], loader: DataLoader, task: Task | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs (logits) of every member over ``loader`` (M, N, ...) and the targets (N, ...), in eval
    mode; ``task`` reads the batches (default: classification's ``(inputs, labels)``)."""
    task = task or get_task()
    outs: list[list[torch.Tensor]] = [[] for _ in members]
    labels = []
    for member in members:
        member.eval()
    with torch.no_grad():
        for batch in loader:
            x, y = task.split(batch)
            for out, member in zip(outs, members, strict=True):
                out.append(task.predict(member, x))
            labels.append(y)
    if not labels:
        raise SlimkitError("the validation data is empty")
    logits = [torch.cat(o) for o in outs]
    sizes = {tuple(t.shape[1:]) for t in logits}
    if len(sizes) != 1:
        raise SlimkitError(f"the members do not agree on the output shape: {sorted(sizes)}")
    return torch.stack(logits), torch.cat(labels)


def fit_weights(logits: torch.Tensor, labels: torch.Tensor, steps: int = 100, task: Task | None = None) -> torch.Tensor:
    """Member weights on the simplex minimising the log loss of the weighted mean of probabilities
    (for a ``task`` other than classification: the task's loss of the weighted mean of the outputs)."""
    theta = torch.zeros(len(logits), requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")
    outputs = task is not None and task.name != "classification"
    if not outputs:
        log_probs = F.log_softmax(logits, dim=-1)  # (M, N, K)
        picked = log_probs.gather(-1, labels.view(1, -1, 1).expand(len(logits), -1, 1)).squeeze(-1)  # (M, N)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        if outputs:
            w = theta.softmax(0).view(-1, *[1] * (logits.dim() - 1))
            loss = task.loss((w * logits).sum(0), labels)
        else:  # log sum_m w_m p_m(y), computed stably in log space
            loss = -torch.logsumexp(F.log_softmax(theta, 0).view(-1, 1) + picked, dim=0).mean()
        loss.backward()
        return loss

    opt.step(closure)
    return theta.detach().softmax(0)


def _selection_score(probs: torch.Tensor, labels: torch.Tensor, metric: str) -> tuple[float, ...]:
    """Higher is better: (-log loss,) for ``log-loss``, (accuracy, -log loss) for ``accuracy``."""
    nll = -float(probs.gather(1, labels.view(-1, 1)).clamp_min(_TINY).log().mean())
    if metric == "log-loss":
        return (-nll,)
    return (float((probs.argmax(1) == labels).float().mean()), -nll)


Score = Callable[[torch.Tensor], tuple[float, ...]]


def _select(probs: torch.Tensor, score_of: Score, pool: list[int], rounds: int, init: int) -> dict:
    """One run of forward selection with replacement over members ``pool`` (``score_of`` a mean of
    members' predictions: higher is better); counts (M,) of the best prefix."""
    singles = {i: score_of(probs[i]) for i in pool}
    ranked = sorted(pool, key=lambda i: singles[i], reverse=True)  # stable: ties keep index order
    counts = torch.zeros(len(probs))
    for i in ranked[:init]:  # sorted initialisation with the best ``init`` members
        counts[i] += 1
    total = probs[ranked[:init]].sum(0)  # (N, K) sum of the chosen members' probabilities
    best_score, best_counts = score_of(total / counts.sum()), counts.clone()
    path = [{"added": ranked[:init], "score": list(best_score)}]
    for _ in range(rounds):
        n = float(counts.sum()) + 1
        scored = [(score_of((total + probs[i]) / n), -i) for i in pool]
        score, neg_i = max(scored)  # ties: the lowest index
        total = total + probs[-neg_i]
        counts[-neg_i] += 1
        path.append({"added": [-neg_i], "score": list(score)})
        if score > best_score:  # the best prefix wins; ties keep the smaller ensemble
            best_score, best_counts = score, counts.clone()
    return {"counts": best_counts, "score": best_score, "path": path}


def fit_selection(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    rounds: int = 20,
    init: int = 1,
    metric: str = "log-loss",
    bags: int = 0,
    bag_fraction: float = 0.5,
    seed: int = 0,
    task: Task | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Ensemble selection (Caruana et al., ICML 2004) on validation logits (M, N, K): member weights and details.

    Start from the ``init`` best members (sorted initialisation); ``rounds`` times, add (with
    replacement) the member whose addition gives the best validation ``metric`` for the mean of
    the chosen members' probabilities; keep the best of these nested ensembles. A member's weight
    is the share of picks it got, so weak members get little or none. ``metric`` ``log-loss``
    (the default) compares validation log loss, a proper score that still tells members apart
    on a few hundred validation samples; ``accuracy`` compares validation accuracy first and log
    loss on ties (on small validation sets it tends to keep little more than the best member).
    With ``init=1`` and no bagging the result is never worse than the best single member on the
    validation metric: it starts as that member and keeps a larger ensemble only when it scores
    better.

    ``bags`` > 0: Caruana's bagged selection, for many members: run the selection ``bags`` times,
    each on a random ``bag_fraction`` of the members, and average the weights (less overfitting
    of the validation set, but no guarantee against the best member).

    For a ``task`` other than classification, ``logits`` are the members' outputs (M, N, ...),
    ``labels`` the targets, and the selection compares the task's loss of the mean output.
    """
    if task is not None and task.name != "classification":
        probs = logits.float()

        def score(mean: torch.Tensor) -> tuple[float, ...]:
            return (-float(task.loss(mean, labels)),)

    else:
        if metric not in SELECT_METRICS:
            raise SlimkitError(f"unknown selection metric {metric!r}; choose one of {', '.join(SELECT_METRICS)}")
        probs = logits.float().softmax(-1)  # (M, N, K)

        def score(mean: torch.Tensor) -> tuple[float, ...]:
            return _selection_score(mean, labels, metric)

    m = len(logits)
    if rounds < 0 or not 1 <= init <= m:
        raise SlimkitError(f"ensemble selection needs rounds >= 0 and 1 <= init <= {m} (members), got {rounds}, {init}")
    if bags < 0 or not 0 < bag_fraction <= 1:
        raise SlimkitError(f"ensemble selection needs bags >= 0 and 0 < bag_fraction <= 1, got {bags}, {bag_fraction}")
    if bags == 0:
        run = _select(probs, score, list(range(m)), rounds, init)
        weights = run["counts"] / run["counts"].sum()
        return weights, {"picks": [int(c) for c in run["counts"]], "path": run["path"]}
    g = torch.Generator().manual_seed(seed)
    size = max(init, round(bag_fraction * m))
    weights = torch.zeros(m)
    bagged = []
    for _ in range(bags):
        pool = sorted(torch.randperm(m, generator=g)[:size].tolist())
        run = _select(probs, score, pool, rounds, init)
        weights += run["counts"] / run["counts"].sum()
        bagged.append({"members": pool, "picks": [int(c) for c in run["counts"]]})
    return weights / bags, {"bags": bagged}


def fit_stack(head: nn.Linear, logits: torch.Tensor, labels: torch.Tensor, l2: float, steps: int = 200) -> None:
    """Fit the stacker (multinomial logistic regression) on the members' log-probabilities.

    It starts from the average of the members' log-probabilities (a geometric-mean ensemble) and
    ``l2`` pulls it back there, so a small validation set cannot move it far.
    """
    m, _, k = logits.shape
    features = F.log_softmax(logits, dim=-1).transpose(0, 1).flatten(1)  # (N, M*K)
    start = torch.eye(k).repeat(1, m) / m  # (K, M*K): mean of the members' log-probabilities
    with torch.no_grad():
        head.weight.copy_(start)
        head.bias.zero_()
    opt = torch.optim.LBFGS(list(head.parameters()), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head(features), labels) + l2 * (
            (head.weight - start).square().sum() + head.bias.square().sum()
        )
        loss.backward()
        return loss

    opt.step(closure)


def ensemble(
    members: Sequence[nn.Module],
    method: str = "mean",
    *,
    val: DataLoader | Any = None,
    l2: float = 1e-2,
    rounds: int = 20,
    metric: str = "log-loss",
    bags: int = 0,
    seed: int = 0,
    task: Task | str | None = None,
) -> Ensemble:
    """Combine trained ``members`` into one :class:`Ensemble` module (members are used, not copied).

    ``method``: ``mean`` (average of probabilities), ``vote`` (majority vote, ties to the higher
    mean probability), ``weighted`` (probability weights fitted on ``val`` by log loss),
    ``select`` (Caruana et al.'s ensemble selection on ``val``: members picked greedily, with
    replacement, starting from the best one; weights are the shares of picks; ``rounds``,
    ``metric``, ``bags`` and ``seed`` are passed to :func:`fit_selection`) or
    ``stack`` (logistic regression on ``val`` log-probabilities, regularised by ``l2`` towards
    plain averaging). ``select`` is the robust choice when members differ in quality: a weak
    member that ``mean`` would weigh equally is picked rarely or never, and without bagging the
    result is never worse than the best member on the validation metric (log loss by default).

    ``val`` is a DataLoader or a Dataset (only its ``val`` split is read); the fitted methods
    need it, the others use it to record each member's validation accuracy. ``task`` (default: the
    data's; classification) reads the batches; for tasks other than classification the ensemble
    averages the members' outputs (``mean``, ``weighted`` by the task's loss, ``select`` by it) and
    the record holds ``val_<metric>`` of the members and of the ensemble.

    The result saves with ``slimkit.save`` when every member came from the zoo (or a slimkit
    checkpoint) and reloads with ``slimkit.load(path)``.

    >>> import slimkit as sk
    >>> data = sk.data.load("digits")
    >>> members = [sk.zoo.create_for("resnet_cifar", data, depth=8, width=0.5) for _ in range(2)]
    >>> ens = ensemble(members, "weighted", val=data)
    >>> round(float(ens.weights.sum()), 6)
    1.0
    """
    if method not in METHODS:
        raise SlimkitError(f"unknown ensemble method {method!r}; choose one of {', '.join(METHODS)}")
    if not members:
        raise SlimkitError("an ensemble needs at least one member")
    loader = as_loader(val, "val", what="val")
    if method in ("weighted", "select", "stack") and loader is None:
        raise SlimkitError(f"the {method!r} ensemble is fitted on validation data: pass val=data (or a DataLoader)")
    task = data_task(val, task)
    space = "probabilities" if task.name == "classification" else "outputs"
    details: dict[str, Any] = {}
    num_classes = None
    if loader is not None:
        task = task.bind(members[0])
        logits, labels = member_logits(members, loader, task)
        details["val_samples"] = len(labels)
        if space == "probabilities":
            num_classes = int(logits.shape[-1])
            details["member_val_accuracy"] = [int((lg.argmax(1) == labels).sum()) / len(labels) for lg in logits]
        else:
            details["metric"] = task.metric
            details[f"member_val_{task.metric}"] = [task.evaluate(m, loader)[task.metric] for m in members]
    ens = Ensemble(members, method, num_classes, space)
    if method == "weighted":
        ens.weights.copy_(fit_weights(logits, labels, task=task))
    elif method == "select":
        weights, details["selection"] = fit_selection(
            logits, labels, rounds=rounds, metric=metric, bags=bags, seed=seed, task=task
        )
        ens.weights.copy_(weights)
    elif method == "stack":
        fit_stack(ens.head, logits, labels, l2)  # type: ignore[arg-type]
    if loader is not None and space == "probabilities":
        with torch.no_grad():
            details["val_accuracy"] = int((ens.combine(logits).argmax(1) == labels).sum()) / len(labels)
    elif loader is not None:
        details[f"val_{task.metric}"] = task.evaluate(ens, loader)[task.metric]
    details["weights"] = [round(float(w), 6) for w in ens.weights]
    _attach_arch(ens)
    config: dict[str, Any] = {"method": method, "l2": l2}
    if method == "select":
        config.update(rounds=rounds, metric=metric, bags=bags, seed=seed)
    add_record(ens, TransformRecord("fuse.ensemble", config, details=details))
    return ens.eval()


def _attach_arch(ens: Ensemble) -> None:
    """Describe the ensemble for ``slimkit.save`` if every member can be rebuilt without code."""
    archs = [arch_of(m) for m in ens.members]
    if any(a is None or not _rebuildable(a) for a in archs):
        return  # not saveable; slimkit.save says so
    arch = {
        "kind": "zoo",
        "name": "ensemble",
        "kwargs": {"members": archs, "method": ens.method, "num_classes": ens.num_classes, "space": ens.space},
    }
    if "input" in archs[0]:
        arch["input"] = archs[0]["input"]
    set_arch(ens, arch)


def _rebuildable(arch: dict[str, Any]) -> bool:
    return arch.get("kind") == "zoo"


@register("ensemble", composite=True)
def build_ensemble(
    members: list[dict[str, Any]], method: str = "mean", num_classes: int | None = None, space: str = "probabilities"
) -> Ensemble:
    """Rebuild an (untrained) ensemble from its members' architecture descriptions (checkpoint loading)."""
    from slimkit.io.checkpoint import build

    if not isinstance(members, list) or not all(isinstance(a, dict) for a in members):
        raise ModelFileError("an ensemble spec needs 'members': a list of architecture descriptions")
    built = []
    for i, arch in enumerate(members):
        if not _rebuildable(arch):
            raise ModelFileError(f"ensemble member {i} is not a zoo model; slimkit cannot rebuild it")
        model = build(arch, factory=None, where=f"ensemble member {i}")
        set_arch(model, arch)
        built.append(model)
    ens = Ensemble(built, method, num_classes, space)
    _attach_arch(ens)
    return ens
