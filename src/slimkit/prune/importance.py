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
batches), ``output`` (a unit's contribution to the outputs of the ``nn.Linear`` layers that read
it, ``sum ||W[:, u] x_u||^2`` over calibration inputs: activation-aware and in the same units for
every group, so a global ranking can weigh an attention head against FFN units per parameter
removed; groups that no Linear reads fall back to ``l2``), ``random``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.compress.factor import input_gram
from slimkit.core.errors import SlimkitError
from slimkit.core.model import eval_mode
from slimkit.graph import DependencyGraph, Group, pruner_for
from slimkit.graph.trace import call_model
from slimkit.task import Classification, Task

METHODS = ("l1", "l2", "taylor", "bn_scale", "activation", "apoz", "output", "random")
NEEDS_DATA = ("taylor", "activation", "apoz")
AGGREGATES = ("normalized", "sum")


def _unit_scores(group: Group, per_slot: dict[int, torch.Tensor], aggregate: str, power: int = 1) -> np.ndarray:
    """Each unit's score over the member slots: the average of each slot's mean-normalised score
    (``"normalized"``), or ``(sum of score ** power) ** (1 / power)`` over every index the unit
    removes (``"sum"``; ``power=2`` turns per-row L2 norms into the norm of all of them)."""
    total = np.zeros(len(group))
    for k, raw in per_slot.items():
        r = raw.detach().double().cpu().numpy()
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
        l1 = method in ("l1", "taylor")
        norms = pruner_for(layer).row_norms(layer, slot.kind, get, 1 if l1 else 2)
        per_slot[k] = norms if l1 else norms.sqrt()
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
            for inputs in batches:
                call_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return {k: torch.stack(v).mean(0) for k, v in stats.items()}


MAX_GRAM_INPUTS = 8192  # a wider Linear gets no Gram matrix: it alone would take 512 MB


def linear_readers(model: nn.Module, graph: DependencyGraph) -> list[str]:
    """The ``nn.Linear`` layers whose inputs some group prunes (and narrow enough for a Gram matrix)."""
    names = {s.module for g in graph.groups for s in g.slots if s.kind == "in"}
    return sorted(
        n for n in names if isinstance(m := model.get_submodule(n), nn.Linear) and m.in_features <= MAX_GRAM_INPUTS
    )


def linear_input_grams(model: nn.Module, names: list[str], batches: Iterable) -> dict[str, torch.Tensor]:
    """Gram matrix ``[x, 1]^T [x, 1]`` of the inputs of each Linear ``names`` over ``batches`` of model
    inputs; memory: one (inputs + 1)^2 float64 matrix per layer."""
    grams: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        def fn(m: nn.Linear, args: tuple) -> None:
            gram = input_gram(args[0].reshape(-1, m.in_features))
            grams[name] = grams[name] + gram if name in grams else gram

        return fn

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        with eval_mode(model), torch.no_grad():
            for inputs in batches:
                call_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return grams


def _output_scores(model: nn.Module, group: Group, grams: dict[str, torch.Tensor]) -> np.ndarray | None:
    """Each unit's ``sum ||W[:, u] x_u||^2`` over the Linear layers that read it (None: none has a Gram)."""
    total, found = np.zeros(len(group)), False
    for k, slot in enumerate(group.slots):
        gram = grams.get(slot.module) if slot.kind == "in" else None
        if gram is None:
            continue
        found, gram = True, gram.cpu()
        w = model.get_submodule(slot.module).weight.detach().double().cpu()
        index, offsets = group.index[k], group.offsets[k]
        if np.all(np.diff(offsets) == 1):  # one input per unit: ||W[:, j]||^2 E[x_j^2]
            j = torch.from_numpy(index)
            total += (w[:, j].pow(2).sum(0) * gram.diagonal()[j]).numpy()
            continue
        for u in range(len(group)):  # a block per unit (an attention head): trace(W_u G_uu W_u^T)
            j = torch.from_numpy(index[offsets[u] : offsets[u + 1]])
            total[u] += float(((w[:, j].T @ w[:, j]) * gram[j][:, j]).sum())
    return total if found else None


def _taylor_gradients(model: nn.Module, batches: Iterable, task: Task) -> None:
    model.zero_grad(set_to_none=True)
    with eval_mode(model):
        for batch in batches:
            inputs, targets = task.split(batch)
            task.loss(task.predict(model, inputs), task.reference_targets(inputs, targets)).backward()


def score(
    model: nn.Module,
    graph: DependencyGraph,
    method: str = "l2",
    batches: list | None = None,
    seed: int = 0,
    aggregate: str = "normalized",
    grams: dict[str, torch.Tensor] | None = None,
    task: Task | None = None,
) -> list[np.ndarray]:
    """One array of unit scores per group of ``graph`` (higher = more important). ``batches`` are data
    batches that ``task`` (default classification) reads: their inputs feed the activation statistics,
    inputs and targets the ``taylor`` gradients; ``output`` uses ``grams`` (:func:`linear_input_grams`)
    or computes them on ``batches``."""
    if method not in METHODS:
        raise SlimkitError(f"unknown importance {method!r}; choose one of {', '.join(METHODS)}")
    if aggregate not in AGGREGATES:
        raise SlimkitError(f"unknown aggregate {aggregate!r}; choose one of {', '.join(AGGREGATES)}")
    if method in NEEDS_DATA and not batches:
        raise SlimkitError(f"importance {method!r} needs data: pass a few (x, y) batches (data=...)")
    if method == "random":
        rng = np.random.default_rng(seed)
        return [rng.random(len(g)) for g in graph.groups]
    task = task or Classification()
    if method == "taylor":
        _taylor_gradients(model, batches, task)
        try:
            return [_weight_scores(model, g, method, grads=True, aggregate=aggregate) for g in graph.groups]
        finally:
            model.zero_grad(set_to_none=True)
    if method in ("activation", "apoz"):
        stats = _input_statistics(model, graph, [task.inputs(b) for b in batches], method)
        out = []
        for g in graph.groups:
            per_slot = {k: stats[s.module] for k, s in enumerate(g.slots) if s.kind == "in" and s.module in stats}
            out.append(
                _unit_scores(g, per_slot, aggregate)
                if per_slot
                else _weight_scores(model, g, "l2", grads=False, aggregate=aggregate)
            )
        return out
    if method == "output":
        if grams is None:
            grams = linear_input_grams(model, linear_readers(model, graph), [task.inputs(b) for b in batches or []])
        scores = [_output_scores(model, g, grams) for g in graph.groups]
        return [
            _weight_scores(model, g, "l2", grads=False, aggregate=aggregate) if s is None else s
            for g, s in zip(graph.groups, scores, strict=True)
        ]
    if method == "bn_scale":
        return [_bn_scores(model, g, aggregate) for g in graph.groups]
    return [_weight_scores(model, g, method, grads=False, aggregate=aggregate) for g in graph.groups]
