"""Layer removal with shape repair and BatchNormalization folding for Keras models (new models)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from slimkit.core.errors import SlimkitError
from slimkit.core.transform import TransformRecord
from slimkit.keras._graph import Graph, load, rebuild, weights_of
from slimkit.keras._units import PASS
from slimkit.keras.prune import KerasResult

REPAIRS = ("transfer", "init")


def _flatten_grid(graph: Graph, call: Any) -> tuple[str, tuple] | None:
    """Name and input shape ``(H, W, ..., C)`` of the Flatten feeding Dense ``call`` (through per-unit layers)."""
    t = call.inputs[0]
    while t in graph.producer:
        prev = graph.producer[t]
        if prev.kind == "Flatten":
            return prev.name, graph.shapes[prev.inputs[0]][1:]
        if prev.kind not in PASS or len(prev.inputs) != 1 or prev.kind.startswith(("Global", "MaxPool", "AveragePool")):
            return None
        t = prev.inputs[0]
    return None


def resample_grid(kernel: np.ndarray, old: tuple, new: tuple) -> np.ndarray:
    """Dense rows of a flattened ``old`` grid ``(*spatial, C)`` mapped onto a ``new`` grid.

    Each new position takes the rows of the old position it falls in (nearest, by relative
    coordinate), divided by the number of new positions sharing that old one, so that a constant
    feature map gives the same Dense output: a reasonable start for fine-tuning, not an exact map.
    """
    c = old[-1]
    k = kernel.reshape(*old, kernel.shape[-1])  # (*spatial, C, units)
    idx = [np.minimum((np.arange(n) * o) // n, o - 1) for o, n in zip(old[:-1], new[:-1], strict=True)]
    counts = np.ones([1] * len(idx))
    for axis, ix in enumerate(idx):
        per = np.bincount(ix, minlength=old[axis])[ix]  # new cells per old cell along this axis
        shape = [1] * len(idx)
        shape[axis] = len(ix)
        counts = counts * per.reshape(shape)
    out = k[np.ix_(*idx)] / counts[..., None, None]  # (*new spatial, C, units)
    return out.reshape(math.prod(new[:-1]) * c, kernel.shape[-1]).astype(kernel.dtype)


def remove_layers(model: Any, names: Iterable[str], *, repair: str = "transfer") -> KerasResult:
    """Remove single-input layers (pooling, dropout, activations...) and repair the shapes after them.

    Layers whose weights no longer fit their new input are repaired: a Dense after a Flatten whose
    grid changed (the brief's pooling removal: 5x5x64 -> 24x24x64 features) gets its weights
    resampled from the old grid (``repair="transfer"``, see :func:`resample_grid`) or freshly
    initialised (``repair="init"``); other layers are re-initialised. Every repair is recorded in
    ``record.details["repaired"]``; fine-tune afterwards. Removing layers never changes the model's
    output shapes (that is an error).

    Example (the brief's "remove Pool1 and Pool2")::

        bigger, record = slimkit.keras.remove_layers(model, ["pool1", "pool2"])
    """
    if repair not in REPAIRS:
        raise SlimkitError(f"unknown repair {repair!r}; choose one of {', '.join(REPAIRS)}")
    model = load(model)
    graph = Graph(model)
    names = list(dict.fromkeys([names] if isinstance(names, str) else names))
    if not names:
        raise SlimkitError("remove_layers needs at least one layer name")
    for name in names:
        call = graph.get(name)
        if len(call.inputs) != 1 or len(call.outputs) != 1:
            raise SlimkitError(f"{name} ({call.kind}) has {len(call.inputs)} inputs; only single-input layers can go")
        if name in graph.shared:
            raise SlimkitError(f"{name} is called more than once; it cannot be removed")
    record = TransformRecord("keras.remove_layers", {"names": names, "repair": repair}, changed=list(names))
    repaired: dict[str, str] = {}

    def fix(old: Any, layer: Any, w: list[np.ndarray]) -> list[np.ndarray] | None:
        call = graph.by_name[old.name]
        before = [tuple(np.shape(v)) for v in w]
        after = [tuple(v.shape) for v in layer.weights]
        if repair == "transfer" and call.kind == "Dense":
            grid = _flatten_grid(graph, call)
            if grid is not None and grid[0] not in names:
                flat_name, old_grid = grid
                new_grid = tuple(new.get_layer(flat_name).input.shape[1:])
                if len(new_grid) == len(old_grid) and new_grid[-1] == old_grid[-1] and None not in new_grid:
                    kernel = resample_grid(w[0], old_grid, new_grid)
                    repaired[old.name] = (
                        f"transfer: input {before[0][0]} -> {after[0][0]} features, weights resampled from the "
                        f"{'x'.join(map(str, old_grid[:-1]))} grid to {'x'.join(map(str, new_grid[:-1]))}"
                    )
                    return [kernel, *w[1:]]
        repaired[old.name] = f"re-initialised: weights {before} no longer fit {after}"
        return None

    pending: list[tuple] = []  # repaired once the new model exists (the new grid shapes come from it)
    new = rebuild(graph, remove=set(names), repair=lambda old, layer, w: pending.append((old, layer, w)))
    for old, layer, w in pending:
        fixed = fix(old, layer, w)
        if fixed is not None:
            layer.set_weights(fixed)
    old_out = [tuple(t.shape) for t in graph.functional.outputs]
    new_out = [tuple(t.shape) for t in new.outputs]
    if old_out != new_out:
        raise SlimkitError(f"removing {', '.join(names)} changes the model output shape from {old_out} to {new_out}")
    record.details["repaired"] = repaired
    return KerasResult(new, record)


FOLDABLE = ("Conv1D", "Conv2D", "Conv3D", "Dense", "DepthwiseConv2D")


def fold_batchnorm(model: Any) -> KerasResult:
    """Fold every BatchNormalization that directly follows a linear Conv/Dense into that layer.

    ``y = gamma * (W x + b - mean) / sqrt(var + eps) + beta`` becomes one layer with weights
    ``W * s`` and bias ``(b - mean) * s + beta``, ``s = gamma / sqrt(var + eps)``: exact in
    inference. BatchNorms after an activation (``Conv2D(activation="relu")``), after another kind
    of layer, or whose producer also feeds other layers are skipped and reported.
    """
    model = load(model)
    graph = Graph(model)
    record = TransformRecord("keras.fold_batchnorm", {})
    remove: set[str] = set()
    configs: dict[str, dict] = {}
    weights: dict[str, list[np.ndarray]] = {}
    for call in graph.calls:
        if call.kind != "BatchNormalization":
            continue
        bn = call.layer
        prev = graph.producer.get(call.inputs[0])
        why = None
        cfg_bn = bn.get_config()
        axis = cfg_bn.get("axis", -1)
        axis = axis[0] if isinstance(axis, list | tuple) and len(axis) == 1 else axis
        if prev is None or prev.kind not in FOLDABLE:
            why = f"follows {prev.name + ' (' + prev.kind + ')' if prev else 'the model input'}, not a Conv/Dense layer"
        elif axis not in (-1, len(graph.input_shape(call)) - 1):
            why = f"normalises axis {axis}, not the channels"
        elif prev.layer.get_config().get("activation", "linear") != "linear":
            why = f"{prev.name} applies {prev.layer.get_config()['activation']} before the BatchNormalization"
        elif len(graph.consumers.get(call.inputs[0], [])) != 1 or call.inputs[0] in graph.outputs:
            why = f"{prev.name}'s output is also used elsewhere"
        elif prev.name in graph.shared or call.name in graph.shared:
            why = "a layer called more than once"
        elif prev.layer.get_config().get("data_format") not in (None, "channels_last"):
            why = "channels_first is not supported"
        if why:
            record.skipped[call.name] = why
            continue
        w = weights_of(prev.layer)
        kernel = w[0].astype(np.float64)
        bias = w[1].astype(np.float64) if len(w) > 1 else 0.0
        gamma, beta, mean, var = _bn_params(bn)
        s = gamma / np.sqrt(var + cfg_bn["epsilon"])  # (C,)
        if prev.kind == "DepthwiseConv2D":
            kernel = kernel * s.reshape(kernel.shape[2], kernel.shape[3])  # (kh, kw, C, m)
        else:
            kernel = kernel * s  # (..., C_in, C_out)
        new_b = (bias - mean) * s + beta
        cfg = prev.layer.get_config()
        cfg["use_bias"] = True
        dtype = w[0].dtype
        configs[prev.name] = cfg
        weights[prev.name] = [kernel.astype(dtype), new_b.astype(dtype)]
        remove.add(call.name)
        record.changed.append(prev.name)
        record.details.setdefault("folded", {})[call.name] = prev.name
    new = rebuild(graph, remove=remove, configs=configs, weights=weights)
    return KerasResult(new, record)


def _bn_params(bn: Any) -> tuple[np.ndarray, ...]:
    w = {v.path.split("/")[-1]: np.asarray(v.numpy(), dtype=np.float64) for v in bn.weights}
    mean, var = w["moving_mean"], w["moving_variance"]
    return w.get("gamma", np.ones_like(mean)), w.get("beta", np.zeros_like(mean)), mean, var
