"""Costs of a Keras model (MACs, params, weight bytes) and the cost model that budget allocation uses.

MACs are counted per layer call from the static shapes: a Conv/Dense layer costs (output positions)
x (kernel entries), the same count :func:`slimkit.evaluate.count_macs` gives the PyTorch
equivalent (the brief's CNN: 6,498,560 on both sides). :class:`KerasCostModel` is
:class:`slimkit.optimize.CostModel` for a Keras graph, so :func:`slimkit.optimize.allocate` and
:func:`slimkit.optimize.uniform` allocate pruning ratios over Keras unit groups unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from slimkit.keras._graph import Graph, keras_module, weights_of
from slimkit.keras._units import PRODUCERS, Units
from slimkit.optimize.sensitivity import CostModel

__all__ = ["KerasCostModel", "count_macs", "count_params", "group_widths", "prunable_groups", "weights_bytes", "widths"]

_CONV = ("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D")


def _positions(shape: tuple) -> int:
    return math.prod(int(d) if d is not None else 1 for d in shape)


def call_macs(graph: Graph, call: Any) -> int:
    """Multiply-accumulates of one layer call (0 for layers without a kernel)."""
    keras = keras_module()
    if isinstance(call.layer, keras.Model):
        return count_macs(call.layer)
    kind = call.kind
    if kind not in (*_CONV, "Dense", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"):
        return 0
    w = weights_of(call.layer)
    kernels = w[:2] if kind.startswith("Separable") else w[:1]  # separable: depthwise + pointwise kernels
    entries = sum(k.size for k in kernels)
    if kind == "Dense":
        return _positions(graph.input_shape(call)[1:-1]) * entries
    if kind.endswith("Transpose"):
        return _positions(graph.input_shape(call)[1:-1]) * entries
    return _positions(graph.shapes[call.outputs[0]][1:-1]) * entries


def count_macs(model: Any) -> int:
    """MACs of one sample through ``model`` (Conv, Dense, depthwise / separable / transposed convs)."""
    graph = Graph(model)
    return sum(call_macs(graph, c) for c in graph.calls)


def count_params(model: Any) -> int:
    return int(model.count_params())


def weights_bytes(model: Any) -> int:
    """Bytes of every weight (incl. BatchNorm statistics) as stored, the size of the fp32 weights file."""
    return int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in model.weights))


def prunable_groups(units: Units, protected: tuple[str, ...] | list[str] = ()) -> dict[int, list[str]]:
    """Root space -> producer layers of every unit group that can be pruned (not blocked, not protected)."""
    out = {}
    for root, owners in units.groups().items():
        if units.group_blocked(root) or any(o in units.rejected or o in protected for o in owners):
            continue
        out[root] = owners
    return out


def group_widths(model: Any, protected: tuple[str, ...] | list[str] = ()) -> dict[str, int]:
    """Units per prunable group, keyed by the group's first producer layer (the key of pruning ratios)."""
    units = Units(Graph(model))
    return {owners[0]: units.size[root] for root, owners in prunable_groups(units, protected).items()}


def widths(model: Any) -> dict[str, int]:
    """Output width (filters / units) of every Conv / Dense layer."""
    graph = Graph(model)
    return {c.name: int(graph.shapes[c.outputs[0]][-1]) for c in graph.calls if c.kind in PRODUCERS}


class KerasCostModel(CostModel):
    """:class:`slimkit.optimize.CostModel` of a Keras model: estimated MACs / params after pruning.

    ``groups`` maps each prunable group's first producer to its unit count; a layer's cost is
    scaled by the kept share of every group among its input and output units.
    """

    def __init__(self, model: Any, protected: tuple[str, ...] | list[str] = ()) -> None:  # noqa: D107
        graph = Graph(model)
        units = Units(graph)
        groups = prunable_groups(units, protected)
        key = {root: owners[0] for root, owners in groups.items()}
        self.groups = {key[r]: units.size[r] for r in groups}
        self.group_names = {p: p for p in self.groups}
        self.members: dict[str, list[str]] = {}
        self.layer_macs: dict[str, float] = {}
        self.layer_params: dict[str, float] = {}
        self.skipped = {
            o: units.group_blocked(r) or units.rejected.get(o) or "protected"
            for r, owners in units.groups().items()
            for o in owners
            if r not in groups
        }
        for call in graph.calls:
            roots = set()
            if call.inputs and call.inputs[0] in units.layout:
                roots |= {units.find(s) for s, _ in units.layout[call.inputs[0]].segs}
            if call.kind in PRODUCERS and call.outputs and call.outputs[0] in units.layout:
                roots |= {units.find(s) for s, _ in units.layout[call.outputs[0]].segs}
            self.members[call.name] = [key[r] for r in sorted(roots) if r in key]
            self.layer_macs[call.name] = float(call_macs(graph, call))
            self.layer_params[call.name] = float(sum(np.prod(v.shape) for v in call.layer.weights))
        self.base = {"macs": count_macs(model), "params": count_params(model)}
        self.const = {
            "macs": self.base["macs"] - sum(self.layer_macs.values()),
            "params": self.base["params"] - sum(self.layer_params.values()),
        }
