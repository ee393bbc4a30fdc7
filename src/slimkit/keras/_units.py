"""Which units (Conv filters, Dense units) of a Keras graph move together, and how to slice them.

Every tensor's last axis (Keras is channels-last) is described as a list of *segments*, each a
run of units owned by one "space": the output units of one Conv/Dense layer. Per-channel layers
(BatchNormalization, activations, pooling, dropout, padding, depthwise convolutions) pass the
segments through; ``Concatenate`` on the last axis joins them; ``Add``/``Multiply``/... couple the
spaces of their inputs (they must keep the same units); ``Flatten`` of ``(H, W, C)`` repeats the
segments ``H*W`` times (flat index ``(h*W + w)*C + c``: each spatial position holds a block of
``C`` channels). A space is *blocked* (left alone, with the reason) when it reaches the model
output, a layer slimkit cannot slice (Reshape, LayerNormalization, custom layers...), a shared
layer, or a merge whose inputs are laid out differently.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from slimkit.keras._graph import Call, Graph

PRODUCERS = ("Conv1D", "Conv2D", "Conv3D", "Dense")
PASS = (
    "Activation",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "Identity",
    "MaxPooling1D",
    "MaxPooling2D",
    "MaxPooling3D",
    "AveragePooling1D",
    "AveragePooling2D",
    "AveragePooling3D",
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalAveragePooling3D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "GlobalMaxPooling3D",
    "ZeroPadding1D",
    "ZeroPadding2D",
    "ZeroPadding3D",
    "Cropping1D",
    "Cropping2D",
    "Cropping3D",
    "UpSampling1D",
    "UpSampling2D",
    "UpSampling3D",
    "ActivityRegularization",
)
MERGES = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
CROSS_UNIT = ("softmax", "log_softmax")  # activations that mix units: dropping one changes the others


@dataclasses.dataclass(frozen=True)
class Layout:
    """The last axis of a tensor: segments ``(space, size)`` repeated ``repeat`` times (Flatten)."""

    segs: tuple[tuple[int, int], ...]
    repeat: int = 1


class Units:
    """Union-find over unit spaces plus the layout of every tensor; built by walking the graph once."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.size: list[int] = []
        self.parent: list[int] = []
        self.owners: list[list[str]] = []  # producer layer names per space
        self.blocked: dict[int, str] = {}  # space -> first reason (before union)
        self.layout: dict[int, Layout] = {}
        self.rejected: dict[str, str] = {}  # producer name -> why its units cannot be pruned
        self.uses: dict[int, list[Call]] = {}  # space -> calls that slice or pass it
        for t in graph.inputs:
            self.layout[t] = self._fresh(graph.shapes[t][-1])
        for call in graph.calls:
            self._visit(call)
        for t in graph.outputs:  # the most basic reason wins
            for s, _ in self.layout[t].segs:
                self.blocked[s] = "feeds the model output"

    # -- spaces ---------------------------------------------------------------------------------
    def _new_space(self, size: int, owner: str | None) -> int:
        self.size.append(int(size))
        self.parent.append(len(self.parent))
        self.owners.append([owner] if owner else [])
        return len(self.size) - 1

    def _fresh(self, size: int | None) -> Layout:
        s = self._new_space(size or 0, None)
        self.blocked[s] = "not the output of a Conv/Dense layer"
        return Layout(((s, int(size or 0)),))

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.owners[ra] += self.owners[rb]

    def _block(self, layout: Layout, reason: str) -> None:
        for s, _ in layout.segs:
            self.blocked.setdefault(s, reason)

    def group_blocked(self, root: int) -> str | None:
        reasons = [r for s, r in self.blocked.items() if self.find(s) == root]
        named = [r for r in reasons if r != "not the output of a Conv/Dense layer"]
        return (named or reasons or [None])[0]

    def groups(self) -> dict[int, list[str]]:
        """Root space -> producer names, for spaces that have a producer."""
        out: dict[int, list[str]] = {}
        for s in range(len(self.size)):
            if self.find(s) == s and self.owners[s]:
                out[s] = list(self.owners[s])
        return out

    # -- walking ----------------------------------------------------------------------------------
    def _visit(self, call: Call) -> None:
        g, layer, kind = self.graph, call.layer, call.kind
        ins = [self.layout[t] for t in call.inputs]
        out_size = g.shapes[call.outputs[0]][-1] if call.outputs else 0
        cfg = layer.get_config() if hasattr(layer, "get_config") else {}
        channels_last = cfg.get("data_format") in (None, "channels_last")

        def unknown(reason: str) -> None:
            for lay in ins:
                self._block(lay, reason)
            for t in call.outputs:
                self.layout[t] = self._fresh(g.shapes[t][-1])

        def use(lay: Layout) -> None:
            for s, _ in lay.segs:
                self.uses.setdefault(s, []).append(call)

        if len(call.outputs) != 1:
            return unknown(f"consumed by {call.name} ({kind}) with several outputs, which slimkit cannot slice")
        if call.name in g.shared:
            return unknown(f"consumed by {call.name}, a layer called more than once")
        if kind in PRODUCERS:
            if not channels_last:
                return unknown(f"consumed by {call.name} ({kind}), data_format='channels_first' is not supported")
            if cfg.get("groups", 1) != 1:
                return unknown(f"consumed by {call.name}, a grouped convolution (groups={cfg['groups']})")
            if len(ins) != 1 or (kind != "Dense" and ins[0].repeat != 1):
                return unknown(f"consumed by {call.name} ({kind}) in a way slimkit cannot slice")
            use(ins[0])
            space = self._new_space(out_size, call.name)
            self.layout[call.outputs[0]] = Layout(((space, int(out_size)),))
            if cfg.get("activation") in CROSS_UNIT:
                self.rejected[call.name] = f"its {cfg['activation']} activation mixes all units"
                self.blocked[space] = self.rejected[call.name]
            return None
        if kind == "BatchNormalization":
            axis = cfg.get("axis", -1)
            axis = axis[0] if isinstance(axis, list | tuple) and len(axis) == 1 else axis
            rank = len(g.input_shape(call))
            if axis not in (-1, rank - 1) or ins[0].repeat != 1:
                return unknown(f"consumed by {call.name}, a BatchNormalization over axis {axis}")
            use(ins[0])
            self.layout[call.outputs[0]] = ins[0]
            return None
        if kind == "DepthwiseConv2D":
            if not channels_last or cfg.get("depth_multiplier", 1) != 1:
                return unknown(
                    f"consumed by {call.name}, a depthwise conv with depth_multiplier != 1 or channels_first"
                )
            use(ins[0])
            self.layout[call.outputs[0]] = ins[0]
            return None
        if kind in PASS:
            if not channels_last:
                return unknown(f"consumed by {call.name} ({kind}) with data_format='channels_first'")
            if kind == "Activation" and cfg.get("activation") in CROSS_UNIT:
                return unknown(f"consumed by {call.name}, a {cfg['activation']} over the units")
            self.layout[call.outputs[0]] = ins[0]
            return None
        if kind == "Flatten":
            shape = g.input_shape(call)
            spatial = shape[1:-1]
            if not channels_last or any(d is None for d in spatial):
                return unknown(f"consumed by {call.name}, a Flatten of an input with unknown size {shape}")
            self.layout[call.outputs[0]] = Layout(ins[0].segs, ins[0].repeat * math.prod(spatial))
            return None
        if kind in MERGES:
            first = ins[0]
            sizes = [tuple(n for _, n in lay.segs) for lay in ins]
            if any(s != sizes[0] for s in sizes) or any(lay.repeat != first.repeat for lay in ins):
                return unknown(f"consumed by {call.name} ({kind}) whose inputs are laid out differently")
            for lay in ins[1:]:
                for (a, _), (b, _) in zip(first.segs, lay.segs, strict=True):
                    self._union(a, b)
            self.layout[call.outputs[0]] = first
            return None
        if kind == "Concatenate":
            rank = len(g.input_shape(call))
            if cfg.get("axis", -1) not in (-1, rank - 1) or any(lay.repeat != 1 for lay in ins):
                return unknown(f"consumed by {call.name}, a Concatenate along axis {cfg.get('axis')}")
            self.layout[call.outputs[0]] = Layout(tuple(s for lay in ins for s in lay.segs))
            return None
        return unknown(f"consumed by {call.name} ({kind}), which slimkit cannot slice")

    # -- masks ---------------------------------------------------------------------------------
    def mask(self, t: int, keep: dict[int, np.ndarray]) -> np.ndarray:
        """Boolean mask over the last axis of tensor ``t`` given kept-unit masks per root space."""
        lay = self.layout[t]
        parts = [keep.get(self.find(s), np.ones(n, dtype=bool)) for s, n in lay.segs]
        return np.tile(np.concatenate(parts), lay.repeat)


def slice_layers(units: Units, keep: dict[int, np.ndarray]) -> tuple[dict[str, dict], dict[str, list[np.ndarray]]]:
    """New configs and weights of every layer touched by the kept-unit masks ``keep``."""
    from slimkit.keras._graph import weights_of

    configs: dict[str, dict] = {}
    weights: dict[str, list[np.ndarray]] = {}
    for call in units.graph.calls:
        kind, layer = call.kind, call.layer
        if kind not in (*PRODUCERS, "BatchNormalization", "DepthwiseConv2D") or call.name in units.graph.shared:
            continue
        if not call.inputs or call.inputs[0] not in units.layout:
            continue
        m_in = units.mask(call.inputs[0], keep)
        m_out = units.mask(call.outputs[0], keep) if kind in PRODUCERS else m_in
        if m_in.all() and m_out.all():
            continue
        w = weights_of(layer)
        cfg = layer.get_config()
        if kind in PRODUCERS:
            kernel = w[0][..., m_in, :][..., m_out]  # (..., C_in, C_out)
            w = [kernel, *(b[m_out] for b in w[1:])]
            cfg["units" if kind == "Dense" else "filters"] = int(m_out.sum())
        elif kind == "DepthwiseConv2D":
            w = [w[0][:, :, m_in, :], *(b[m_in] for b in w[1:])]  # kernel (kh, kw, C, 1)
        else:
            w = [v[m_in] for v in w]  # gamma, beta, moving mean, moving variance
        configs[call.name], weights[call.name] = cfg, w
    return configs, weights
