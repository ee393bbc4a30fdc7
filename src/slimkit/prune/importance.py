"""How much each prunable unit matters. Scores are per unit of a :class:`slimkit.graph.Group`,
aggregated over every member layer, so a residual channel is judged by all the convolutions and
norms that share it. Two ways to aggregate (``aggregate``):

- ``"normalized"``: each member's scores divided by their mean, then averaged over the members:
  every layer of the group has an equal say, however many weights it has.
- ``"sum"``: the members' scores added up; for ``l2`` the L2 norm of all the weights a unit removes
  (summed squares), for ``l1`` their summed magnitudes: layers with more weights per unit weigh
  more. This is torch-pruning's group magnitude (``MagnitudeImportance(p=2)``).

Methods: ``l1``, ``l2`` (weight magnitude), ``taylor`` (|w * dL/dw|, first-order Taylor estimate of
the loss change; needs labelled batches), ``bn_scale`` (|gamma| of the BatchNorms in the group,
magnitude where there is none), ``activation`` (mean |input| seen by the consuming layers; needs
batches), ``apoz`` (share of non-zero inputs, i.e. 1 - average percentage of zeros; needs
batches), ``random``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slimkit.core.errors import SlimkitError
from slimkit.core.model import eval_mode
from slimkit.graph import DependencyGraph, Group, pruner_for

METHODS = ("l1", "l2", "taylor", "bn_scale", "activation", "apoz", "random")
NEEDS_DATA = ("taylor", "activation", "apoz")
AGGREGATES = ("normalized", "sum")


def _unit_scores(group: Group, per_slot: dict[int, torch.Tensor], aggregate: str, power: int = 1) -> np.ndarray:
    """Each unit's score over the member slots: the average of each slot's mean-normalised score
    (``"normalized"``), or ``(sum of score ** power) ** (1 / power)`` over every index the unit
    removes (``"sum"``; ``power=2`` turns per-row L2 norms into the norm of all of them)."""
    total = np.zeros(len(group))
    for k, raw in per_slot.items():
        r = raw.double().numpy()
        offsets = group.offsets[k]
        if aggregate == "sum":
            total += np.add.reduceat(r[group.index[k]] ** power, offsets[:-1])
        else:
            r = r / (r.mean() + 1e-12)
            total += np.add.reduceat(r[group.index[k]], offsets[:-1]) / np.diff(offsets)  # mean per unit
    if aggregate == "sum":
        return total ** (1 / power)
    return total / max(1, len(per_slot))


def _weight_scores(model: nn.Module, group: Group, method: str, grads: bool, aggregate: str) -> np.ndarray:
    def get(p: nn.Parameter) -> torch.Tensor:
        if grads:
            return (p.detach() * p.grad).abs() if p.grad is not None else torch.zeros_like(p)
        return p.detach()

    per_slot = {}
    for k, slot in enumerate(group.slots):
        layer = model.get_submodule(slot.module)
        rows = pruner_for(layer).rows(layer, slot.kind, get)
        per_slot[k] = rows.abs().sum(1) if method in ("l1", "taylor") else rows.pow(2).sum(1).sqrt()
    return _unit_scores(group, per_slot, aggregate, power=2 if method == "l2" else 1)


def _bn_scores(model: nn.Module, group: Group, aggregate: str) -> np.ndarray:
    per_slot = {}
    for k, slot in enumerate(group.slots):
        m = model.get_submodule(slot.module)
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) and m.weight is not None:
            per_slot[k] = m.weight.detach().abs()
    return (
        _unit_scores(group, per_slot, aggregate)
        if per_slot
        else _weight_scores(model, group, "l2", grads=False, aggregate=aggregate)
    )


def _input_statistics(model: nn.Module, graph: DependencyGraph, batches: Iterable, method: str) -> dict:
    """Per consuming layer: mean |x| (activation) or share of non-zeros (apoz) per input index."""
    stats: dict[str, list[torch.Tensor]] = {}
    readers = {s.module for g in graph.groups for s in g.slots if s.kind == "in"}

    def hook(name: str, channel_dim: int):  # noqa: ANN202
        def fn(_m: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            x = x.movedim(channel_dim, -1).reshape(-1, x.shape[channel_dim])
            stat = x.abs().mean(0) if method == "activation" else (x != 0).float().mean(0)
            stats.setdefault(name, []).append(stat)

        return fn

    handles = []
    for name in readers:
        m = model.get_submodule(name)
        handles.append(m.register_forward_pre_hook(hook(name, 1 if isinstance(m, nn.Conv1d | nn.Conv2d) else -1)))
    try:
        with eval_mode(model), torch.no_grad():
            for x, _ in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return {k: torch.stack(v).mean(0) for k, v in stats.items()}


def _taylor_gradients(model: nn.Module, batches: Iterable) -> None:
    model.zero_grad(set_to_none=True)
    with eval_mode(model):
        for x, y in batches:
            F.cross_entropy(model(x), y).backward()


def score(
    model: nn.Module,
    graph: DependencyGraph,
    method: str = "l2",
    batches: list | None = None,
    seed: int = 0,
    aggregate: str = "normalized",
) -> list[np.ndarray]:
    """One array of unit scores per group of ``graph`` (higher = more important)."""
    if method not in METHODS:
        raise SlimkitError(f"unknown importance {method!r}; choose one of {', '.join(METHODS)}")
    if aggregate not in AGGREGATES:
        raise SlimkitError(f"unknown aggregate {aggregate!r}; choose one of {', '.join(AGGREGATES)}")
    if method in NEEDS_DATA and not batches:
        raise SlimkitError(f"importance {method!r} needs data: pass a few (x, y) batches (data=...)")
    if method == "random":
        rng = np.random.default_rng(seed)
        return [rng.random(len(g)) for g in graph.groups]
    if method == "taylor":
        _taylor_gradients(model, batches)
        try:
            return [_weight_scores(model, g, method, grads=True, aggregate=aggregate) for g in graph.groups]
        finally:
            model.zero_grad(set_to_none=True)
    if method in ("activation", "apoz"):
        stats = _input_statistics(model, graph, batches, method)
        out = []
        for g in graph.groups:
            per_slot = {k: stats[s.module] for k, s in enumerate(g.slots) if s.kind == "in" and s.module in stats}
            out.append(
                _unit_scores(g, per_slot, aggregate)
                if per_slot
                else _weight_scores(model, g, "l2", grads=False, aggregate=aggregate)
            )
        return out
    if method == "bn_scale":
        return [_bn_scores(model, g, aggregate) for g in graph.groups]
    return [_weight_scores(model, g, method, grads=False, aggregate=aggregate) for g in graph.groups]
