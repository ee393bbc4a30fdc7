"""The Keras handlers of slimkit's transform configs: ``apply_(keras_model, config)`` runs them.

``ChannelPruneConfig`` (``ratio`` / ``ratios`` / ``target_macs`` / ``target_params``, importance l1
or l2), ``FoldConfig`` and ``RemoveLayersConfig`` (names and Keras class names, ``repair``). Each
returns a new model and its record; the given model is never changed. Imported by
:func:`slimkit.core.transform.apply_` on the first Keras model.

Example::

    import slimkit as sk

    small = sk.apply_(keras_model, sk.prune.ChannelPruneConfig(target_macs=0.5))
    sk.records(small)[-1].details["units"]  # {"conv1": [16, 8], ...}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from slimkit.core.errors import SlimkitError
from slimkit.core.transform import TransformRecord, register_transform
from slimkit.keras._graph import Graph
from slimkit.keras.cost import KerasCostModel, count_macs, count_params, group_widths
from slimkit.keras.prune import IMPORTANCE, prune_units
from slimkit.keras.simplify import fold_batchnorm, remove_layers
from slimkit.prune import ChannelPruneConfig
from slimkit.simplify import FoldConfig, RemoveLayersConfig

__all__ = ["budget_ratios"]


def budget_ratios(
    model: Any, limits: dict[str, float], protected: Sequence[str], importance: str, round_to: int | str
) -> dict[str, float]:
    """Uniform ratios whose pruned model meets ``limits`` (:func:`slimkit.optimize.pipeline.fit_widths`)."""
    from slimkit.optimize.pipeline import fit_widths

    costs = KerasCostModel(model, tuple(protected))
    if not costs.groups:
        raise SlimkitError(f"{model.name} has no prunable unit group (all feed the output, are protected or blocked)")

    def measure(ratios: dict[str, float]) -> dict[str, float]:
        trial = prune_units(model, ratios, importance).model if ratios else model
        return {"macs": count_macs(trial), "params": count_params(trial)}

    found = fit_widths(costs, limits, measure, round_to=round_to)
    if found is None:
        raise SlimkitError(f"cannot meet the budget {limits} by pruning {model.name}'s unit groups")
    widths = found[0]
    return {p: (n - widths[p]) / n for p, n in costs.groups.items() if widths[p] < n}


@register_transform(ChannelPruneConfig, "keras")
def _prune(model: Any, cfg: ChannelPruneConfig, example_inputs: Any = None) -> tuple[Any, TransformRecord]:
    if cfg.importance not in IMPORTANCE:
        raise SlimkitError(
            f"importance {cfg.importance!r} is not available for Keras models; choose {' or '.join(IMPORTANCE)}"
        )
    if cfg.global_ranking:
        raise SlimkitError("global ranking is not available for Keras models; give ratio, ratios or a target")
    protected = tuple(cfg.protected)
    if cfg.target_macs is not None or cfg.target_params is not None:
        limits = {}
        if cfg.target_macs is not None:
            limits["macs"] = cfg.target_macs * count_macs(model)
        if cfg.target_params is not None:
            limits["params"] = cfg.target_params * count_params(model)
        ratios = budget_ratios(model, limits, protected, cfg.importance, cfg.round_to)
    elif cfg.ratios:
        ratios = dict(cfg.ratios)
    else:
        ratios = dict.fromkeys(group_widths(model, protected), cfg.ratio)
    small, record = prune_units(model, ratios, importance=cfg.importance)
    for name, why in KerasCostModel(model, protected).skipped.items():  # left alone, with the reason
        record.skipped.setdefault(name, why)
    return small, record


@register_transform(FoldConfig, "keras")
def _fold(model: Any, cfg: FoldConfig, example_inputs: Any = None) -> tuple[Any, TransformRecord]:
    return tuple(fold_batchnorm(model))  # type: ignore[return-value]


@register_transform(RemoveLayersConfig, "keras")
def _remove(model: Any, cfg: RemoveLayersConfig, example_inputs: Any = None) -> tuple[Any, TransformRecord]:
    calls = Graph(model).calls
    names = list(cfg.names or [])
    for kind in cfg.types or []:
        found = [c.name for c in calls if c.kind == kind]
        if not found:
            kinds = sorted({c.kind for c in calls})
            raise SlimkitError(f"{model.name} has no {kind} layer; its layer types: {', '.join(kinds)}")
        names += found
    if not names:
        raise SlimkitError("RemoveLayersConfig needs names or types (Keras class names, e.g. MaxPooling2D)")
    return tuple(remove_layers(model, names, repair=cfg.repair))  # type: ignore[return-value]
