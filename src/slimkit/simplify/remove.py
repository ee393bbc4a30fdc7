"""Layer and block removal with shape repair.

Removing a layer changes every shape after it. :func:`remove_layers_` replaces the chosen layers
by pass-throughs, re-runs the model on example inputs and repairs each layer whose input no
longer fits (a Linear's in-features, a Conv's in-channels): by transferring the old weights where
a spatial mapping exists, otherwise by re-initialising it. The record lists every repaired layer
and the parameter / MAC counts before and after, growth included.

>>> import torch, slimkit as sk
>>> from slimkit.simplify import remove_layers_
>>> model = sk.zoo.create("seed_cnn", width=0.25)
>>> record = sk.records(remove_layers_(model, torch.rand(2, 1, 28, 28), types=["MaxPool2d"]))[-1]
>>> record.details["repaired"]["fc1"]
{'type': 'Linear', 'in': [400, 9216], 'how': 'transfer [16, 5, 5] -> [16, 24, 24]'}
>>> record.details["params_before"], record.details["params_after"]  # fc1 grows 23x
(107706, 2364602)
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
from typing import Any

import torch
from torch import nn

from slimkit.core.errors import SlimkitError, first_line
from slimkit.core.model import arch_of, eval_mode, example_input, set_arch
from slimkit.core.surgery import Skip, build_module, module_spec, replace_module
from slimkit.core.transform import (
    Config,
    TransformRecord,
    apply_,
    register_config,
    register_transform,
    select,
)
from slimkit.evaluate.cost import count_macs, count_params
from slimkit.simplify._trace import leaf_shapes

REPAIRS = ("transfer", "init")


@register_config
@dataclasses.dataclass(frozen=True, kw_only=True)
class RemoveLayersConfig(Config):
    """Remove layers by name (``"pool1"``, ``"re:.*pool.*"``) and/or by type name (``"MaxPool2d"``).

    ``repair``: ``"transfer"`` maps the old weights of a repaired Linear onto its new input grid
    when the feature map before it has the same channels (nearest-neighbour resize, each weight
    split evenly over the positions it now covers), else re-initialises; ``"init"`` always
    re-initialises (seeded by ``seed``).
    """

    names: list[str] | None = None
    types: list[str] | None = None
    repair: str = "transfer"
    seed: int = 0


@register_config
@dataclasses.dataclass(frozen=True, kw_only=True)
class RemoveBlocksConfig(Config):
    """Replace residual blocks by their identity path (``"layer2.1"``, ``"re:blocks\\.[01]"``)."""

    names: list[str]


def remove_layers_(
    model: nn.Module,
    example_inputs: torch.Tensor | None = None,
    *,
    names: list[str] | None = None,
    types: list[str] | None = None,
    repair: str = "transfer",
    seed: int = 0,
) -> nn.Module:
    """Remove layers in place and repair the shapes after them (see the module doc); returns the model.

    The record (``slimkit.records(model)[-1]``) lists the removed and repaired layers and the
    params / MACs before and after.
    """
    return apply_(model, RemoveLayersConfig(names=names, types=types, repair=repair, seed=seed), example_inputs)


def remove_blocks_(model: nn.Module, names: list[str], example_inputs: torch.Tensor | None = None) -> nn.Module:
    """Replace the named residual blocks by their identity paths, in place; returns the model."""
    return apply_(model, RemoveBlocksConfig(names=names), example_inputs)


# -- what replaces a removed layer or block ----------------------------------------------------


def _takes_extra_args(module: nn.Module) -> bool:
    params = list(inspect.signature(module.forward).parameters.values())
    required = [p for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(required) > 1


def pass_through(module: nn.Module) -> nn.Module:
    """``nn.Identity()``, or ``Skip()`` when the module's forward takes extra arguments."""
    return Skip() if _takes_extra_args(module) else nn.Identity()


def identity_path(block: nn.Module) -> nn.Module | None:
    """What a residual block becomes without its residual branch, or None when it is not one.

    - a block with a ``shortcut`` (ResNet ``BasicBlock``): ``Identity`` for an identity shortcut,
      else a copy of the shortcut (1x1 conv + BN) followed by the block's final ReLU;
    - a MobileNetV2 inverted residual with ``use_residual``: ``Identity``;
    - a transformer encoder block (``x + f(x)`` with extra arguments): ``Skip``.
    """
    kind = type(block).__name__
    shortcut = getattr(block, "shortcut", None)
    if isinstance(shortcut, nn.Module):
        if isinstance(shortcut, nn.Identity):
            return nn.Identity()
        parts = list(shortcut) if type(shortcut) is nn.Sequential else [shortcut]
        relu = [nn.ReLU()] if isinstance(getattr(block, "relu2", None), nn.ReLU) else []
        return nn.Sequential(*copy.deepcopy(parts), *relu)
    if kind == "InvertedResidual":
        return nn.Identity() if getattr(block, "use_residual", False) else None
    if kind == "EncoderBlock":
        return Skip()
    return None


def removable_blocks(model: nn.Module) -> list[str]:
    """Names of the residual blocks that :class:`RemoveBlocksConfig` can remove."""
    return [n for n, m in model.named_modules() if n and identity_path(m) is not None]


# -- shape repair ----------------------------------------------------------------------------


class _Mismatch(Exception):
    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        super().__init__(name)
        self.name, self.shape = name, shape


def _expects(m: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``m`` can take ``x`` as far as its input width goes."""
    if isinstance(m, nn.Linear):
        return x.shape[-1] == m.in_features
    if isinstance(m, nn.Conv1d | nn.Conv2d):
        return x.dim() != m.weight.dim() or x.shape[1] == m.in_channels
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return x.dim() < 2 or x.shape[1] == m.num_features
    if isinstance(m, nn.LayerNorm):
        return tuple(x.shape[-len(m.normalized_shape) :]) == tuple(m.normalized_shape)
    return True


def _run_checked(model: nn.Module, example: torch.Tensor) -> tuple[_Mismatch | None, list]:
    """Run ``model``; stop at the first layer whose input width no longer fits. Returns it and the shapes seen."""
    seen: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    handles = []
    for name, m in model.named_modules():
        if not name or list(m.children()):
            continue

        def pre(mod: nn.Module, args: tuple, name: str = name) -> None:
            if args and isinstance(args[0], torch.Tensor) and not _expects(mod, args[0]):
                raise _Mismatch(name, tuple(args[0].shape))

        def post(_m: nn.Module, args: tuple, out: Any, name: str = name) -> None:
            if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                seen.append((name, tuple(args[0].shape), tuple(out.shape)))

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with eval_mode(model), torch.no_grad():
            model(example)
    except _Mismatch as mismatch:
        return mismatch, seen
    finally:
        for h in handles:
            h.remove()
    return None, seen


def _feature_map(seen: list, before: str | None, numel: int) -> tuple[int, ...] | None:
    """The last (C, *spatial) output before layer ``before`` with ``numel`` values per sample."""
    names = [s[0] for s in seen]
    end = names.index(before) if before in names else len(seen)
    for _, _, out in reversed(seen[:end]):
        if len(out) >= 3 and math.prod(out[1:]) == numel:
            return out[1:]
    return None


def transfer_linear(weight: torch.Tensor, old_map: tuple[int, ...], new_map: tuple[int, ...]) -> torch.Tensor:
    """Map a Linear's weights from a flattened (C, *old) input to a flattened (C, *new) one.

    Each new position reads the old position it falls in (nearest-neighbour resize) and the old
    weight is split evenly over the new positions that share it, so a map that is the old one
    upsampled gives the same output.
    """
    c = old_map[0]
    w = weight.detach().reshape(weight.shape[0], c, *old_map[1:])  # (out, C, *old)
    for axis, (o, n) in enumerate(zip(old_map[1:], new_map[1:], strict=True)):
        idx = torch.arange(n) * o // n  # new position -> old position
        counts = torch.bincount(idx, minlength=o).to(w.dtype)  # new positions per old one
        w = w.index_select(2 + axis, idx) / counts[idx].view(-1, *([1] * (len(old_map) - 2 - axis)))
    return w.reshape(weight.shape[0], -1)  # (out, C * prod(new))


def _repair(
    model: nn.Module, mismatch: _Mismatch, old_seen: list, new_seen: list, how: str, seed: int
) -> dict[str, Any]:
    name, shape = mismatch.name, mismatch.shape
    layer = model.get_submodule(name)
    spec = module_spec(layer)
    old_shape = next((i for n, i, _ in old_seen if n == name), None)
    if old_shape is not None and len(old_shape) != len(shape):
        why = f"its input changed from {list(old_shape)} to {list(shape)}, not just in width"
        raise SlimkitError(f"layer {name} ({type(layer).__name__}) cannot be repaired: {why}")
    if isinstance(layer, nn.Linear):
        old_in, new_in = layer.in_features, shape[-1]
        args = {"in_features": new_in}
    elif isinstance(layer, nn.Conv1d | nn.Conv2d) and layer.groups == 1:
        old_in, new_in = layer.in_channels, shape[1]
        args = {"in_channels": new_in}
    else:
        why = f"its input is now {list(shape)}"
        raise SlimkitError(f"layer {name} ({type(layer).__name__}) cannot be repaired: {why}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        new = build_module({**spec, "args": {**spec["args"], **args}}).to(layer.weight.device, layer.weight.dtype)
    used = "init"
    if how == "transfer" and isinstance(layer, nn.Linear):
        old_map, new_map = _feature_map(old_seen, name, old_in), _feature_map(new_seen, None, new_in)
        if old_map and new_map and old_map[0] == new_map[0] and len(old_map) == len(new_map):
            with torch.no_grad():
                new.weight.copy_(transfer_linear(layer.weight, old_map, new_map))
                if layer.bias is not None:
                    new.bias.copy_(layer.bias)
            used = f"transfer {list(old_map)} -> {list(new_map)}"
    replace_module(model, name, new)
    return {"type": type(layer).__name__, "in": [old_in, new_in], "how": used}


def _resolve_example(model: nn.Module, example: torch.Tensor | None, what: str) -> torch.Tensor:
    example = example if example is not None else example_input(model)
    if example is None:
        raise SlimkitError(f"{what} needs example_inputs (a batch the model takes) to trace shapes")
    return example


def _replace_and_repair(
    model: nn.Module,
    targets: dict[str, nn.Module],
    example: torch.Tensor,
    record: TransformRecord,
    how: str,
    seed: int,
) -> None:
    """Replace ``targets`` (name -> new module), repair shapes, fill ``record``; all or nothing."""
    arch = copy.deepcopy(arch_of(model))
    old_seen = leaf_shapes(model, example)
    with eval_mode(model), torch.no_grad():
        old_out = model(example)
    params, macs = count_params(model), count_macs(model, example)
    originals: list[tuple[str, nn.Module]] = []
    try:
        for name, new in targets.items():
            originals.append((name, replace_module(model, name, new)))
        repaired: dict[str, Any] = {}
        for _ in range(len(list(model.modules())) + 1):
            mismatch, new_seen = _run_checked(model, example)
            if mismatch is None:
                break
            if mismatch.name in repaired or mismatch.name in targets:
                raise SlimkitError(f"layer {mismatch.name} still does not fit its input {list(mismatch.shape)}")
            originals.append((mismatch.name, model.get_submodule(mismatch.name)))
            repaired[mismatch.name] = _repair(model, mismatch, old_seen, new_seen, how, seed)
        with eval_mode(model), torch.no_grad():
            out = model(example)
        if isinstance(old_out, torch.Tensor) and tuple(out.shape) != tuple(old_out.shape):
            raise SlimkitError(f"the model's output shape would change from {list(old_out.shape)} to {list(out.shape)}")
    except SlimkitError as exc:
        _restore(model, originals, arch)
        raise SlimkitError(f"cannot remove {', '.join(targets)}: {exc}") from None
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        _restore(model, originals, arch)
        first = first_line(exc)
        raise SlimkitError(f"cannot remove {', '.join(targets)}: the model no longer runs ({first})") from None
    record.changed += [*targets, *repaired]
    record.details |= {
        "removed": {n: type(m).__name__ for n, m in originals[: len(targets)]},
        "repaired": repaired,
        "params_before": params,
        "params_after": count_params(model),
        "macs_before": macs,
        "macs_after": count_macs(model, example),
    }


def _restore(model: nn.Module, originals: list[tuple[str, nn.Module]], arch: dict | None) -> None:
    for name, module in reversed(originals):
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, module)
    if arch is not None:
        set_arch(model, arch)


@register_transform(RemoveLayersConfig)
def _remove_layers(model: nn.Module, config: RemoveLayersConfig, example: torch.Tensor | None) -> TransformRecord:
    if config.repair not in REPAIRS:
        raise SlimkitError(f"unknown repair {config.repair!r}; choose {' or '.join(REPAIRS)}")
    if not config.names and not config.types:
        raise SlimkitError("say which layers to remove: names=[...] and/or types=[...] (e.g. MaxPool2d)")
    example = _resolve_example(model, example, "layer removal")
    chosen = select(model, config.names) if config.names else []
    if config.types:
        known = {type(m).__name__ for m in model.modules()}
        for t in config.types:
            if t not in known:
                raise SlimkitError(f"the model has no {t} layer; its layer types: {', '.join(sorted(known))}")
        chosen += [n for n, m in model.named_modules() if n and type(m).__name__ in config.types and n not in chosen]
    # a layer inside another chosen one goes with it
    chosen = [n for n in chosen if not any(n.startswith(p + ".") for p in chosen)]
    record = TransformRecord("remove_layers", config.to_dict())
    targets = {n: pass_through(model.get_submodule(n)) for n in chosen}
    _replace_and_repair(model, targets, example, record, config.repair, config.seed)
    return record


@register_transform(RemoveBlocksConfig)
def _remove_blocks(model: nn.Module, config: RemoveBlocksConfig, example: torch.Tensor | None) -> TransformRecord:
    example = _resolve_example(model, example, "block removal")
    candidates = removable_blocks(model)
    chosen = select(model, config.names)
    if not chosen:
        raise SlimkitError(f"no blocks selected by {config.names}; removable: {', '.join(candidates[:8]) or 'none'}")
    targets = {}
    for name in chosen:
        path = identity_path(model.get_submodule(name))
        if path is None:
            known = ", ".join(candidates[:8]) or "none"
            raise SlimkitError(f"{name} is not a residual block with an identity path; removable: {known}")
        targets[name] = path
    record = TransformRecord("remove_blocks", config.to_dict())
    record.details["replaced_by"] = {n: module_spec(m)["type"] for n, m in targets.items()}
    _replace_and_repair(model, targets, example, record, "init", 0)  # identity paths keep shapes: no repairs
    return record
