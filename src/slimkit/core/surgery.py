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

import torch
from torch import nn

from slimkit.core.errors import ModelFileError, SlimkitError, first_line
from slimkit.core.model import arch_of, set_arch


def _conv_args(m: nn.modules.conv._ConvNd) -> dict[str, Any]:
    return {
        "in_channels": m.in_channels,
        "out_channels": m.out_channels,
        "kernel_size": list(m.kernel_size),
        "stride": list(m.stride),
        "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
        "dilation": list(m.dilation),
        "groups": m.groups,
        "bias": m.bias is not None,
        "padding_mode": m.padding_mode,
    }


def _norm_args(m: nn.modules.batchnorm._BatchNorm) -> dict[str, Any]:
    return {
        "num_features": m.num_features,
        "eps": m.eps,
        "momentum": m.momentum,
        "affine": m.affine,
        "track_running_stats": m.track_running_stats,
    }


def _rnn_args(m: nn.RNNBase) -> dict[str, Any]:
    args = {
        "input_size": m.input_size,
        "hidden_size": m.hidden_size,
        "num_layers": m.num_layers,
        "bias": m.bias,
        "batch_first": m.batch_first,
        "dropout": m.dropout,
        "bidirectional": m.bidirectional,
    }
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
    },
    nn.Embedding: lambda m: {
        "num_embeddings": m.num_embeddings,
        "embedding_dim": m.embedding_dim,
        "padding_idx": m.padding_idx,
    },
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
    },
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
    check_module_spec(spec)
    return _build(spec)


def _build(spec: dict[str, Any]) -> nn.Module:
    kind = spec["type"]
    if kind == "Sequential":
        return nn.Sequential(*(_build(c) for c in spec.get("children", [])))
    try:
        return _CLASSES[kind](**spec.get("args", {}))
    except Exception as exc:  # torch.nn constructors raise several types for bad arguments
        raise ModelFileError(f"bad arguments for {kind}: {first_line(exc)}") from None


MAX_MODULE_DEPTH = 16  # nested Sequential levels in one recorded replacement
_PLAIN = (int, float, bool, str)


def check_module_spec(spec: Any, field: str = "module", depth: int = 0) -> None:
    """Raise a one-line :class:`ModelFileError` naming the field of ``spec`` that is not a valid module spec."""
    if not isinstance(spec, dict):
        raise ModelFileError(f"{field} must be an object with a 'type', got {_short(spec)}")
    kind = spec.get("type")
    if kind == "Sequential":
        children = spec.get("children", [])
        if not isinstance(children, list):
            raise ModelFileError(f"{field}.children must be a list, got {_short(children)}")
        if depth >= MAX_MODULE_DEPTH:
            raise ModelFileError(f"{field} nests Sequential modules more than {MAX_MODULE_DEPTH} levels deep")
        for i, child in enumerate(children):
            check_module_spec(child, f"{field}.children[{i}]", depth + 1)
        return
    if not isinstance(kind, str) or kind not in _CLASSES:
        raise ModelFileError(
            f"{field}: module type {_short(kind)} is not allowed in a checkpoint; allowed: Sequential, "
            f"{', '.join(sorted(_CLASSES))}"
        )
    args = spec.get("args", {})
    if not isinstance(args, dict):
        raise ModelFileError(f"{field}.args must be an object of constructor arguments, got {_short(args)}")
    for key, value in args.items():
        if key in ("device", "dtype"):
            raise ModelFileError(f"{field}.args: the argument {key!r} is not allowed in a checkpoint")
        items = value if isinstance(value, list) else [value]
        if not all(v is None or isinstance(v, _PLAIN) for v in items):
            raise ModelFileError(f"{field}.args.{key} must be a number, string or list of them, got {_short(value)}")


def check_change(change: Any, field: str = "change") -> None:
    """Raise a one-line :class:`ModelFileError` naming the field of a recorded change that is malformed."""
    if not isinstance(change, dict):
        raise ModelFileError(f"{field} must be an object with an 'op', got {_short(change)}")
    op = change.get("op")
    needs = {"replace": ("path",), "set": ("path", "attr"), "tie": ("path", "attr", "source"), "resize": ("path",)}
    if not isinstance(op, str) or op not in needs:
        raise ModelFileError(f"{field}.op must be 'replace', 'set', 'tie' or 'resize', got {_short(op)}")
    for key in needs[op]:
        if not isinstance(change.get(key), str):
            raise ModelFileError(f"{field}.{key} must be a string, got {_short(change.get(key))}")
    if op == "replace":
        if not change["path"]:
            raise ModelFileError(f"{field}.path must name a submodule, got ''")
        check_module_spec(change.get("module"), f"{field}.module")
    if op == "resize":
        _check_resize(change, field)
    if op in ("set", "tie") and (not change["attr"].isidentifier() or change["attr"].startswith("_")):
        raise ModelFileError(f"{field}.attr must be a public attribute name, got {_short(change['attr'])}")
    if op == "set" and (change.get("value") is None or not isinstance(change["value"], _PLAIN)):
        raise ModelFileError(f"{field}.value must be a number, boolean or string, got {_short(change.get('value'))}")


MAX_RESIZE_ELEMENTS = 2**34  # elements of one resized tensor (the file's own tensors are checked again on load)


def _check_resize(change: dict[str, Any], field: str) -> None:
    for key in ("shapes", "attrs"):
        value = change.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(k, str) and k.isidentifier() for k in value):
            raise ModelFileError(f"{field}.{key} must be an object keyed by attribute names, got {_short(value)}")
    for attr, shape in change.get("shapes", {}).items():
        ok = isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
        if not ok or len(shape) > 8 or _numel(shape) > MAX_RESIZE_ELEMENTS:
            raise ModelFileError(f"{field}.shapes.{attr} must be a list of at most 8 sizes, got {_short(shape)}")
    for attr, value in change.get("attrs", {}).items():
        items = value if isinstance(value, list) else [value]
        if attr.startswith("_") or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in items):
            raise ModelFileError(f"{field}.attrs.{attr} must be a size (an integer or a list of them)")


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


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
    if not isinstance(getattr(target, attr, None), int | float | bool | str):  # not a module, tensor or method
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


def resize_module(
    model: nn.Module, path: str, tensors: dict[str, torch.Tensor], attrs: dict[str, Any] | None = None
) -> None:
    """Give layer ``path`` new parameters / buffers (by attribute name) and size attributes, and record
    the new shapes: the layer keeps its class, so any layer type can be resized and reloaded."""
    module = model.get_submodule(path) if path else model
    attrs = dict(attrs or {})
    for attr in attrs:
        old = getattr(module, attr, None)
        if not isinstance(old, int | tuple | list) or isinstance(old, bool):
            raise SlimkitError(f"{path or 'model'}.{attr} is not a size attribute (found {type(old).__name__})")
    for attr, t in tensors.items():
        if attr in module._parameters:
            old = module._parameters[attr]
            module._parameters[attr] = nn.Parameter(t, requires_grad=old.requires_grad if old is not None else True)
        elif attr in module._buffers:
            module._buffers[attr] = t
        else:
            raise SlimkitError(f"{path or 'model'} has no parameter or buffer {attr!r}")
    for attr, value in attrs.items():
        setattr(module, attr, type(getattr(module, attr))(value) if isinstance(value, list | tuple) else value)
    _record(
        model,
        {
            "op": "resize",
            "path": path,
            "shapes": {a: list(t.shape) for a, t in tensors.items()},
            "attrs": {a: list(v) if isinstance(v, tuple | list) else v for a, v in attrs.items()},
        },
    )


def _replay_resize(model: nn.Module, change: dict[str, Any]) -> None:
    module = model.get_submodule(change["path"]) if change["path"] else model
    tensors = {}
    for attr, shape in change.get("shapes", {}).items():
        old = module._parameters.get(attr, module._buffers.get(attr))
        if old is None:
            raise SlimkitError(f"{change['path']} has no parameter or buffer {attr!r}")
        tensors[attr] = torch.empty(shape, dtype=old.dtype, device=old.device)
    resize_module(model, change["path"], tensors, change.get("attrs", {}))


def replay(model: nn.Module, changes: list[dict[str, Any]], where: str, field: str = "changes") -> None:
    """Apply recorded changes to a freshly built model (used by :func:`slimkit.load`).

    Every record is checked first (:func:`check_change`); ``field`` names the list in errors.
    """
    if not isinstance(changes, list):
        raise ModelFileError(f"{where}: {field} must be a list of changes, got {_short(changes)}")
    for i, change in enumerate(changes):
        try:
            check_change(change, f"{field}[{i}]")
        except ModelFileError as exc:
            raise ModelFileError(f"{where}: {exc}") from None
    arch = copy.deepcopy(arch_of(model))
    for i, change in enumerate(changes):
        try:
            if change["op"] == "replace":
                replace_module(model, change["path"], build_module(change["module"]))
            elif change["op"] == "resize":
                _replay_resize(model, change)
            elif change["op"] == "set":
                set_module_attr(model, change["path"], change["attr"], change["value"])
            else:
                tie_parameter(model, change["path"], change["attr"], change["source"])
        except (KeyError, TypeError, ValueError, AttributeError, SlimkitError) as exc:
            raise ModelFileError(
                f"{where}: change {i} ({_short(change)}) cannot be replayed: {first_line(exc)}"
            ) from None
    if arch is not None:
        set_arch(model, {**arch, "changes": list(changes)})
