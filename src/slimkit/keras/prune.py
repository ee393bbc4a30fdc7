"""Structured pruning and activation-PCA width reduction of Keras models, by native rebuilding.

:func:`prune_units` removes Conv filters and Dense units by weight importance; :func:`pca_dense`
narrows a Dense layer to the units that best span its activations on calibration data and refits
the next Dense by least squares (the brief's "Dense 1024 -> 512 by PCA", done soundly: the same
math as :mod:`slimkit.compress.lowrank` method ``"pca"``). Both return a new model; coupled layers
(BatchNormalization, Flatten -> Dense blocks, Add, Concatenate) are sliced consistently and
whatever cannot be sliced safely is left alone and named in the record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from slimkit.core.errors import SlimkitError
from slimkit.core.transform import TransformRecord
from slimkit.keras._graph import Graph, keras_module, load, rebuild, weights_of
from slimkit.keras._units import PRODUCERS, Units, slice_layers

IMPORTANCE = ("l1", "l2")


class KerasResult(NamedTuple):
    """A transformed model (new; the input is untouched) and the record of what changed."""

    model: Any
    record: TransformRecord


def unit_scores(layers: list[Any], method: str) -> np.ndarray:
    """Importance of each output unit of coupled Conv/Dense ``layers`` (mean-normalised, averaged)."""
    if method not in IMPORTANCE:
        raise SlimkitError(f"unknown importance {method!r}; choose one of {', '.join(IMPORTANCE)}")
    total = None
    for layer in layers:
        kernel = weights_of(layer)[0]
        rows = kernel.reshape(-1, kernel.shape[-1]).T.astype(np.float64)  # (units, fan_in)
        s = np.abs(rows).sum(1) if method == "l1" else np.sqrt((rows**2).sum(1))
        s = s / (s.mean() + 1e-12)
        total = s if total is None else total + s
    return total / len(layers)


def _n_keep(n: int, ratio: float) -> int:
    return max(1, n - round(n * ratio))


def prune_units(
    model: Any,
    ratios: Mapping[str, float] | float,
    importance: str = "l1",
) -> KerasResult:
    """Remove the least important filters / units of Conv1D/2D/3D and Dense layers.

    ``ratios``: the fraction of units to remove, per layer name (``{"conv1": 0.5}``) or one
    fraction for every prunable layer. Layers coupled by ``Add``-like merges are pruned together
    (the largest ratio named for any of them; their importances averaged). Layers that feed the
    model output or a layer slimkit cannot slice are skipped and reported. ``importance``:
    ``"l1"`` or ``"l2"`` norm of each unit's weights.

    Example (the brief's Conv1 64 -> 32)::

        small, record = slimkit.keras.prune_units(model, {"conv1": 0.5}, importance="l1")
    """
    model = load(model)
    if importance not in IMPORTANCE:
        raise SlimkitError(f"unknown importance {importance!r}; choose one of {', '.join(IMPORTANCE)}")
    graph = Graph(model)
    units = Units(graph)
    prunable = [c.name for c in graph.calls if c.kind in PRODUCERS]
    if isinstance(ratios, Mapping):
        for name, r in ratios.items():
            call = graph.get(name)
            if call.kind not in PRODUCERS:
                raise SlimkitError(
                    f"{name} is a {call.kind}, which has no units to prune; prunable layers: {', '.join(prunable)}"
                )
            if not 0.0 <= r < 1.0:
                raise SlimkitError(f"ratio for {name} must be in [0, 1), got {r}")
        wanted = dict(ratios)
    else:
        if not 0.0 <= ratios < 1.0:
            raise SlimkitError(f"ratio must be in [0, 1), got {ratios}")
        wanted = dict.fromkeys(prunable, float(ratios))
    record = TransformRecord(
        "keras.prune_units", {"ratios": wanted if isinstance(ratios, Mapping) else ratios, "importance": importance}
    )
    keep: dict[int, np.ndarray] = {}
    for root, owners in units.groups().items():
        named = {o: wanted[o] for o in owners if o in wanted}
        if not named or max(named.values()) == 0.0:
            continue
        reason = units.group_blocked(root) or next((units.rejected[o] for o in owners if o in units.rejected), None)
        if reason:
            for o in named:
                record.skipped[o] = reason
            continue
        ratio = max(named.values())
        n = units.size[root]
        k = _n_keep(n, ratio)
        if k == n:
            continue
        scores = unit_scores([graph.get(o).layer for o in owners], importance)
        order = np.argsort(-scores, kind="stable")
        mask = np.zeros(n, dtype=bool)
        mask[order[:k]] = True
        keep[root] = mask
        for o in owners:
            record.details.setdefault("units", {})[o] = [n, k]
        if len(owners) > 1:
            record.details.setdefault("coupled", []).append(sorted(owners))
    configs, weights = slice_layers(units, keep)
    record.changed = sorted(configs)
    new = rebuild(graph, configs=configs, weights=weights)
    return KerasResult(new, record)


def pca_dense(model: Any, layer: str, units: int, calibration_x: Any, *, batch_size: int = 256) -> KerasResult:
    """Narrow Dense ``layer`` to ``units`` units chosen by activation PCA; refit the next Dense.

    ``layer`` must feed exactly one Dense layer (through per-unit layers such as its activation,
    Dropout or BatchNormalization). On ``calibration_x`` (use 1,000+ real samples) the kept units
    are those that best span the activations the next layer sees (pivoted QR on the top principal
    loadings); the next layer is refit by least squares to see the dropped units' linear
    reconstruction from the kept ones. The record's ``details["rel_error"]`` is the relative
    error of the next layer's pre-activation outputs on the calibration data.

    Example (the brief's Dense 1024 -> 512)::

        small, record = slimkit.keras.pca_dense(model, "dense", 512, x_train[:2000])
    """
    import torch

    from slimkit.compress import factor

    model = load(model)
    keras_graph = Graph(model)
    call = keras_graph.get(layer, "Dense layer")
    if call.kind != "Dense":
        raise SlimkitError(f"pca_dense needs a Dense layer; {layer} is a {call.kind}")
    an = Units(keras_graph)
    space = an.find(an.layout[call.outputs[0]].segs[0][0])
    reason = an.group_blocked(space) or an.rejected.get(layer)
    if reason:
        raise SlimkitError(f"{layer} cannot be narrowed: {reason}")
    if an.owners[space] != [layer]:
        raise SlimkitError(f"{layer} is coupled to {', '.join(an.owners[space])} (Add-like merge); not supported")
    consumers = [c for c in an.uses.get(space, []) if c.kind in PRODUCERS]
    if len(consumers) != 1 or consumers[0].kind != "Dense":
        names = ", ".join(f"{c.name} ({c.kind})" for c in consumers) or "none"
        raise SlimkitError(f"{layer} must feed exactly one Dense layer; it feeds {names}")
    nxt = consumers[0]
    lay = an.layout[nxt.inputs[0]]
    n = an.size[space]
    if len(lay.segs) != 1 or lay.repeat != 1 or len(keras_graph.input_shape(nxt)) != 2:
        raise SlimkitError(f"{nxt.name} sees {layer}'s units mixed with others or reshaped; not supported")
    if not 0 < units < n:
        raise SlimkitError(f"units must be between 1 and {n - 1} for {layer}, got {units}")

    keras = keras_module()
    probe = keras.Model(keras_graph.functional.inputs, keras_graph.tensors[nxt.inputs[0]])
    h = np.asarray(probe.predict(calibration_x, batch_size=batch_size, verbose=0), dtype=np.float64)  # (N, n)
    if len(h) < units:
        raise SlimkitError(f"pca_dense to {units} units needs at least {units} calibration samples, got {len(h)}")
    ht = torch.from_numpy(h)
    keep_idx = factor.select_units(ht, units)
    w_next = weights_of(nxt.layer)
    consumer = _LinearView(w_next)
    new_w, new_b = factor.refit_consumer(consumer, ht, keep_idx)  # (O, r), (O,)
    mask = np.zeros(n, dtype=bool)
    mask[keep_idx.numpy()] = True
    configs, weights = slice_layers(an, {space: mask})
    dtype = w_next[0].dtype
    weights[nxt.name] = [new_w.T.numpy().astype(dtype), new_b.numpy().astype(dtype)]
    cfg = nxt.layer.get_config()
    cfg["use_bias"] = True
    configs[nxt.name] = cfg
    before = h @ w_next[0].astype(np.float64) + (w_next[1] if len(w_next) > 1 else 0.0)
    after = h[:, mask] @ new_w.T.numpy() + new_b.numpy()
    rel = float(np.linalg.norm(after - before) / (np.linalg.norm(before) + 1e-12))
    record = TransformRecord(
        "keras.pca_dense",
        {"layer": layer, "units": units, "samples": len(h)},
        changed=sorted(configs),
        details={"units": {layer: [n, units]}, "refit": nxt.name, "rel_error": rel},
    )
    return KerasResult(rebuild(keras_graph, configs=configs, weights=weights), record)


class _LinearView:
    """A Dense kernel/bias seen as ``nn.Linear``'s ``weight (O, I)`` / ``bias`` for the shared math."""

    def __init__(self, w: list[np.ndarray]) -> None:
        import torch

        self.weight = torch.from_numpy(np.ascontiguousarray(w[0].T))
        self.bias = torch.from_numpy(w[1]) if len(w) > 1 else None
