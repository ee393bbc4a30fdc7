"""Sensitivity analysis and non-uniform allocation of per-layer pruning ratios.

:func:`measure_sensitivity` prunes each prunable group alone (and factorizes each Linear/Conv2d
alone, if asked) at a few ratios and records the validation loss and accuracy. :func:`allocate`
then picks one ratio per group so that the estimated MACs / params meet a budget with the least
predicted loss increase: starting from the unpruned model it repeatedly raises the ratio of the
group whose next step costs the least loss per unit of budget saved (losses of groups are assumed
to add up; costs are estimated per layer as ``cost * keep(in) * keep(out)``, then checked exactly).

>>> import torch, slimkit as sk
>>> model = sk.zoo.create("seed_cnn")
>>> costs = CostModel(model, torch.zeros(1, 1, 28, 28))
>>> [g for g in costs.groups], costs.base["macs"]
(['conv1', 'conv2', 'fc1'], 6498560)
>>> round(costs.estimate({"conv2": 0.5})["macs"] / costs.base["macs"], 3)
0.531
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from slimkit.core.errors import SlimkitError
from slimkit.core.model import eval_mode
from slimkit.evaluate.cost import count_macs, count_params
from slimkit.graph import analyze, first_sample
from slimkit.graph.trace import call_model
from slimkit.prune import ChannelPruneConfig, prune_channels
from slimkit.task import Classification, Task


def val_scores(model: Any, loader: Any, task: Task | None = None, max_batches: int | None = None) -> dict[str, float]:
    """The ``task``'s mean ``loss`` and deciding metric (default classification: ``accuracy``) of ``model``
    (module or ONNX model) over at most ``max_batches`` batches of ``loader``."""
    task = task or Classification()
    scores = task.evaluate(model, loader, max_batches=max_batches)
    return {"loss": scores["loss"], task.metric: scores[task.metric]}


def fingerprint(model: nn.Module) -> str:
    """A short hash of a model's weights and shapes (keys the sensitivity cache)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class CostModel:
    """Estimated MACs and params of ``model`` after pruning groups by given ratios.

    ``groups`` maps each prunable group's producer layer (the key of ``ChannelPruneConfig.ratios``)
    to its unit count. A layer's cost is scaled by the kept share of every group it belongs to.
    """

    def __init__(self, model: nn.Module, example: Any, protected: tuple[str, ...] | list[str] = ()) -> None:
        graph = analyze(model, example, protected=list(protected) or None)
        self.groups: dict[str, int] = {}
        self.members: dict[str, list[str]] = {}  # layer -> producers of the groups it belongs to
        self.group_names: dict[str, str] = {}
        self.slots: dict[str, list[tuple[str, str]]] = {}  # producer -> (layer, slot kind) of the group, its own first
        self.aligns: dict[str, int] = {}  # producer -> the multiple its kept unit count must be
        for g in graph.groups:
            producer = g.producer
            self.groups[producer] = len(g)
            self.group_names[producer] = g.name
            self.slots[producer] = g.layout()
            self.aligns[producer] = g.align
            for s in g.slots:
                self.members.setdefault(s.module, [])
                if producer not in self.members[s.module]:
                    self.members[s.module].append(producer)
        self.skipped = dict(graph.skipped)
        counter = FlopCounterMode(display=False)
        with eval_mode(model), torch.no_grad(), counter:
            call_model(model, first_sample(example))
        flops = {k.partition(".")[2]: sum(v.values()) for k, v in counter.get_flop_counts().items() if "." in k}
        self.layer_macs: dict[str, float] = {}
        self.layer_params: dict[str, float] = {}
        for name, m in model.named_modules():
            if not name:
                continue
            own = sum(p.numel() for p in m.parameters(recurse=False))
            leaf = not any(True for _ in m.children())
            if leaf and name in flops:
                self.layer_macs[name] = flops[name] / 2
            if own:
                self.layer_params[name] = own
        self.base = {"macs": count_macs(model, example), "params": count_params(model)}
        self.const = {
            "macs": self.base["macs"] - sum(self.layer_macs.values()),
            "params": self.base["params"] - sum(self.layer_params.values()),
        }

    def estimate(self, ratios: dict[str, float]) -> dict[str, float]:
        """Estimated ``{"macs", "params"}`` when group ``p`` loses ``ratios[p]`` of its units."""
        out = {}
        for kind, table in (("macs", self.layer_macs), ("params", self.layer_params)):
            total = self.const[kind]
            for layer, cost in table.items():
                keep = 1.0
                for p in self.members.get(layer, ()):
                    keep *= 1.0 - ratios.get(p, 0.0)
                total += cost * keep
            out[kind] = total
        return out


class TiedCosts:
    """A :class:`CostModel` whose groups are classes of groups pruned in proportion: ``classes`` holds
    each class's producers (the first names the class) and unit count, a common divisor of its
    groups' (BERT's hidden size 384 and 12 heads a layer: 12), so that each width the class takes
    keeps every group of it a whole number of units (hidden size = heads x head size)."""

    def __init__(self, costs: CostModel, classes: list[tuple[list[str], int]]) -> None:
        self.costs = costs
        self.base = costs.base
        self.classes = {c[0]: c for c, _ in classes}
        self.groups = {c[0]: units for c, units in classes}

    def expand(self, ratios: dict[str, float]) -> dict[str, float]:
        """Per-group ratios from per-class ones."""
        return {p: r for k, r in ratios.items() for p in self.classes[k]}

    def expand_widths(self, widths: dict[str, int]) -> dict[str, int]:
        """Per-group widths from per-class ones (in the class's units)."""
        return {p: self.costs.groups[p] * w // self.groups[k] for k, w in widths.items() for p in self.classes[k]}

    def estimate(self, ratios: dict[str, float]) -> dict[str, float]:
        return self.costs.estimate(self.expand(ratios))

    def sensitivity(self, sens: Sensitivity) -> Sensitivity:
        """``sens`` per class: the losses of a class's groups add up (the allocation's model)."""
        groups = {}
        for k, members in self.classes.items():
            probes = [sens.groups[p] for p in members if p in sens.groups]
            if probes:
                base = sens.base["loss"]
                loss = [base + sum(g["loss"][i] - base for g in probes) for i in range(len(probes[0]["ratios"]))]
                groups[k] = {"units": self.groups[k], "ratios": probes[0]["ratios"], "loss": loss}
        return dataclasses.replace(sens, groups=groups)


@dataclasses.dataclass
class Sensitivity:
    """Validation loss and the task's ``metric`` with one group (or layer) pruned at several ratios.

    ``groups[p] = {"units": n, "ratios": [...], "loss": [...], metric: [...]}`` for pruning;
    ``layers`` the same for low-rank factorization (``ratios`` are rank shares kept).
    """

    key: str
    base: dict[str, float]
    groups: dict[str, dict[str, Any]]
    layers: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    metric: str = "accuracy"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sensitivity:
        return cls(**d)

    def loss_curve(self, producer: str) -> tuple[np.ndarray, np.ndarray]:
        """(ratios, loss increase) with (0, 0) prepended, made non-decreasing."""
        g = self.groups[producer]
        r = np.array([0.0, *g["ratios"]])
        loss = np.array([0.0, *(v - self.base["loss"] for v in g["loss"])])
        order = np.argsort(r)
        return r[order], np.maximum.accumulate(np.maximum(loss[order], 0.0))

    def predicted_loss(self, ratios: dict[str, float]) -> float:
        """Sum of the groups' interpolated loss increases (the allocation's objective)."""
        total = 0.0
        for p, r in ratios.items():
            if p in self.groups and r > 0:
                xs, ys = self.loss_curve(p)
                total += float(np.interp(r, xs, ys, right=ys[-1] + (r - xs[-1]) * 10))
        return total


def sensitivity_key(
    fingerprint: str,
    importance: str,
    probe_ratios: tuple[float, ...],
    data_name: str,
    lowrank: bool,
    metric: str = "accuracy",
    batches: int | None = None,
) -> str:
    """The cache key of a sensitivity analysis: the model's :func:`fingerprint` and every setting."""
    text = f"{fingerprint}|{importance}|{probe_ratios}|{data_name}|{lowrank}|{metric}|{batches}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def probe_groups(
    model: Any,
    costs: CostModel,
    prune: Callable[[Any, dict[str, float]], Any],
    scores: Callable[[Any], dict[str, float]],
    macs: Callable[[Any], float],
    probe_ratios: tuple[float, ...],
    metric: str,
    progress: Any = None,
    share: tuple[int, int] = (0, 1),
) -> dict[str, dict[str, Any]]:
    """Each group of ``costs`` pruned alone at ``probe_ratios`` (``prune(model, {producer: ratio})`` returns
    a pruned copy): its ``scores`` (``loss`` and ``metric``) and MACs. Framework-neutral. ``share``
    ``(i, n)``: only every n-th group from the i-th (one process's part of the work)."""
    mine = [(p, u) for k, (p, u) in enumerate(costs.groups.items()) if k % share[1] == share[0]]
    total = len(mine) * len(probe_ratios)
    groups: dict[str, dict[str, Any]] = {}
    done = 0
    for producer, units in mine:
        entry: dict[str, Any] = {
            "units": units,
            "group": costs.group_names[producer],
            "ratios": [],
            "loss": [],
            metric: [],
            "macs": [],
        }
        for r in probe_ratios:
            trial = prune(model, {producer: r})
            s = scores(trial)
            entry["ratios"].append(r)
            entry["loss"].append(s["loss"])
            entry[metric].append(s[metric])
            entry["macs"].append(macs(trial))
            done += 1
            if progress is not None:
                progress(done, total)
        groups[producer] = entry
    return groups


def probe_step(be: Any, model: Any, step: Any, target: Any, share: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """:func:`probe_groups` of a ``SensitivityPruneConfig`` ``step`` through a backend (its copy, prune,
    costs and validation scores), the loss and deciding metric as ``target`` reads them."""

    def prune(m: Any, ratios: dict[str, float]) -> Any:
        return be.prune(be.copy(m), step.channel_config(ratios))

    costs = be.cost_model(model, step.protected)
    return probe_groups(
        model,
        costs,
        prune,
        lambda m: target.probe_scores(be.scores(m, "val")),
        lambda m: be.costs(m)["macs"],
        tuple(step.probe_ratios),
        target.metric,
        share=share,
    )


def measure_sensitivity(
    model: nn.Module,
    data: Any = None,
    *,
    importance: str = "l2",
    probe_ratios: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9),
    protected: tuple[str, ...] | list[str] = (),
    lowrank: bool = False,
    rank_shares: tuple[float, ...] = (0.5, 0.25, 0.125),
    progress: Any = None,
    task: Task | None = None,
    max_batches: int | None = None,
    scores: Callable[[nn.Module], dict[str, float]] | None = None,
    metric: str | None = None,
    example_inputs: Any = None,
) -> Sensitivity:
    """Prune each group of ``model`` alone at ``probe_ratios``; validation loss and metric of each.

    ``data`` is a :class:`slimkit.data.Dataset` or :class:`slimkit.data.Loaders`: its ``val`` split
    is scored by ``task`` (default: the data's), at most ``max_batches`` batches of it, and its
    ``train`` batches feed data-driven importances. ``scores(model)`` (returning ``loss`` and
    ``metric``) replaces that scoring, ``example_inputs`` the data's example: with both, no data is
    needed. With ``lowrank``, each Linear/Conv2d is also factorized alone (SVD) keeping
    ``rank_shares`` of its rank. ``progress(done, total)`` is called after each probe.
    """
    import time

    from slimkit.evaluate import data_task

    if scores is None:
        task = task or data_task(data)
        metric = task.metric
        scores = functools.partial(_val_scores_of, data=data, task=task, max_batches=max_batches)
    metric = metric or "accuracy"
    example = example_inputs if example_inputs is not None else data.example
    train = None if data is None else data.train
    start = time.perf_counter()
    base = scores(model)
    costs = CostModel(model, example, protected)

    def prune(m: nn.Module, ratios: dict[str, float]) -> nn.Module:
        trial = copy.deepcopy(m)
        cfg = ChannelPruneConfig(ratio=0.0, ratios=ratios, importance=importance, protected=list(protected))
        prune_channels(trial, cfg, example, data=train, task=task)
        return trial

    groups = probe_groups(
        model, costs, prune, scores, lambda m: count_macs(m, example), tuple(probe_ratios), metric, progress
    )
    layers = lowrank_sensitivity(model, example, rank_shares, scores, metric) if lowrank else {}
    name = getattr(data, "name", "data")
    key = sensitivity_key(fingerprint(model), importance, tuple(probe_ratios), name, lowrank, metric, max_batches)
    seconds = time.perf_counter() - start
    return Sensitivity(key=key, base=base, groups=groups, layers=layers, seconds=seconds, metric=metric)


def _val_scores_of(model: nn.Module, *, data: Any, task: Task, max_batches: int | None) -> dict[str, float]:
    return val_scores(model, data.val, task, max_batches)


def lowrank_sensitivity(
    model: nn.Module,
    example: Any,
    rank_shares: tuple[float, ...],
    scores: Callable[[nn.Module], dict[str, float]],
    metric: str,
) -> dict[str, dict[str, Any]]:
    """``scores`` (validation ``loss`` and ``metric``) with each Linear / Conv2d factorized alone (SVD)
    at ``rank_shares`` of its rank."""
    from slimkit.compress import LowRankConfig
    from slimkit.core.transform import apply_

    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear | nn.Conv2d) or (isinstance(m, nn.Conv2d) and m.groups > 1):
            continue
        entry: dict[str, Any] = {"ratios": [], "loss": [], metric: [], "params": []}
        for share in rank_shares:
            trial = copy.deepcopy(model)
            apply_(trial, LowRankConfig(ratio=share, layers=(name,)), example_inputs=example)
            if count_params(trial) >= count_params(model):
                continue  # factorizing would not save parameters here
            s = scores(trial)
            entry["ratios"].append(share)
            entry["loss"].append(s["loss"])
            entry[metric].append(s[metric])
            entry["params"].append(count_params(trial))
        if entry["ratios"]:
            out[name] = entry
    return out


def allocate(
    sensitivity: Sensitivity,
    costs: CostModel,
    limits: dict[str, float],
    *,
    max_ratio: float = 0.9,
    spread: float | None = 0.25,
    step: float = 0.025,
) -> dict[str, float]:
    """Per-group ratios (keyed by producer layer) whose estimated costs meet ``limits``
    (``{"macs": n, "params": n}``, absolute) with the least predicted loss increase.

    ``spread`` keeps every ratio within that distance of the uniform ratio that meets the same
    budget: the additive loss model comes from pruning one group at a time without fine-tuning, and
    is only trusted near uniform widths (far from them it over-prunes cheap-looking layers, e.g. the
    inner convolutions of residual blocks, whose capacity fine-tuning then misses).

    Greedy first: raise, by ``step``, the ratio of the group with the lowest loss increase per share
    of the still-unmet budgets saved, until every budget is met. Then local search from the greedy
    and from the uniform solution: move ratio from one group to another while the budget holds and
    the predicted loss falls. The result is never predicted worse than uniform ratios.
    """
    ratios = {p: 0.0 for p in costs.groups if p in sensitivity.groups}
    curves = {p: sensitivity.loss_curve(p) for p in ratios}
    uni = {p: r for p, r in uniform(costs, limits, max_ratio=max_ratio).items() if p in ratios}
    lo = {p: 0.0 if spread is None else max(0.0, uni[p] - spread) for p in ratios}
    hi = {p: max_ratio if spread is None else min(max_ratio, uni[p] + spread) for p in ratios}
    ratios = dict(lo)

    def loss(p: str, r: float) -> float:
        xs, ys = curves[p]
        return float(np.interp(r, xs, ys)) if r <= xs[-1] else float(ys[-1] + (r - xs[-1]) * 10)

    now = costs.estimate(ratios)
    for _ in range(int(len(ratios) * max_ratio / step) + 2):
        unmet = [k for k, lim in limits.items() if now[k] > lim]
        if not unmet:
            break
        best, best_score, best_costs = None, math.inf, None
        for p, r in ratios.items():
            nr = min(hi[p], r + step)
            if nr <= r + 1e-9:
                continue
            trial = costs.estimate({**ratios, p: nr})
            gain = sum((now[k] - trial[k]) / costs.base[k] for k in unmet)
            if gain <= 1e-12:
                continue
            score = (loss(p, nr) - loss(p, r) + 1e-6) / gain
            if score < best_score:
                best, best_score, best_costs = p, score, trial
        if best is None:
            break
        ratios[best] = min(hi[best], ratios[best] + step)
        now = best_costs
    if any(now[k] > lim for k, lim in limits.items()):
        raise SlimkitError(
            f"cannot meet the budget by pruning: even removing {max_ratio:.0%} of every prunable group leaves "
            f"{', '.join(f'{k} {now[k]:,.0f} > {lim:,.0f}' for k, lim in limits.items() if now[k] > lim)}"
        )
    results = [_local_search(s, costs, limits, loss, lo, hi) for s in (ratios, uni)]
    return min(results, key=lambda r: sum(loss(p, v) for p, v in r.items()))


def _local_search(
    ratios: dict[str, float],
    costs: CostModel,
    limits: dict[str, float],
    loss: Any,
    lo: dict[str, float],
    hi: dict[str, float],
    iterations: int = 300,
) -> dict[str, float]:
    """Move ratio between pairs of groups while the estimated budget holds and the predicted loss falls."""
    ratios = dict(ratios)

    def feasible(r: dict[str, float]) -> bool:
        est = costs.estimate(r)
        return all(est[k] <= lim for k, lim in limits.items())

    for delta in (0.1, 0.05, 0.025, 0.0125):
        for _ in range(iterations):
            total = sum(loss(p, v) for p, v in ratios.items())
            best, best_total = None, total - 1e-9
            for i in ratios:
                if ratios[i] - delta < lo[i] - 1e-9:
                    continue
                for j in ratios:
                    if i == j or ratios[j] + delta > hi[j] + 1e-9:
                        continue
                    trial = {**ratios, i: ratios[i] - delta, j: ratios[j] + delta}
                    t = sum(loss(p, v) for p, v in trial.items())
                    if t < best_total and feasible(trial):
                        best, best_total = trial, t
            if best is None:
                break
            ratios = best
    return ratios


def uniform(costs: CostModel, limits: dict[str, float], *, max_ratio: float = 0.9) -> dict[str, float]:
    """The same ratio for every group, the smallest whose estimated costs meet ``limits`` (bisection)."""

    def meets(r: float) -> bool:
        est = costs.estimate({p: r for p in costs.groups})
        return all(est[k] <= lim for k, lim in limits.items())

    if not meets(max_ratio):
        raise SlimkitError(f"cannot meet the budget by pruning even {max_ratio:.0%} of every group")
    lo, hi = 0.0, max_ratio
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if meets(mid) else (mid, hi)
    return {p: hi for p in costs.groups}
