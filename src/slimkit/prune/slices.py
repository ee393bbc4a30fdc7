"""Which weights each prunable index owns, and how to rebuild a layer without some indices.

``slot_matrix`` lays out, for one slot, every weight element that index ``i`` owns as row ``i``
(e.g. a conv's output channel owns ``weight[i]`` and ``bias[i]``; its input channel owns
``weight[:, i]``). Importance scores are computed on these rows. ``rebuild`` makes the smaller
layer, copies the kept weights and records the replacement (so checkpoints replay it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from slimkit.core.surgery import replace_module, set_module_attr
from slimkit.graph import is_attention_block

Get = Callable[[nn.Parameter], torch.Tensor]  # parameter -> tensor to score (weights, w * grad, ...)


def _rows(t: torch.Tensor, dim: int) -> torch.Tensor:
    return t.transpose(0, dim).reshape(t.shape[dim], -1)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p for p in parts if p.numel()], dim=1)


def _rnn_gates(m: nn.RNNBase) -> int:
    return {"LSTM": 4, "GRU": 3}.get(m.mode, 1)


def _rnn_params(m: nn.RNNBase) -> list[tuple[int, str]]:
    sfx = ["", "_reverse"] if m.bidirectional else [""]
    return [(layer, s) for layer in range(m.num_layers) for s in sfx]


def _head_rows(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(heads * d, ...) -> (heads, d * ...): one row per head."""
    return t.reshape(heads, -1)


def slot_matrix(module: nn.Module, kind: str, get: Get) -> torch.Tensor:
    """(size, owned elements) matrix of ``get(param)`` values owned by each index of a slot."""
    m = module
    if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear):
        bias = [get(m.bias).reshape(-1, 1)] if m.bias is not None else []
        if kind in ("out", "ch"):
            return _cat([_rows(get(m.weight), 0), *bias])
        g = getattr(m, "groups", 1)  # input channel i of group k is column i % (in / g) of that group's rows
        w = get(m.weight).reshape(g, m.weight.shape[0] // g, m.weight.shape[1], -1).transpose(1, 2)
        return w.reshape(g * m.weight.shape[1], -1)
    if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.LayerNorm):
        return _cat([get(p).reshape(-1, 1) for p in (m.weight, m.bias) if p is not None])
    if isinstance(m, nn.Embedding):
        return _rows(get(m.weight), 1)
    if isinstance(m, nn.RNNBase):
        h, g = m.hidden_size, _rnn_gates(m)
        if kind == "in":
            parts = [_rows(get(getattr(m, f"weight_ih_l0{s}")), 1) for _, s in _rnn_params(m) if _ == 0]
            return _cat(parts)
        parts = []
        for layer, s in _rnn_params(m):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                p = getattr(m, f"{name}_l{layer}{s}", None)
                if p is not None:  # rows g*h + i for every gate
                    parts.append(get(p).reshape(g, h, -1).transpose(0, 1).reshape(h, -1))
            parts.append(_rows(get(getattr(m, f"weight_hh_l{layer}{s}")), 1))
            if layer > 0:
                w = get(getattr(m, f"weight_ih_l{layer}{s}"))  # columns i (and h + i when bidirectional)
                parts.append(_rows(w, 1).reshape(-1, h, w.shape[0]).transpose(0, 1).reshape(h, -1))
        return _cat(parts)
    if is_attention_block(m):
        if kind == "heads":
            parts = []
            for proj in (m.q_proj, m.k_proj, m.v_proj):
                parts.append(_head_rows(get(proj.weight), m.heads))
                if proj.bias is not None:
                    parts.append(_head_rows(get(proj.bias), m.heads))
            parts.append(_head_rows(get(m.out_proj.weight).t(), m.heads))
            return _cat(parts)
        proj_name, _, side = kind.rpartition(".")
        return slot_matrix(getattr(m, proj_name), side, get)
    raise TypeError(f"no slicing rule for {type(m).__name__}")


def _idx(keep: torch.Tensor | None, n: int) -> torch.Tensor:
    return torch.arange(n) if keep is None else keep


def _resized(m: nn.Module, tensors: dict[str, torch.Tensor | None], **attrs: Any) -> nn.Module:
    """A copy of layer ``m`` holding ``tensors`` (parameters and buffers by name) and plain ``attrs``,
    made without ``__init__``: constructing a layer initialises weights that would be overwritten."""
    new = type(m).__new__(type(m))
    new.__dict__ = {**m.__dict__, **attrs}
    new._parameters, new._buffers, new._modules = m._parameters.copy(), m._buffers.copy(), m._modules.copy()
    for name, t in tensors.items():
        if t is None:
            continue
        if name in m._parameters:
            new._parameters[name] = nn.Parameter(t, requires_grad=m._parameters[name].requires_grad)
        else:
            new._buffers[name] = t
    return new


def _linear(m: nn.Linear, out_idx: torch.Tensor, in_idx: torch.Tensor) -> nn.Linear:
    bias = None if m.bias is None else m.bias[out_idx]
    return _resized(m, {"weight": m.weight[out_idx][:, in_idx], "bias": bias},
                    in_features=len(in_idx), out_features=len(out_idx))  # fmt: skip


def rebuild(model: nn.Module, name: str, keep: dict[str, torch.Tensor]) -> None:
    """Replace layer ``name`` by a smaller copy keeping only ``keep[kind]`` indices of each slot."""
    m = model.get_submodule(name)
    with torch.no_grad():
        if isinstance(m, nn.Conv1d | nn.Conv2d):
            depthwise = "ch" in keep
            out_idx = _idx(keep.get("ch", keep.get("out")), m.out_channels)
            in_idx = _idx(keep.get("ch", keep.get("in")), m.in_channels)
            w = m.weight[out_idx]
            # grouped: every group keeps the same input positions (see slimkit.graph), listed by group 0
            w = w if depthwise else w[:, in_idx[in_idx < m.weight.shape[1]]]
            bias = None if m.bias is None else m.bias[out_idx]
            new = _resized(m, {"weight": w, "bias": bias}, in_channels=len(in_idx), out_channels=len(out_idx),
                           groups=len(out_idx) if depthwise else m.groups)  # fmt: skip
        elif isinstance(m, nn.Linear):
            new = _linear(m, _idx(keep.get("out"), m.out_features), _idx(keep.get("in"), m.in_features))
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.LayerNorm):
            idx = keep["feat"]
            sliced = {a: getattr(m, a)[idx] for a in ("weight", "bias", "running_mean", "running_var")
                      if getattr(m, a, None) is not None}  # fmt: skip
            if getattr(m, "num_batches_tracked", None) is not None:
                sliced["num_batches_tracked"] = m.num_batches_tracked.clone()
            size = {"normalized_shape": (len(idx),)} if isinstance(m, nn.LayerNorm) else {"num_features": len(idx)}
            new = _resized(m, sliced, **size)
        elif isinstance(m, nn.Embedding):
            idx = keep["dim"]
            new = _resized(m, {"weight": m.weight[:, idx]}, embedding_dim=len(idx))
        elif isinstance(m, nn.RNNBase):
            new = _rebuild_rnn(m, keep).train(m.training)
        elif is_attention_block(m):
            _rebuild_attention(model, name, m, keep)
            return
        else:
            raise TypeError(f"no rebuild rule for {type(m).__name__}")
    replace_module(model, name, new)


def _rebuild_rnn(m: nn.RNNBase, keep: dict[str, torch.Tensor]) -> nn.RNNBase:
    h, g = m.hidden_size, _rnn_gates(m)
    hid = _idx(keep.get("hidden"), h)
    inp = _idx(keep.get("in"), m.input_size)
    args = {"num_layers": m.num_layers, "bias": m.bias, "batch_first": m.batch_first, "dropout": m.dropout,
            "bidirectional": m.bidirectional}  # fmt: skip
    if type(m) is nn.RNN:
        args["nonlinearity"] = m.nonlinearity
    new = type(m)(len(inp), len(hid), **args)
    rows = torch.cat([k * h + hid for k in range(g)])  # gate-major rows of every weight
    dirs = 2 if m.bidirectional else 1
    below = torch.cat([d * h + hid for d in range(dirs)])  # columns fed by the layer below
    for layer, s in _rnn_params(m):
        cols = inp if layer == 0 else below
        getattr(new, f"weight_ih_l{layer}{s}").copy_(getattr(m, f"weight_ih_l{layer}{s}")[rows][:, cols])
        getattr(new, f"weight_hh_l{layer}{s}").copy_(getattr(m, f"weight_hh_l{layer}{s}")[rows][:, hid])
        if m.bias:
            for b in ("bias_ih", "bias_hh"):
                getattr(new, f"{b}_l{layer}{s}").copy_(getattr(m, f"{b}_l{layer}{s}")[rows])
    return new


def _rebuild_attention(model: nn.Module, name: str, m: nn.Module, keep: dict[str, torch.Tensor]) -> None:
    d_head = m.q_proj.out_features // m.heads
    heads = _idx(keep.get("heads"), m.heads)
    inner = (heads[:, None] * d_head + torch.arange(d_head)).reshape(-1)  # rows of the kept heads
    for proj in ("q_proj", "k_proj", "v_proj"):
        old = getattr(m, proj)
        replace_module(model, f"{name}.{proj}", _linear(old, inner, _idx(keep.get(f"{proj}.in"), old.in_features)))
    old = m.out_proj
    replace_module(model, f"{name}.out_proj", _linear(old, _idx(keep.get("out_proj.out"), old.out_features), inner))
    if len(heads) != m.heads:
        set_module_attr(model, name, "heads", len(heads))
