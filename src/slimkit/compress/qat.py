"""Quantization-aware training: fine-tune a model while it sees the int8 rounding it will be deployed with.

:func:`fake_quantized` makes every ``nn.Conv*d`` and ``nn.Linear`` of a PyTorch model compute as
ONNX Runtime's int8 will: weights rounded per output channel to symmetric int8 (scale
``max|w| / 127``, the scheme :func:`slimkit.compress.quantize` asks ONNX Runtime for), inputs
rounded per tensor to uint8 over a running min / max range (static mode: the range a calibration
would find; dynamic mode: each batch's own range, as ONNX Runtime quantizes at run time). The
rounding passes gradients straight through (the straight-through estimator of min-max QAT). We
chose min-max over learned scales (LSQ): the deployed file is made by ONNX Runtime's post-training
quantizer from the fine-tuned fp32 weights, and it recomputes scales by min / max; scales learned in
training would be thrown away there. On leaving the block the model is an ordinary fp32 model again
(no hooks, no extra parameters) whose weights now quantize with less loss.

Use it around any training loop, yours included::

    with fake_quantized(model):
        my_train(model)                               # or slimkit.train.fit(model, data.train, ...)
    quantize(model, data, QuantizeConfig(), "model.int8.onnx")

In :func:`slimkit.optimize.optimize`, a :class:`QATConfig` right after the recipe's
``QuantizeConfig`` is its recovery: run only when post-training int8 breaks the quality constraint
(the automatic recipe adds one). Fold BatchNorm first (the optimize loop does): a convolution's
rounding is simulated on its own weight, which folding would change.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
from torch import nn

from slimkit.core.errors import SlimkitError
from slimkit.core.transform import Config, register_config

QUANTIZED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@register_config
@dataclasses.dataclass(frozen=True, kw_only=True)
class QATConfig(Config):
    """Quantization-aware fine-tuning: ``epochs`` (of ``steps_per_epoch`` batches when given) at
    ``lr``, distilled from the original model when ``distill``; ``momentum`` is the weight of each
    batch in the running activation ranges (static mode)."""

    epochs: int = 2
    steps_per_epoch: int | None = None
    lr: float = 1e-4
    distill: bool = True
    momentum: float = 0.01

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise SlimkitError(f"QAT epochs must be at least 1, got {self.epochs}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise SlimkitError(f"steps_per_epoch must be at least 1, got {self.steps_per_epoch}")
        if self.lr <= 0:
            raise SlimkitError(f"QAT lr must be positive, got {self.lr}")
        if not 0 < self.momentum <= 1:
            raise SlimkitError(f"momentum must be in (0, 1], got {self.momentum}")


class _InputRange:
    """The uint8 range of a layer's input and its fake quantization (a forward pre-hook): each batch's
    own range (``dynamic``), or a running range updated in training and frozen in evaluation."""

    def __init__(self, dynamic: bool, momentum: float) -> None:
        self.dynamic, self.momentum = dynamic, momentum
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        if not torch.is_floating_point(x):
            return args
        lo, hi = x.detach().min().clamp(max=0), x.detach().max().clamp(min=0)  # the range holds 0
        if self.dynamic or self.lo is None:
            self.lo, self.hi = lo, hi
        elif module.training:
            self.lo = self.lo + self.momentum * (lo - self.lo)
            self.hi = self.hi + self.momentum * (hi - self.hi)
        scale = float((self.hi - self.lo).clamp(min=1e-8)) / 255
        zero = min(255, max(0, round(-float(self.lo) / scale)))
        return (torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255), *args[1:])


class _WeightRounding(nn.Module):
    """A parametrization: the weight rounded to symmetric int8, per output channel or per tensor."""

    def __init__(self, per_channel: bool, qmax: int) -> None:
        super().__init__()
        self.per_channel, self.qmax = per_channel, qmax

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.per_channel:
            scale = (w.detach().abs().flatten(1).amax(1) / self.qmax).clamp(min=1e-12)
            zero = torch.zeros(len(scale), dtype=torch.int32, device=w.device)
            return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -self.qmax, self.qmax)
        scale = float(w.detach().abs().max().clamp(min=1e-12)) / self.qmax
        return torch.fake_quantize_per_tensor_affine(w, scale, 0, -self.qmax, self.qmax)


@contextlib.contextmanager
def fake_quantized(
    model: nn.Module,
    *,
    mode: str = "static",
    per_channel: bool = True,
    reduce_range: bool = False,
    momentum: float = 0.01,
) -> Iterator[list[str]]:
    """Inside the block, ``model``'s convolutions and Linear layers compute with int8-rounded weights
    and uint8-rounded inputs (see the module docstring); yields the names of the layers simulated.
    ``mode``: ``"static"`` (running input ranges, ``momentum`` per batch) or ``"dynamic"`` (each
    batch's own range); ``reduce_range``: 7-bit weights, as the quantizer uses on CPUs without VNNI.
    On leaving (also on an error) every hook and parametrization is removed and the trained weights
    stay in the model."""
    from torch.nn.utils import parametrize

    if mode not in ("static", "dynamic"):
        raise SlimkitError(f"fake_quantized simulates static or dynamic int8, got mode {mode!r}")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QUANTIZED)}
    if not layers:
        raise SlimkitError("quantization-aware training found no convolution or Linear layer to simulate")
    bad = [n for n, m in layers.items() if parametrize.is_parametrized(m)]
    if bad:
        raise SlimkitError(f"{bad[0]} already has a parametrization (clustered or tied weights?); remove it first")
    qmax = 63 if reduce_range else 127
    hooks = []
    try:
        for m in layers.values():
            parametrize.register_parametrization(m, "weight", _WeightRounding(per_channel, qmax))
            hooks.append(m.register_forward_pre_hook(_InputRange(mode == "dynamic", momentum)))
        yield list(layers)
    finally:
        for h in hooks:
            h.remove()
        for m in layers.values():
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
