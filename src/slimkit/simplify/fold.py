"""Exact inference-time clean-up: BatchNorm folding, Dropout/Identity removal, Linear merging.

Each pass leaves the eval-mode outputs unchanged up to float rounding, and every change goes
through :func:`slimkit.core.surgery.replace_module`, so a saved checkpoint replays it.

>>> import torch, slimkit as sk
>>> from slimkit.simplify import fold_
>>> model = sk.zoo.create("resnet_cifar", depth=8).eval()
>>> x = torch.rand(2, 3, 32, 32)
>>> before = model(x)
>>> record = sk.records(fold_(model, x))[-1]
>>> torch.allclose(before, model(x), atol=1e-5), len(record.details["bn_folded"])
(True, 9)
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from slimkit.core.surgery import build_module, module_spec, replace_module
from slimkit.core.transform import Config, TransformRecord, apply_, register_config, register_transform
from slimkit.evaluate.cost import count_params
from slimkit.simplify._trace import describe, fx_graph, leaf_shapes, module_calls, producer

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@register_config
@dataclasses.dataclass(frozen=True, kw_only=True)
class FoldConfig(Config):
    """Which exact clean-up passes to run (all by default)."""

    batchnorm: bool = True  # fold BatchNorm into the Conv/Linear that feeds it
    dropout: bool = True  # Dropout -> Identity (a no-op at inference)
    linear: bool = True  # merge Linear -> Linear with nothing between, when that does not add parameters
    identity: bool = True  # drop Identity placeholders from index-keyed nn.Sequential containers


def fold_(
    model: nn.Module,
    example_inputs: torch.Tensor | None = None,
    *,
    batchnorm: bool = True,
    dropout: bool = True,
    linear: bool = True,
    identity: bool = True,
) -> nn.Module:
    """Run the exact clean-up passes on ``model`` in place; the record is in ``slimkit.records(model)``.

    The result is for inference: folded BatchNorm no longer normalises with batch statistics.
    ``example_inputs`` lets the Linear -> BatchNorm1d pass check the Linear's output is (N, C).
    """
    config = FoldConfig(batchnorm=batchnorm, dropout=dropout, linear=linear, identity=identity)
    return apply_(model, config, example_inputs)


@register_transform(FoldConfig)
def _fold(model: nn.Module, config: FoldConfig, example_inputs: torch.Tensor | None) -> TransformRecord:
    record = TransformRecord("fold", config.to_dict())
    params_before = count_params(model)
    if config.dropout:
        _remove_dropout(model, record)
    if config.batchnorm:
        _fold_batchnorm(model, record, example_inputs)
    if config.linear:
        _merge_linears(model, record)
    if config.identity:
        _remove_identities(model, record)
    record.details |= {"params_before": params_before, "params_after": count_params(model), "inference_only": True}
    return record


# -- dropout ---------------------------------------------------------------------------------


def _remove_dropout(model: nn.Module, record: TransformRecord) -> None:
    removed = []
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Dropout) and name:
            replace_module(model, name, nn.Identity())
            removed.append(name)
    record.changed += removed
    record.details["dropout_removed"] = removed


# -- batchnorm -------------------------------------------------------------------------------


def fold_bn_weights(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of ``bn(layer(x))`` as one layer: ``W' = W * s``, ``b' = (b - mean) * s + beta``.

    ``s = gamma / sqrt(var + eps)`` per output channel; computed in float64, returned in the
    weight's dtype.
    """
    w = weight.detach().double()  # (out, in, *kernel) or (out, in)
    b = bias.detach().double() if bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    mean, var = bn.running_mean.double(), bn.running_var.double()  # (out,)
    gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)  # (out,)
    w = w * scale.view(-1, *([1] * (w.dim() - 1)))
    return w.to(weight.dtype), ((b - mean) * scale + beta).to(weight.dtype)


def _bn_skip_reason(
    model: nn.Module, bn_name: str, calls: dict, ndims: dict[str, int] | None
) -> tuple[str | None, str | None]:
    """(reason to skip, or None) and the name of the layer to fold into."""
    bn = model.get_submodule(bn_name)
    if not bn.track_running_stats or bn.running_mean is None:
        return "has no running statistics (track_running_stats=False)", None
    if len(calls.get(bn_name, [])) != 1:
        return f"is called {len(calls.get(bn_name, []))} times in the traced graph, not once", None
    src, crossed = producer(calls[bn_name][0], model)
    layer = model.get_submodule(str(src.target)) if getattr(src, "op", None) == "call_module" else None
    if not isinstance(layer, _FOLDABLE):
        return f"reads from {describe(src)}, not from a Conv1d/Conv2d/Linear", None
    name = str(src.target)
    if len(calls[name]) != 1:
        return f"its input layer {name} is called more than once (shared weights)", None
    if any(len(n.users) != 1 for n in [src, *crossed]):
        others = sorted(str(u) for u in src.users)
        return f"the output of {name} is also used elsewhere ({', '.join(others)})", None
    out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if out != bn.num_features:
        return f"{name} has {out} outputs but the BatchNorm normalises {bn.num_features}", None
    if isinstance(layer, nn.Linear):
        if ndims is None:
            return f"{name} is a Linear: pass example_inputs to check its output is (N, C)", None
        if ndims.get(name) != 2:
            return f"{name}'s output is not (N, C), so the BatchNorm does not normalise its features", None
    return None, name


def _fold_batchnorm(model: nn.Module, record: TransformRecord, example: torch.Tensor | None) -> None:
    folded: list[list[str]] = []
    norms = [n for n, m in model.named_modules() if isinstance(m, _NORMS)]
    record.details["bn_folded"] = folded
    if not norms:
        return
    graph, why = fx_graph(model)
    if graph is None:
        record.skipped |= dict.fromkeys(norms, why)
        return
    calls = module_calls(graph)
    ndims = {name: len(out) for name, _, out in leaf_shapes(model, example)} if example is not None else None
    for bn_name in norms:
        reason, layer_name = _bn_skip_reason(model, bn_name, calls, ndims)
        if reason is not None:
            record.skipped[bn_name] = reason
            continue
        layer, bn = model.get_submodule(layer_name), model.get_submodule(bn_name)
        weight, bias = fold_bn_weights(layer.weight, layer.bias, bn)
        spec = module_spec(layer)
        new = build_module({**spec, "args": {**spec["args"], "bias": True}}).to(layer.weight.device, layer.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(weight)
            new.bias.copy_(bias)
        replace_module(model, layer_name, new)
        replace_module(model, bn_name, nn.Identity())
        folded.append([layer_name, bn_name])
        record.changed += [layer_name, bn_name]


# -- linear merging --------------------------------------------------------------------------


def _merge_pair(a: nn.Linear, b: nn.Linear) -> nn.Linear:
    """One Linear equal to ``b(a(x))``: ``W = Wb @ Wa``, ``bias = Wb @ ba + bb``."""
    wa, wb = a.weight.detach().double(), b.weight.detach().double()  # (mid, in), (out, mid)
    bias = torch.zeros(b.out_features, dtype=torch.float64)
    if a.bias is not None:
        bias += wb @ a.bias.detach().double()
    if b.bias is not None:
        bias += b.bias.detach().double()
    merged = nn.Linear(a.in_features, b.out_features).to(a.weight.device, a.weight.dtype)
    with torch.no_grad():
        merged.weight.copy_((wb @ wa).to(a.weight.dtype))  # (out, in)
        merged.bias.copy_(bias.to(a.weight.dtype))
    return merged


def _merge_linears(model: nn.Module, record: TransformRecord) -> None:
    merged: list[list[str]] = []
    record.details["linear_merged"] = merged
    while True:  # one pair per round, re-traced, so chains A -> B -> C merge fully
        if not any(isinstance(m, nn.Linear) for m in model.modules()):
            return
        graph, why = fx_graph(model)
        if graph is None:
            record.details["linear_merge_not_analysed"] = why
            return
        calls = module_calls(graph)
        pair = None
        for b_name, nodes in calls.items():
            b = model.get_submodule(b_name)
            if not isinstance(b, nn.Linear) or len(nodes) != 1:
                continue
            src, crossed = producer(nodes[0], model)
            a_name = str(getattr(src, "target", ""))
            if getattr(src, "op", None) != "call_module" or not isinstance(model.get_submodule(a_name), nn.Linear):
                continue
            if len(calls[a_name]) != 1 or any(len(n.users) != 1 for n in [src, *crossed]):
                record.skipped[f"{a_name}+{b_name}"] = f"the output of {a_name} is used elsewhere too"
                continue
            a = model.get_submodule(a_name)
            now, after = count_params(a) + count_params(b), a.in_features * b.out_features + b.out_features
            if after > now:
                key = f"{a_name}+{b_name}"
                if key not in record.skipped:
                    record.skipped[key] = f"merging would grow parameters from {now:,} to {after:,} (a low-rank pair)"
                continue
            pair = (a_name, b_name)
            break
        if pair is None:
            return
        a_name, b_name = pair
        new = _merge_pair(model.get_submodule(a_name), model.get_submodule(b_name))
        replace_module(model, a_name, new)
        replace_module(model, b_name, nn.Identity())
        merged.append([a_name, b_name])
        record.changed += [a_name, b_name]


# -- identity removal ------------------------------------------------------------------------


def _remove_identities(model: nn.Module, record: TransformRecord) -> None:
    removed: list[str] = []
    record.details["identity_removed"] = removed
    containers = [n for n, m in model.named_modules() if type(m) is nn.Sequential]
    for name in sorted(containers, key=lambda n: -n.count(".") if n else 1):  # deepest first, root last
        seq = model.get_submodule(name) if name else model
        idle = [k for k, m in seq.named_children() if isinstance(m, nn.Identity)]
        if not idle:
            continue
        where = name or "the model"
        if not name:
            reason = "the model itself is this container; keep (costs nothing)"
        elif list(seq._modules) != [str(i) for i in range(len(seq))]:
            reason = f"{where} has named layers; removing it would rename them (costs nothing)"
        else:
            reason = None
        if reason is None:
            kept = [m for m in seq if not isinstance(m, nn.Identity)]
            new: nn.Module = nn.Sequential(*kept) if kept else nn.Identity()
            try:
                module_spec(new)
            except Exception as exc:  # noqa: BLE001  (a child that cannot be recorded: keep the container)
                reason = f"{where} holds a layer that cannot be recorded ({exc})"
            else:
                replace_module(model, name, new)
                removed += [f"{name}.{k}" for k in idle]
                record.changed.append(name)
                continue
        record.skipped |= {f"{name}.{k}" if name else k: reason for k in idle}
    for path, m in model.named_modules():
        if isinstance(m, nn.Identity) and path and path not in record.skipped:
            parent = path.rpartition(".")[0]
            owner = type(model.get_submodule(parent)).__name__
            record.skipped[path] = f"kept: {owner}.forward calls it by name (costs nothing)"
