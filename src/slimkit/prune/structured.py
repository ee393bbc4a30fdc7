"""Structured pruning that physically removes channels, neurons, heads and hidden units.

>>> import torch, slimkit as sk
>>> from slimkit.prune import ChannelPruneConfig
>>> model = sk.zoo.create("seed_cnn")
>>> x = torch.zeros(2, 1, 28, 28)
>>> _ = sk.apply_(model, ChannelPruneConfig(ratios={"conv1": 0.5}, ratio=0.0, importance="l1"), example_inputs=x)
>>> model.conv1.out_channels, model.conv2.in_channels   # the brief's Conv1 64 -> 32, Conv2 follows
(32, 32)
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import itertools
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.compress.factor import refit_from_gram
from slimkit.core.errors import SlimkitError, first_line
from slimkit.core.hardware import simd_channels
from slimkit.core.model import Snapshot, eval_mode, transaction
from slimkit.core.surgery import set_module_attr, tie_parameter
from slimkit.core.transform import (
    Config,
    TransformRecord,
    add_record,
    register_config,
    register_transform,
    select,
)
from slimkit.evaluate.cost import count_macs, count_params
from slimkit.graph import DependencyGraph, Group, analyze, first_sample, map_batch, pruner_for
from slimkit.graph.trace import call_model, flat_tensors
from slimkit.prune import importance as imp
from slimkit.prune import mha
from slimkit.task import Task, get_task
from slimkit.train import reestimate_bn


@register_config
@dataclasses.dataclass(frozen=True, kw_only=True)
class ChannelPruneConfig(Config):
    """What to remove and how to choose it.

    - ``ratio``: share of units (channels, neurons, heads, hidden units) removed from every group;
      ``ratios`` overrides it per layer (``{"conv1": 0.5}`` or ``{"re:layer3\\..*": 0.7}``), naming
      the layer that produces the group's units.
    - ``global_ranking``: rank units of all groups together (non-uniform widths) instead of per group.
    - ``target_macs`` / ``target_params``: keep this share of the original MACs / parameters
      (e.g. 0.25 = 4x fewer); the global ratio is searched to meet it (overrides ``ratio``).
    - ``importance``: see :mod:`slimkit.prune.importance`; ``protected`` layers are never touched.
    - ``aggregate``: how a group's members' scores combine: ``"normalized"`` (each layer an equal
      say) or ``"sum"`` (the norm of all the weights a unit removes); see the importance module.
    - ``round_to``: kept unit counts are multiples of this (e.g. 8 for SIMD-friendly widths);
      ``"auto"`` uses the channel block of this CPU's ONNX Runtime kernels (16 with AVX-512, else 8),
      below which pruning saves MACs on paper but not time.
    - ``max_ratio``: never remove more than this share of any group.
    - ``recalibrate_bn``: when data is given, re-estimate BatchNorm statistics on
      ``calibration_batches`` batches after pruning (the layers after a pruned one see shifted
      activations; this recovers much of the accuracy before any fine-tuning).
    - ``refit``: every ``nn.Linear`` that loses inputs (an FFN's output layer, an attention output
      projection) is refitted by least squares so that its outputs on calibration inputs stay as
      close as possible to the original's: the removed units' contribution is predicted from the
      kept ones (:func:`slimkit.compress.factor.refit_from_gram`). Calibration inputs are the
      ``calibration_batches`` batches of ``data`` when given, else ``example_inputs`` (then pass a
      few hundred samples or tokens). Memory: one (inputs + 1)² float64 matrix per such layer.
    """

    ratio: float = 0.5
    ratios: dict[str, float] = dataclasses.field(default_factory=dict)
    global_ranking: bool = False
    target_macs: float | None = None
    target_params: float | None = None
    importance: str = "l2"
    aggregate: str = "normalized"
    protected: list[str] = dataclasses.field(default_factory=list)
    round_to: int | str = 1
    max_ratio: float = 0.9
    calibration_batches: int = 4
    recalibrate_bn: bool = True
    refit: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name, r in [("ratio", self.ratio), ("max_ratio", self.max_ratio), *self.ratios.items()]:
            if not 0.0 <= r < 1.0:
                raise SlimkitError(f"pruning ratio {name}={r} must be in [0, 1)")
        for name, t in (("target_macs", self.target_macs), ("target_params", self.target_params)):
            if t is not None and not 0.0 < t <= 1.0:
                raise SlimkitError(f"{name}={t} must be a share of the original in (0, 1]")
        if self.round_to != "auto" and not (isinstance(self.round_to, int) and self.round_to >= 1):
            raise SlimkitError(f"round_to must be an integer >= 1 or 'auto', got {self.round_to!r}")
        if self.importance not in imp.METHODS:
            raise SlimkitError(f"unknown importance {self.importance!r}; choose one of {', '.join(imp.METHODS)}")
        if self.aggregate not in imp.AGGREGATES:
            raise SlimkitError(f"unknown aggregate {self.aggregate!r}; choose one of {', '.join(imp.AGGREGATES)}")

    @property
    def block(self) -> int:
        """``round_to`` as a number (``"auto"`` resolved for this CPU)."""
        return simd_channels() if self.round_to == "auto" else int(self.round_to)


def _keep_count(n: int, ratio: float, round_to: int) -> int:
    keep = max(1, n - math.floor(ratio * n + 1e-9))
    if round_to > 1 and n >= round_to:
        keep = min(n, max(round_to, math.ceil(keep / round_to) * round_to))
    return keep


def _group_ratio(model: nn.Module, group: Group, config: ChannelPruneConfig, named: dict[str, float]) -> float:
    producers = [s.module for s in group.slots if s.producer]
    for module in producers:
        if module in named:
            return named[module]
    return config.ratio


def config_units(model: nn.Module, graph: DependencyGraph) -> dict[str, int]:
    """For a ``transformers`` model: the unit count of the config field(s) that size each group, keyed
    by producer (:func:`slimkit.io.pretrained.config_ties`; BERT's hidden size and heads: the head
    count), so that one ratio, rounded to it, keeps the widths a config describes. Else empty."""
    from slimkit.io.pretrained import config_ties, find_pretrained

    if find_pretrained(model) is None:
        return {}
    ties = config_ties(
        model,
        {g.producer: len(g) for g in graph.groups},
        {g.producer: g.layout() for g in graph.groups},
        {g.producer: g.align for g in graph.groups},
    )
    if ties is None:
        return {}
    # a class of one unit (MPT's heads, indivisible) cannot be pruned describably: pruned as asked
    return {p: ties.units[k] for k, members in ties.classes.items() if ties.units[k] > 1 for p in members}


def plan(
    model: nn.Module,
    graph: DependencyGraph,
    scores: list[np.ndarray],
    config: ChannelPruneConfig,
    ratio: float,
    units: dict[str, int] | None = None,
) -> list[np.ndarray]:
    """Unit indices to remove from each group, at ``ratio`` (per group or globally ranked); a group
    in ``units`` (:func:`config_units`) without a ratio of its own is pruned by ``ratio`` rounded to
    whole ones of them."""
    named: dict[str, float] = {}
    for pattern, r in config.ratios.items():
        for name in select(model, [pattern]):
            named[name] = r
    cfg = dataclasses.replace(config, ratio=ratio)
    blocks = [math.lcm(config.block, g.align) for g in graph.groups]  # kept counts are multiples of these
    if not config.global_ranking:
        out = []
        for group, s, block in zip(graph.groups, scores, blocks, strict=True):
            r = _group_ratio(model, group, cfg, named)
            own = any(s.producer and s.module in named for s in group.slots)
            if group.producer in (units or {}) and not own:
                r = round(r * units[group.producer]) / units[group.producer]
            keep = _keep_count(len(group), r, block)
            out.append(np.sort(np.argsort(s, kind="stable")[: len(group) - keep]))
        return out
    caps = [len(g) - _keep_count(len(g), config.max_ratio, b) for g, b in zip(graph.groups, blocks, strict=True)]
    chosen: dict[int, list[int]] = collections.defaultdict(list)
    if config.importance == "output":
        # scores are output energies, comparable across groups: remove the least energy per parameter
        # until ``ratio`` of the pooled parameters is gone; groups no Linear reads keep the per-group ratio
        readers = set(imp.linear_readers(model, graph))
        pooled = [any(s.kind == "in" and s.module in readers for s in g.slots) for g in graph.groups]
        costs = [_unit_params(model, g) if p else None for g, p in zip(graph.groups, pooled, strict=True)]
        pool = [
            (float(scores[g][u] / cs[u]), g, u) for g, cs in enumerate(costs) if cs is not None for u in range(len(cs))
        ]
        budget = ratio * sum(float(c.sum()) for c in costs if c is not None)
        for g, group in enumerate(graph.groups):
            if not pooled[g]:
                keep = _keep_count(len(group), ratio, blocks[g])
                chosen[g] = list(np.argsort(scores[g], kind="stable")[: len(group) - keep])
    else:  # normalise scores within each group, remove the lowest units overall
        pool = [(float(v) / (float(np.mean(s)) + 1e-12), g, u) for g, s in enumerate(scores) for u, v in enumerate(s)]
        budget = round(ratio * len(pool))
        costs = None
    pool.sort()
    for _, g, u in pool:
        if budget <= 0:
            break
        if len(chosen[g]) < caps[g]:
            chosen[g].append(u)
            budget -= 1 if costs is None else costs[g][u]
    out = []
    for g, group in enumerate(graph.groups):
        n = len(group)
        remove = chosen[g]
        keep = _keep_count(n, len(remove) / n, blocks[g])  # round the kept width
        order = sorted(remove, key=lambda u: scores[g][u])
        out.append(np.sort(np.array(order[: n - keep], dtype=np.int64)))
    return out


def _unit_params(model: nn.Module, group: Group) -> np.ndarray:
    """Parameters each unit of ``group`` removes (from every member layer)."""
    total = np.zeros(len(group))
    for k, slot in enumerate(group.slots):
        layer = model.get_submodule(slot.module)
        per_index = sum(p.numel() // p.shape[d] for p, d in pruner_for(layer).indexed(layer, slot.kind))
        total += per_index * np.diff(group.offsets[k])
    return np.maximum(total, 1)


def remove_units(model: nn.Module, graph: DependencyGraph, removal: list[np.ndarray]) -> dict[str, str]:
    """Physically remove the chosen units; returns ``{group name: "64 -> 32"}`` for changed groups."""
    drop: dict[tuple[str, str], list[np.ndarray]] = collections.defaultdict(list)
    changes = {}
    for group, units in zip(graph.groups, removal, strict=True):
        if len(units) == 0:
            continue
        changes[group.name] = f"{len(group)} -> {len(group) - len(units)}"
        for slot, idx in zip(group.slots, group.indices(units), strict=True):
            drop[(slot.module, slot.kind)].append(idx)
    per_module: dict[str, dict[str, torch.Tensor]] = collections.defaultdict(dict)
    for (module, kind), gone in drop.items():
        keep = np.ones(graph.slots[(module, kind)].size, dtype=bool)
        keep[np.concatenate(gone)] = False
        per_module[module][kind] = torch.from_numpy(np.flatnonzero(keep))
    for module, keep in per_module.items():
        layer = model.get_submodule(module)
        pruner_for(layer).rebuild(model, module, layer, keep)
    if graph.bindings and changes:  # attributes that count kept units (e.g. the size of fused q/k/v pieces)
        removed = np.concatenate([g.labels[u] for g, u in zip(graph.groups, removal, strict=True)])
        for layer, attr, components in graph.bindings:
            kept = int((~np.isin(components, removed)).sum())
            if kept != getattr(model.get_submodule(layer), attr):
                set_module_attr(model, layer, attr, kept)
    for (source, source_attr), *others in graph.shared:  # rebuilt layers hold copies: tie them again
        if any(m in per_module for m, _ in [(source, source_attr), *others]):
            for module, attr in others:
                tie_parameter(model, module, attr, f"{source}.{source_attr}" if source else source_attr)
    return changes


def _output_shapes(model: nn.Module, batches: list[Any]) -> list[list[tuple[int, ...]]]:
    """Shapes of every output tensor on each of ``batches``."""
    with eval_mode(model), torch.no_grad():
        return [[tuple(t.shape) for t in flat_tensors(call_model(model, b))] for b in batches]


def _run_error(model: nn.Module, batches: list[Any], want: list[list[tuple[int, ...]]]) -> str | None:
    """None if the model runs on ``batches`` with the output shapes ``want``, else what went wrong."""
    try:
        got = _output_shapes(model, batches)
    except Exception as exc:  # noqa: BLE001  (any failure of the pruned model is the answer)
        return f"it no longer runs ({first_line(exc)[:200]})"
    return None if got == want else f"output shapes change from {want[0]} to {got[0]}"


def remove_checked(
    model: nn.Module, graph: DependencyGraph, removal: list[np.ndarray], example: Any
) -> tuple[dict[str, str], dict[str, str]]:
    """:func:`remove_units`, then run the pruned model on the example's first sample (as the
    analysis did) and on two samples.

    A group whose removal makes the model fail or change an output shape is put back and returned
    as skipped (``{producer layer: reason}``); the rest stays pruned. Returns ``(changes, skipped)``.
    """
    sample = first_sample(example)
    batches = [sample, map_batch(sample, lambda t: torch.cat([t, t]))]
    want = [graph.output_shapes, *_output_shapes(model, batches[1:])]
    snap = Snapshot(model, copy_weights=False)  # surgery replaces parameters, never edits them
    changes = remove_units(model, graph, removal)
    if _run_error(model, batches, want) is None:
        return changes, {}
    snap.restore()
    nothing = np.zeros(0, dtype=np.int64)
    broken: dict[int, str] = {}
    for g, units in enumerate(removal):  # which groups break the model on their own
        if len(units):
            remove_units(model, graph, [u if k == g else nothing for k, u in enumerate(removal)])
            error = _run_error(model, batches, want)
            snap.restore()
            if error:
                broken[g] = error
    changes = remove_units(model, graph, [nothing if g in broken else u for g, u in enumerate(removal)])
    error = _run_error(model, batches, want)
    if error:
        snap.restore()
        raise SlimkitError(f"pruning breaks the model together although each group alone does not: {error}")
    skipped = {}
    for g, why in broken.items():
        producer = next(s.module for s in graph.groups[g].slots if s.producer)
        skipped[producer] = f"removing its units breaks the model, so it was kept: {why}"
    return changes, skipped


def _refit(
    model: nn.Module,
    graph: DependencyGraph,
    removal: list[np.ndarray],
    changes: dict[str, str],
    grams: dict[str, torch.Tensor],
    originals: dict[str, tuple[torch.Tensor, torch.Tensor | None]],
) -> list[str]:
    """Refit every pruned Linear with a Gram matrix to its original outputs; returns their names."""
    gone: dict[tuple[str, str], list[np.ndarray]] = collections.defaultdict(list)
    for group, units in zip(graph.groups, removal, strict=True):
        if group.name in changes:  # applied (not put back)
            for slot, idx in zip(group.slots, group.indices(units), strict=True):
                if slot.module in grams:
                    gone[(slot.module, slot.kind)].append(idx)
    tied = {module for owners in graph.shared for module, _ in owners}  # refitting would change the other owner
    done = []
    for name in sorted({m for m, kind in gone if kind == "in"} - tied):
        weight, bias = originals[name]  # surgery replaced the parameters: these are the original ones
        keep = np.setdiff1d(np.arange(weight.shape[1]), np.concatenate(gone[(name, "in")]))
        new_w, new_b = refit_from_gram(weight, bias, grams[name], torch.from_numpy(keep), ridge=1e-3)
        rows = torch.from_numpy(np.setdiff1d(np.arange(weight.shape[0]), np.concatenate(gone.get((name, "out"), [[]]))))
        layer = model.get_submodule(name)
        if bool(torch.isfinite(new_w).all()) and layer.weight.shape == (len(rows), len(keep)):
            with torch.no_grad():  # the layer may have lost outputs too (a hidden layer): keep its rows
                layer.weight.copy_(new_w[rows])
                if new_b is not None:
                    layer.bias.copy_(new_b[rows])
            done.append(name)
    return done


def prune_channels(
    model: nn.Module,
    config: ChannelPruneConfig,
    example_inputs: Any,
    data: Any = None,
    *,
    task: Task | str | None = None,
) -> TransformRecord:
    """Prune ``model`` in place; ``data`` (an iterable of batches that ``task`` reads, default
    classification's ``(x, y)``) feeds data-driven importances, calibration and BatchNorm statistics.

    Returns the :class:`TransformRecord`, which is also attached to the model (``slimkit.records``).
    """
    with transaction(model):  # a failure leaves the model exactly as it was
        record = _prune(model, config, example_inputs, data, get_task(task))
        add_record(model, record)
    return record


def _prune(model: nn.Module, config: ChannelPruneConfig, example_inputs: Any, data: Any, task: Task) -> TransformRecord:
    unconverted = mha.convert(model)  # nn.MultiheadAttention -> an equivalent block with prunable heads
    with eval_mode(model):  # one switch for the analysis, scoring and checks (each would switch every module)
        graph = analyze(model, example_inputs, protected=config.protected)
        graph.skipped.update(unconverted)
        batches = None
        if data is not None:
            batches = list(itertools.islice(data, config.calibration_batches))
        grams = {}
        if config.importance == "output" or config.refit:  # calibration: the data's inputs, else the example
            inputs = [task.inputs(b) for b in batches] if batches else [example_inputs]
            grams = imp.linear_input_grams(model, imp.linear_readers(model, graph), inputs)
        originals = {n: (model.get_submodule(n).weight, model.get_submodule(n).bias) for n in grams}
        scores = imp.score(
            model,
            graph,
            config.importance,
            batches,
            seed=config.seed,
            aggregate=config.aggregate,
            grams=grams,
            task=task,
        )
        params = count_params(model)
        ratio = config.ratio
        targets = config.target_macs is not None or config.target_params is not None
        # one ratio for every layer keeps widths a transformers config describes, once rounded to its units
        units = config_units(model, graph) if (ratio > 0 or targets) and not config.global_ranking else {}
        if targets:
            ratio = _search_ratio(model, graph, scores, config, example_inputs, units)
        removal = plan(model, graph, scores, config, ratio, units)
        changes, broken = remove_checked(model, graph, removal, example_inputs)
        graph.skipped.update(broken)
        refitted = _refit(model, graph, removal, changes, grams, originals) if config.refit else []
    recalibrated = bool(changes and batches and config.recalibrate_bn)
    if recalibrated:
        reestimate_bn(model, batches, task=task)
    return TransformRecord(
        transform="ChannelPruneConfig",
        config=config.to_dict(),
        changed=sorted({s.module for g in graph.groups if g.name in changes for s in g.slots}),
        skipped=graph.skipped,
        details={
            "groups": changes,
            "ratio": ratio,
            "round_to": config.block,
            "bn_recalibrated": recalibrated,
            "refitted": refitted,
            "params": {"before": params, "after": count_params(model)},
        },
    )


def _search_ratio(
    model: nn.Module,
    graph: DependencyGraph,
    scores: list[np.ndarray],
    config: ChannelPruneConfig,
    example: torch.Tensor,
    units: dict[str, int],
) -> float:
    """Smallest global ratio whose pruned copy meets the MACs / params target (bisection)."""
    before = {"macs": count_macs(model, example), "params": count_params(model)}

    def meets(r: float) -> bool:
        trial = copy.deepcopy(model)
        remove_units(trial, graph, plan(trial, graph, scores, config, r, units))
        ok = config.target_macs is None or count_macs(trial, example) <= config.target_macs * before["macs"]
        return ok and (config.target_params is None or count_params(trial) <= config.target_params * before["params"])

    lo, hi = 0.0, config.max_ratio
    if not meets(hi):
        raise SlimkitError(
            f"cannot reach the target by pruning: even removing {hi:.0%} of every prunable group is not enough "
            "(prunable layers may be few; see the skipped layers, or raise max_ratio)"
        )
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if meets(mid) else (mid, hi)
    return hi


@register_transform(ChannelPruneConfig)
def _apply(model: nn.Module, config: ChannelPruneConfig, example_inputs: torch.Tensor | None) -> TransformRecord:
    if example_inputs is None:
        raise SlimkitError("structured pruning traces the model: pass example_inputs (an input batch)")
    if config.importance in imp.NEEDS_DATA:
        raise SlimkitError(
            f"importance {config.importance!r} needs labelled batches: call "
            "slimkit.prune.prune_channels(model, config, example_inputs, data=loader)"
        )
    return _prune(model, config, example_inputs, None, get_task())
