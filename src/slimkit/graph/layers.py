"""How each layer type is pruned: one registry entry per type, users can add their own.

The tracer (:mod:`slimkit.graph.trace`) sees operations (``F.linear``, ``torch.addmm``, ``x * gamma``)
and the parameters they use; a layer's entry says which *slot* (prunable dimension, e.g. a
Linear's ``"out"``) each dimension of each parameter indexes, how to lay out the weights each
index owns (for importance scores) and how to make the layer smaller. Most layers are described
by a :class:`ParamLayout`: parameter dimensions and the integer attributes that hold their sizes.

>>> import torch
>>> from torch import nn
>>> class Scale(nn.Module):                   # a custom layer: one gain per channel
...     def __init__(self, n):
...         super().__init__()
...         self.n, self.gain = n, nn.Parameter(torch.ones(n))
...     def forward(self, x):
...         return x * self.gain
>>> _ = register_pruner(Scale, ParamLayout({"gain": ("ch",)}, sizes={"n": "ch"}))
>>> layer = Scale(4)
>>> pruner_for(layer).rebuild(nn.Sequential(layer), "0", layer, {"ch": torch.tensor([0, 2])})
>>> layer.n, tuple(layer.gain.shape)
(2, (2,))

Layers without an entry are still pruned where the tracer understands how their parameters are
used: each parameter dimension is then its own slot (``"weight.0"``), and only the parameter is
resized (attributes are left alone; the pruned model is run before it is returned).

Layers whose ``forward`` the tracer should not look into (recurrent layers, slimkit's attention
blocks with a head count) are *leaves*: their pruner's :meth:`LayerPruner.trace` gives the
data flow from inputs to outputs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimkit.core.surgery import replace_module, resize_module, set_module_attr

if TYPE_CHECKING:
    from slimkit.graph.trace import DimTracer

Get = Callable[[nn.Parameter], torch.Tensor]  # parameter -> tensor to score (weights, w * grad, ...)

__all__ = ["LayerPruner", "ParamLayout", "pruner_for", "register_pruner"]


def _rows(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(size of ``dim``, everything else): row ``i`` holds the elements index ``i`` of ``dim`` owns."""
    return t.movedim(dim, 0).reshape(t.shape[dim], -1)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p for p in parts if p.numel()], dim=1)


def _idx(keep: torch.Tensor | None, n: int) -> torch.Tensor:
    return torch.arange(n) if keep is None else keep


class LayerPruner:
    """The pruning rules of one layer type. Subclass for layers a :class:`ParamLayout` cannot describe."""

    leaf = False  # True: the tracer does not look inside; :meth:`trace` gives the data flow

    def kind(self, module: nn.Module, attr: str, dim: int) -> str | None:
        """The slot kind that dimension ``dim`` of parameter ``attr`` indexes (None: never pruned)."""
        return f"{attr}.{dim}"

    def indexed(self, module: nn.Module, kind: str) -> list[tuple[torch.Tensor, int]]:
        """``(parameter, dimension)`` pairs that slot ``kind`` indexes."""
        return [
            (p, dim)
            for attr, p in module.named_parameters(recurse=False)
            for dim in range(p.dim())
            if self.kind(module, attr, dim) == kind
        ]

    def rows(self, module: nn.Module, kind: str, get: Get) -> torch.Tensor:
        """(slot size, owned elements): ``get(param)`` values that each index of slot ``kind`` owns."""
        return _cat([_rows(get(p), dim) for p, dim in self.indexed(module, kind)])

    def row_norms(self, module: nn.Module, kind: str, get: Get, p: int) -> torch.Tensor:
        """(slot size,): ``sum |x| ** p`` over the elements each index of slot ``kind`` owns (what
        magnitude importance needs), reduced on each parameter in place when :meth:`rows` is the default."""
        if type(self).rows is not LayerPruner.rows:  # rows laid out by the subclass
            return self.rows(module, kind, get).abs().pow(p).sum(1)
        total = torch.zeros(0)
        for t, dim in self.indexed(module, kind):
            v = get(t)
            other = [d for d in range(v.dim()) if d != dim]
            part = torch.linalg.vector_norm(v, p, dim=other).pow(p) if other else v.abs().pow(p)
            total = part if not len(total) else total + part
        return total

    def rebuild(self, model: nn.Module, name: str, module: nn.Module, keep: dict[str, torch.Tensor]) -> None:
        """Make layer ``name`` keep only indices ``keep[kind]`` of each slot (recorded for checkpoints)."""
        tensors = {}
        with torch.no_grad():
            for attr, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                if t is None or t.dim() == 0:
                    continue
                new = t
                for dim in range(t.dim()):
                    kind = self.kind(module, attr, dim)
                    if kind in keep:
                        new = new.index_select(dim, keep[kind].to(t.device))
                if new is not t:
                    tensors[attr] = new
        resize_module(model, name, tensors, self.sizes(module, keep))

    def sizes(self, module: nn.Module, keep: dict[str, torch.Tensor]) -> dict[str, Any]:
        """New values of the layer's size attributes."""
        return {}

    def trace(self, tracer: DimTracer, name: str, module: nn.Module, args: tuple, ids: tuple, value: Any) -> Any:
        """Leaves only: tie the ids of the inputs ``ids`` to the layer's slots and return the output's ids."""
        raise NotImplementedError


class ParamLayout(LayerPruner):
    """A layer described by its parameters: ``dims`` maps each parameter (or buffer) to the slot kind of
    each of its dimensions (None: not pruned), ``sizes`` maps integer attributes (or 1-tuples such as
    LayerNorm's ``normalized_shape``) to the kind whose kept length they hold."""

    def __init__(self, dims: dict[str, tuple[str | None, ...]], sizes: dict[str, str] | None = None) -> None:
        self.dims = dims
        self.size_of = dict(sizes or {})

    def kind(self, module: nn.Module, attr: str, dim: int) -> str | None:
        kinds = self.dims.get(attr)
        return kinds[dim] if kinds is not None and dim < len(kinds) else None

    def sizes(self, module: nn.Module, keep: dict[str, torch.Tensor]) -> dict[str, Any]:
        out = {}
        for attr, kind in self.size_of.items():
            if kind in keep:
                old = getattr(module, attr)
                out[attr] = (len(keep[kind]),) if isinstance(old, tuple | list) else len(keep[kind])
        return out

    def __repr__(self) -> str:
        return f"ParamLayout({self.dims}, sizes={self.size_of})"


class ConvPruner(LayerPruner):
    """``nn.Conv1d`` / ``nn.Conv2d``: ``out`` / ``in`` channels, ``ch`` for depthwise (in = out = groups);
    grouped convolutions keep their group count (a unit is one position in every group)."""

    @staticmethod
    def depthwise(m: nn.Module) -> bool:
        return m.groups > 1 and m.groups == m.in_channels == m.out_channels

    def kind(self, module: nn.Module, attr: str, dim: int) -> str | None:
        if self.depthwise(module):
            return "ch" if dim == 0 else None
        if dim == 0:
            return "out"
        return "in" if attr == "weight" and dim == 1 else None

    def rows(self, module: nn.Module, kind: str, get: Get) -> torch.Tensor:
        m = module
        bias = [get(m.bias).reshape(-1, 1)] if m.bias is not None else []
        if kind in ("out", "ch"):
            return _cat([_rows(get(m.weight), 0), *bias])
        g = m.groups  # input channel i of group k is column i % (in / g) of that group's rows
        w = get(m.weight).reshape(g, m.weight.shape[0] // g, m.weight.shape[1], -1).transpose(1, 2)
        return w.reshape(g * m.weight.shape[1], -1)

    def rebuild(self, model: nn.Module, name: str, module: nn.Module, keep: dict[str, torch.Tensor]) -> None:
        m = module
        depthwise = "ch" in keep
        out_idx = _idx(keep.get("ch", keep.get("out")), m.out_channels).to(m.weight.device)
        in_idx = _idx(keep.get("ch", keep.get("in")), m.in_channels).to(m.weight.device)
        with torch.no_grad():
            w = m.weight[out_idx]
            # grouped: every group keeps the same input positions (see slimkit.graph), listed by group 0
            w = w if depthwise else w[:, in_idx[in_idx < m.weight.shape[1]]]
            tensors = {"weight": w} if m.bias is None else {"weight": w, "bias": m.bias[out_idx]}
        sizes = {"in_channels": len(in_idx), "out_channels": len(out_idx)}
        if depthwise:
            sizes["groups"] = len(out_idx)
        resize_module(model, name, tensors, sizes)


def _rnn_gates(m: nn.RNNBase) -> int:
    return {"LSTM": 4, "GRU": 3}.get(m.mode, 1)


def _rnn_params(m: nn.RNNBase) -> list[tuple[int, str]]:
    sfx = ["", "_reverse"] if m.bidirectional else [""]
    return [(layer, s) for layer in range(m.num_layers) for s in sfx]


class RNNPruner(LayerPruner):
    """``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``: ``hidden`` units (every gate and direction) and ``in`` features."""

    leaf = True

    def kind(self, module: nn.Module, attr: str, dim: int) -> str | None:
        return None  # its parameters are reached through trace(), never through operations

    def trace(self, tracer: DimTracer, name: str, module: nn.Module, args: tuple, ids: tuple, value: Any) -> Any:
        from slimkit.graph.trace import channel_ids

        m = module
        hidden = tracer.slot(name, "hidden", m.hidden_size, True).ids
        x_ids = ids[0]
        tracer.space.unify(x_ids, channel_ids(tracer.slot(name, "in", m.input_size, False).ids, -1, x_ids.shape))
        if getattr(m, "proj_size", 0) or (len(args) > 1 and args[1] is not None):
            why = "projected LSTM" if getattr(m, "proj_size", 0) else "initial state passed in"
            tracer.space.block(hidden, f"{name}: {why} is not supported")
        dirs = 2 if m.bidirectional else 1
        out, state = value
        out_ids = channel_ids(hidden.repeat(dirs), -1, out.shape)
        state_ids = tuple(channel_ids(hidden, -1, s.shape) for s in (state if isinstance(state, tuple) else (state,)))
        return (out_ids, state_ids if isinstance(state, tuple) else state_ids[0])

    def rows(self, module: nn.Module, kind: str, get: Get) -> torch.Tensor:
        m = module
        h, g = m.hidden_size, _rnn_gates(m)
        if kind == "in":
            return _cat([_rows(get(getattr(m, f"weight_ih_l0{s}")), 1) for layer, s in _rnn_params(m) if layer == 0])
        parts = []
        for layer, s in _rnn_params(m):
            for pname in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                p = getattr(m, f"{pname}_l{layer}{s}", None)
                if p is not None:  # rows g*h + i for every gate
                    parts.append(get(p).reshape(g, h, -1).transpose(0, 1).reshape(h, -1))
            parts.append(_rows(get(getattr(m, f"weight_hh_l{layer}{s}")), 1))
            if layer > 0:
                w = get(getattr(m, f"weight_ih_l{layer}{s}"))  # columns i (and h + i when bidirectional)
                parts.append(_rows(w, 1).reshape(-1, h, w.shape[0]).transpose(0, 1).reshape(h, -1))
        return _cat(parts)

    def rebuild(self, model: nn.Module, name: str, module: nn.Module, keep: dict[str, torch.Tensor]) -> None:
        m = module
        h, g = m.hidden_size, _rnn_gates(m)
        hid = _idx(keep.get("hidden"), h)
        inp = _idx(keep.get("in"), m.input_size)
        args = {k: getattr(m, k) for k in ("num_layers", "bias", "batch_first", "dropout", "bidirectional")}
        if type(m) is nn.RNN:
            args["nonlinearity"] = m.nonlinearity
        w0 = m.weight_ih_l0
        new = type(m)(len(inp), len(hid), **args, device=w0.device, dtype=w0.dtype)
        rows = torch.cat([k * h + hid for k in range(g)])  # gate-major rows of every weight
        dirs = 2 if m.bidirectional else 1
        below = torch.cat([d * h + hid for d in range(dirs)])  # columns fed by the layer below
        with torch.no_grad():
            for layer, s in _rnn_params(m):
                cols = inp if layer == 0 else below
                getattr(new, f"weight_ih_l{layer}{s}").copy_(getattr(m, f"weight_ih_l{layer}{s}")[rows][:, cols])
                getattr(new, f"weight_hh_l{layer}{s}").copy_(getattr(m, f"weight_hh_l{layer}{s}")[rows][:, hid])
                if m.bias:
                    for b in ("bias_ih", "bias_hh"):
                        getattr(new, f"{b}_l{layer}{s}").copy_(getattr(m, f"{b}_l{layer}{s}")[rows])
        replace_module(model, name, new.train(m.training))


def is_attention_block(m: nn.Module) -> bool:
    """Attention written with separate q/k/v/out ``nn.Linear`` projections and an int ``heads``."""
    children = m._modules  # read directly: a missing attribute of a module costs an exception
    return isinstance(vars(m).get("heads"), int) and all(
        isinstance(children.get(p), nn.Linear) for p in ("q_proj", "k_proj", "v_proj", "out_proj")
    )


class AttentionPruner(LayerPruner):
    """slimkit's attention blocks (``q_proj``/``k_proj``/``v_proj``/``out_proj`` and ``heads``): whole
    heads (``heads``), the inputs of each projection (``q_proj.in``...) and ``out_proj.out``."""

    leaf = True
    _LINEAR = ParamLayout(
        {"weight": ("out", "in"), "bias": ("out",)}, sizes={"out_features": "out", "in_features": "in"}
    )

    def kind(self, module: nn.Module, attr: str, dim: int) -> str | None:
        return None

    def trace(self, tracer: DimTracer, name: str, module: nn.Module, args: tuple, ids: tuple, value: Any) -> Any:
        from slimkit.graph.trace import channel_ids, untracked

        m = module
        # self-attention reads one input; nn.MultiheadAttention-style blocks read query, key, value
        tensors = [a for a in args[:3] if isinstance(a, torch.Tensor)]
        sources = ids[:3] if len(tensors) == 3 else [ids[0]] * 3
        for proj, src in zip(("q_proj", "k_proj", "v_proj"), sources, strict=True):
            size = getattr(m, proj).in_features
            tracer.space.unify(src, channel_ids(tracer.slot(name, f"{proj}.in", size, False).ids, -1, src.shape))
        tracer.slot(name, "heads", m.heads, True)
        out = value[0] if isinstance(value, tuple) else value
        out_ids = channel_ids(tracer.slot(name, "out_proj.out", m.out_proj.out_features, True).ids, -1, out.shape)
        return (out_ids, untracked(value[1])) if isinstance(value, tuple) else out_ids

    def rows(self, module: nn.Module, kind: str, get: Get) -> torch.Tensor:
        m = module
        if kind == "heads":
            parts = []
            for proj in (m.q_proj, m.k_proj, m.v_proj):
                parts.append(get(proj.weight).reshape(m.heads, -1))
                if proj.bias is not None:
                    parts.append(get(proj.bias).reshape(m.heads, -1))
            parts.append(get(m.out_proj.weight).t().reshape(m.heads, -1))
            return _cat(parts)
        proj_name, _, side = kind.rpartition(".")
        return self._LINEAR.rows(getattr(m, proj_name), side, get)

    def rebuild(self, model: nn.Module, name: str, module: nn.Module, keep: dict[str, torch.Tensor]) -> None:
        m = module
        d_head = m.q_proj.out_features // m.heads
        heads = _idx(keep.get("heads"), m.heads)
        inner = (heads[:, None] * d_head + torch.arange(d_head)).reshape(-1)  # rows of the kept heads
        for proj in ("q_proj", "k_proj", "v_proj"):
            old = getattr(m, proj)
            sides = {"out": inner, "in": _idx(keep.get(f"{proj}.in"), old.in_features)}
            self._LINEAR.rebuild(model, f"{name}.{proj}", old, sides)
        sides = {"out": _idx(keep.get("out_proj.out"), m.out_proj.out_features), "in": inner}
        self._LINEAR.rebuild(model, f"{name}.out_proj", m.out_proj, sides)
        if len(heads) != m.heads:
            set_module_attr(model, name, "heads", len(heads))


_PRUNERS: dict[type, LayerPruner] = {}
_GENERIC = LayerPruner()


def register_pruner(cls: type[nn.Module], pruner: LayerPruner) -> LayerPruner:
    """Use ``pruner`` for layers of type ``cls`` (and its subclasses without an entry of their own).

    The entry replaces slimkit's own for that type, if any; returns ``pruner``.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_pruner needs an nn.Module subclass, got {cls!r}")
    if not isinstance(pruner, LayerPruner):
        raise TypeError(f"register_pruner needs a LayerPruner (e.g. a ParamLayout), got {type(pruner).__name__}")
    _PRUNERS[cls] = pruner
    return pruner


def _register_known_libraries() -> None:
    """Entries for layers of libraries that are already imported (never imports them)."""
    hf = sys.modules.get("transformers.pytorch_utils")
    conv1d = getattr(hf, "Conv1D", None)
    if conv1d is not None and conv1d not in _PRUNERS:  # GPT-2's Linear with a (in, out) weight
        register_pruner(conv1d, ParamLayout({"weight": ("in", "out"), "bias": ("out",)}, sizes={"nf": "out"}))


def pruner_for(module: nn.Module) -> LayerPruner:
    """The registered pruner of ``module``'s type (or of its nearest registered base class); the
    generic one (each parameter dimension its own slot, attributes untouched) otherwise."""
    _register_known_libraries()
    if is_attention_block(module):
        return _ATTENTION
    for cls in type(module).__mro__:
        if cls in _PRUNERS:
            return _PRUNERS[cls]
    return _GENERIC


_ATTENTION = AttentionPruner()
_NORM = {"weight": ("feat",), "bias": ("feat",)}
register_pruner(nn.Linear, AttentionPruner._LINEAR)
for _conv in (nn.Conv1d, nn.Conv2d):
    register_pruner(_conv, ConvPruner())
for _rnn in (nn.LSTM, nn.GRU, nn.RNN):
    register_pruner(_rnn, RNNPruner())
for _transpose in (nn.ConvTranspose1d, nn.ConvTranspose2d):  # groups > 1 are kept whole by the tracer
    register_pruner(
        _transpose,
        ParamLayout({"weight": ("in", "out"), "bias": ("out",)}, sizes={"in_channels": "in", "out_channels": "out"}),
    )
register_pruner(nn.Embedding, ParamLayout({"weight": (None, "dim")}, sizes={"embedding_dim": "dim"}))
register_pruner(nn.LayerNorm, ParamLayout(_NORM, sizes={"normalized_shape": "feat"}))
register_pruner(nn.GroupNorm, ParamLayout(_NORM, sizes={"num_channels": "feat"}))
register_pruner(
    nn.modules.batchnorm._BatchNorm,
    ParamLayout({**_NORM, "running_mean": ("feat",), "running_var": ("feat",)}, sizes={"num_features": "feat"}),
)
if hasattr(nn, "RMSNorm"):
    register_pruner(nn.RMSNorm, ParamLayout({"weight": ("feat",)}, sizes={"normalized_shape": "feat"}))
