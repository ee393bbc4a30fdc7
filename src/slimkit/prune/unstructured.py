"""Unstructured (magnitude) and N:M sparsity: weights are zeroed, not removed.

Masks are attached as ``torch.nn.utils.parametrize`` parametrizations, so fine-tuning with
:func:`slimkit.train.fit` keeps the pruned weights at zero; :func:`slimkit.save` stores the
effective (masked) weights, and sparse tensors are written as a bitmask plus their non-zero values,
so the file really shrinks. Dense CPU kernels do not run faster on zeros: the gain is file size
(and N:M patterns for hardware with sparse kernels), which the records say.

>>> import torch, slimkit as sk
>>> from slimkit.prune import MagnitudePruneConfig
>>> model = sk.apply_(sk.zoo.create("lenet5"), MagnitudePruneConfig(sparsity=0.9))
>>> round(float((model.fc1.weight == 0).float().mean()), 2) >= 0.9
True
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn.utils import parametrize

from slimkit.core.errors import SlimkitError
from slimkit.core.transform import Config, TransformRecord, register_config, register_transform, select

NOTE = (
    "zeros shrink the saved file but dense CPU kernels do not run faster on them; "
    "use structured pruning (ChannelPruneConfig) for speed"
)


class Mask(nn.Module):
    """Parametrization ``weight = original * mask`` (the mask is a buffer, not trained)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


@register_config
@dataclasses.dataclass(frozen=True, kw_only=True)
class MagnitudePruneConfig(Config):
    """Zero the ``sparsity`` share of smallest-magnitude weights of Conv/Linear layers.

    ``scope="global"`` ranks all selected weights together (layers end with different
    sparsities); ``"layer"`` gives every layer the same sparsity. ``layers`` selects layers (names or
    ``re:`` patterns; default all Conv/Linear), ``protected`` excludes some.
    """

    sparsity: float = 0.5
    scope: str = "global"
    layers: list[str] | None = None
    protected: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise SlimkitError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.scope not in ("global", "layer"):
            raise SlimkitError(f"scope must be 'global' or 'layer', got {self.scope!r}")


@register_config
@dataclasses.dataclass(frozen=True, kw_only=True)
class NMSparsityConfig(Config):
    """Keep the ``n`` largest of every ``m`` consecutive input weights (2:4 by default)."""

    n: int = 2
    m: int = 4
    layers: list[str] | None = None
    protected: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0 < self.n < self.m:
            raise SlimkitError(f"N:M sparsity needs 0 < n < m, got {self.n}:{self.m}")


_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _targets(model: nn.Module, layers: list[str] | None, protected: list[str]) -> list[str]:
    chosen = select(model, layers, _WEIGHTED)
    skip = set(select(model, protected, _WEIGHTED)) if protected else set()
    return [n for n in chosen if n not in skip]


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    """The effective weight (already masked if the layer was pruned before)."""
    return model.get_submodule(name).weight.detach()


def _attach(model: nn.Module, name: str, mask: torch.Tensor) -> None:
    module = model.get_submodule(name)
    if parametrize.is_parametrized(module, "weight"):
        for p in module.parametrizations.weight:
            if isinstance(p, Mask):  # tighten the existing mask
                p.mask.mul_(mask)
                return
    parametrize.register_parametrization(module, "weight", Mask(mask))


def magnitude_masks(model: nn.Module, config: MagnitudePruneConfig) -> dict[str, torch.Tensor]:
    names = _targets(model, config.layers, config.protected)
    if not names:
        raise SlimkitError("no Conv/Linear layer selected for magnitude pruning")
    weights = {n: _weight(model, n).abs() for n in names}
    if config.scope == "global":
        flat = torch.cat([w.reshape(-1) for w in weights.values()])
        k = int(config.sparsity * flat.numel())
        threshold = flat.kthvalue(k).values if k > 0 else flat.min() - 1
        return {n: (w > threshold).float() for n, w in weights.items()}
    masks = {}
    for n, w in weights.items():
        k = int(config.sparsity * w.numel())
        threshold = w.reshape(-1).kthvalue(k).values if k > 0 else w.min() - 1
        masks[n] = (w > threshold).float()
    return masks


def nm_masks(model: nn.Module, config: NMSparsityConfig) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    masks, skipped = {}, {}
    for name in _targets(model, config.layers, config.protected):
        w = _weight(model, name)
        rows = w.reshape(w.shape[0], -1)  # (out, in * kernel): groups run along the input
        if rows.shape[1] % config.m:
            skipped[name] = f"{rows.shape[1]} inputs per output is not a multiple of {config.m}"
            continue
        groups = rows.abs().reshape(rows.shape[0], -1, config.m)  # (out, in / m, m)
        keep = groups.topk(config.n, dim=-1).indices
        mask = torch.zeros_like(groups).scatter_(-1, keep, 1.0)
        masks[name] = mask.reshape(w.shape)
    return masks, skipped


def sparsity(model: nn.Module) -> dict[str, float]:
    """Share of zero weights per Conv/Linear layer."""
    return {n: float((m.weight == 0).float().mean()) for n, m in model.named_modules() if isinstance(m, _WEIGHTED)}


def _record(
    model: nn.Module, config: Config, masks: dict[str, torch.Tensor], skipped: dict[str, str]
) -> TransformRecord:
    for name, mask in masks.items():
        _attach(model, name, mask)
    levels = sparsity(model)
    return TransformRecord(
        transform=type(config).__name__,
        config=config.to_dict(),
        changed=sorted(masks),
        skipped=skipped,
        details={"sparsity": {n: levels[n] for n in masks}, "note": NOTE},
    )


@register_transform(MagnitudePruneConfig)
def _apply_magnitude(
    model: nn.Module, config: MagnitudePruneConfig, example_inputs: torch.Tensor | None
) -> TransformRecord:
    return _record(model, config, magnitude_masks(model, config), {})


@register_transform(NMSparsityConfig)
def _apply_nm(model: nn.Module, config: NMSparsityConfig, example_inputs: torch.Tensor | None) -> TransformRecord:
    masks, skipped = nm_masks(model, config)
    if not masks:
        raise SlimkitError(
            f"no layer can take {config.n}:{config.m} sparsity: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    return _record(model, config, masks, skipped)


def bake(model: nn.Module) -> nn.Module:
    """Remove the masks, keeping the masked weights (done automatically by :func:`slimkit.save`)."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model
