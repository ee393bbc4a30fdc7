"""Recorded model surgery: replace submodules and set attributes so that checkpoints can replay it.

Transforms (pruning, factorization, layer removal, folding) change a model by calling
:func:`replace_module` and :func:`set_module_attr`. Each call is appended to the model's
architecture record (``arch["changes"]``); :func:`slimkit.save` writes that list to ``spec.json``
and :func:`slimkit.load` rebuilds the original architecture, then replays the list before loading
the weights. A replacement is described by a JSON *module spec* of allow-listed ``torch.nn``
classes and their constructor arguments, so loading never runs code from the file.

>>> from torch import nn
>>> spec = module_spec(nn.Sequential(nn.Linear(8, 2, bias=False), nn.Linear(2, 4)))
>>> spec["type"], spec["children"][0]
('Sequential', {'type': 'Linear', 'args': {'in_features': 8, 'out_features': 2, 'bias': False}})
>>> build_module(spec)
Sequential(
  (0): Linear(in_features=8, out_features=2, bias=False)
  (1): Linear(in_features=2, out_features=4, bias=True)
)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

from slimkit.core.errors import ModelFileError, SlimkitError
from slimkit.core.model import arch_of, set_arch


def _conv_args(m: nn.modules.conv._ConvNd) -> dict[str, Any]:
    return {
        "in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
        "stride": list(m.stride), "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
        "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None, "padding_mode": m.padding_mode,
    }  # fmt: skip


def _norm_args(m: nn.modules.batchnorm._BatchNorm) -> dict[str, Any]:
    return {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum, "affine": m.affine,
            "track_running_stats": m.track_running_stats}  # fmt: skip


def _rnn_args(m: nn.RNNBase) -> dict[str, Any]:
    args = {"input_size": m.input_size, "hidden_size": m.hidden_size, "num_layers": m.num_layers, "bias": m.bias,
            "batch_first": m.batch_first, "dropout": m.dropout, "bidirectional": m.bidirectional}  # fmt: skip
    if isinstance(m, nn.LSTM):
        args["proj_size"] = m.proj_size
    if type(m) is nn.RNN:
        args["nonlinearity"] = m.nonlinearity
    return args


def _pool_args(m: nn.Module) -> dict[str, Any]:
    keys = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "count_include_pad", "output_size")
    return {k: getattr(m, k) for k in keys if hasattr(m, k)}


# class -> function giving its constructor arguments (all JSON values)
_ARGS: dict[type[nn.Module], Callable[[Any], dict[str, Any]]] = {
    nn.Linear: lambda m: {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None},
    nn.Conv1d: _conv_args,
    nn.Conv2d: _conv_args,
    nn.BatchNorm1d: _norm_args,
    nn.BatchNorm2d: _norm_args,
    nn.LayerNorm: lambda m: {
        "normalized_shape": list(m.normalized_shape),
        "eps": m.eps,
        "elementwise_affine": m.elementwise_affine,
        "bias": m.bias is not None,
    },  # fmt: skip
    nn.Embedding: lambda m: {
        "num_embeddings": m.num_embeddings,
        "embedding_dim": m.embedding_dim,
        "padding_idx": m.padding_idx,
    },  # fmt: skip
    nn.LSTM: _rnn_args,
    nn.GRU: _rnn_args,
    nn.RNN: _rnn_args,
    nn.MultiheadAttention: lambda m: {
        "embed_dim": m.embed_dim,
        "num_heads": m.num_heads,
        "dropout": m.dropout,
        "bias": m.in_proj_bias is not None,
        "batch_first": m.batch_first,
        "kdim": m.kdim,
        "vdim": m.vdim,
    },  # fmt: skip
    nn.Dropout: lambda m: {"p": m.p},
    nn.Identity: lambda m: {},
    nn.Flatten: lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim},
    nn.ReLU: lambda m: {},
    nn.ReLU6: lambda m: {},
    nn.GELU: lambda m: {"approximate": m.approximate},
    nn.SiLU: lambda m: {},
    nn.Tanh: lambda m: {},
    nn.Sigmoid: lambda m: {},
    nn.MaxPool2d: _pool_args,
    nn.AvgPool2d: _pool_args,
    nn.AdaptiveAvgPool2d: _pool_args,
}


class Skip(nn.Module):
    """Returns its first input unchanged and ignores the rest: stands in for a removed block whose
    ``forward`` takes extra arguments (``nn.Identity`` takes exactly one)."""

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        return x


_ARGS[Skip] = lambda m: {}
_CLASSES = {cls.__name__: cls for cls in _ARGS}


def register_module(cls: type[nn.Module], args: Callable[[Any], dict[str, Any]]) -> type[nn.Module]:
    """Allow ``cls`` in recorded changes; ``args(module)`` returns its JSON constructor arguments.

    For slimkit's own small modules (a transform's building blocks). The class must be imported
    (registered) before a checkpoint that uses it is loaded, so register at import of a module
    that ``import slimkit`` loads.
    """
    if cls.__name__ in _CLASSES and _CLASSES[cls.__name__] is not cls:
        raise ValueError(f"another module class is already registered as {cls.__name__}")
    _ARGS[cls] = args
    _CLASSES[cls.__name__] = cls
    return cls


def module_spec(module: nn.Module) -> dict[str, Any]:
    """JSON description of ``module`` (allow-listed ``torch.nn`` classes and ``nn.Sequential`` of them)."""
    if type(module) is nn.Sequential:
        return {"type": "Sequential", "children": [module_spec(m) for m in module]}
    describe = _ARGS.get(type(module))
    if describe is None:
        allowed = ", ".join(sorted(_CLASSES))
        raise SlimkitError(f"cannot record a {type(module).__name__} replacement; supported: Sequential, {allowed}")
    args = describe(module)
    for k, v in args.items():
        if isinstance(v, tuple):
            args[k] = list(v)
    return {"type": type(module).__name__, "args": args}


def build_module(spec: dict[str, Any]) -> nn.Module:
    """Instantiate a module spec made by :func:`module_spec` (weights are initialised, not loaded)."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "Sequential":
        return nn.Sequential(*(build_module(c) for c in spec.get("children", [])))
    cls = _CLASSES.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise ModelFileError(
            f"module type {kind!r} is not allowed in a checkpoint; allowed: {', '.join(sorted(_CLASSES))}"
        )
    try:
        return cls(**spec.get("args", {}))
    except TypeError as exc:
        raise ModelFileError(f"bad arguments for {kind}: {exc}") from None


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, name = path.rpartition(".")
    try:
        parent = model.get_submodule(parent_path) if parent_path else model
        parent.get_submodule(name)
    except AttributeError:
        raise SlimkitError(f"model has no submodule {path!r}") from None
    return parent, name


def _record(model: nn.Module, change: dict[str, Any]) -> None:
    arch = arch_of(model)
    if arch is not None:
        set_arch(model, {**arch, "changes": [*arch.get("changes", []), change]})


def replace_module(model: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``path`` (e.g. ``"layer1.0.conv1"``) and record it; returns the old module."""
    parent, name = _parent(model, path)
    old = parent.get_submodule(name)
    spec = module_spec(new)  # fails before anything changes if ``new`` cannot be recorded
    setattr(parent, name, new)
    _record(model, {"op": "replace", "path": path, "module": spec})
    return old


def set_module_attr(model: nn.Module, path: str, attr: str, value: int | float | bool | str) -> None:
    """Set a plain attribute (e.g. an attention block's head count) and record it."""
    if not isinstance(value, int | float | bool | str):
        raise SlimkitError(f"only numbers, booleans and strings can be recorded, not {type(value).__name__}")
    target = model.get_submodule(path) if path else model
    if not hasattr(target, attr) or isinstance(getattr(target, attr), nn.Module | nn.Parameter):
        raise SlimkitError(f"{path or 'model'} has no plain attribute {attr!r}")
    setattr(target, attr, value)
    _record(model, {"op": "set", "path": path, "attr": attr, "value": value})


def tie_parameter(model: nn.Module, path: str, attr: str, source: str) -> None:
    """Make ``path.attr`` the very parameter ``source`` (e.g. an output layer tied to an embedding
    after both were rebuilt) and record it."""
    try:
        param = model.get_parameter(source)
    except AttributeError:
        raise SlimkitError(f"model has no parameter {source!r}") from None
    target = model.get_submodule(path) if path else model
    if not isinstance(getattr(target, attr, None), nn.Parameter) or getattr(target, attr).shape != param.shape:
        raise SlimkitError(f"cannot tie {path}.{attr} to {source}: not a parameter of shape {tuple(param.shape)}")
    setattr(target, attr, param)
    _record(model, {"op": "tie", "path": path, "attr": attr, "source": source})


def replay(model: nn.Module, changes: list[dict[str, Any]], where: str) -> None:
    """Apply recorded changes to a freshly built model (used by :func:`slimkit.load`)."""
    arch = copy.deepcopy(arch_of(model))
    for i, change in enumerate(changes):
        try:
            if change["op"] == "replace":
                replace_module(model, change["path"], build_module(change["module"]))
            elif change["op"] == "set":
                set_module_attr(model, change["path"], change["attr"], change["value"])
            elif change["op"] == "tie":
                tie_parameter(model, change["path"], change["attr"], change["source"])
            else:
                raise ModelFileError(f"unknown change {change['op']!r}")
        except (KeyError, TypeError, SlimkitError) as exc:
            raise ModelFileError(f"{where}: change {i} ({change}) cannot be replayed: {exc}") from None
    if arch is not None:
        set_arch(model, {**arch, "changes": list(changes)})
