"""Iterative pruning: prune a little, fine-tune, repeat (optionally distilling from the original).

Example::

    data = sk.data.load("mnist5k")
    steps = sk.prune.prune_iteratively(model, data, ChannelPruneConfig(target_macs=0.25), steps=3)
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from slimkit.core.errors import SlimkitError
from slimkit.core.transform import TransformRecord
from slimkit.evaluate.cost import count_macs, count_params
from slimkit.prune.structured import ChannelPruneConfig, prune_channels
from slimkit.train import History, fit


@dataclasses.dataclass
class StepResult:
    step: int
    record: TransformRecord
    history: History | None
    macs: int
    params: int


def step_configs(config: ChannelPruneConfig, steps: int) -> list[ChannelPruneConfig]:
    """Split one pruning goal into ``steps`` geometric steps (each keeps the same share)."""
    if steps < 1:
        raise SlimkitError(f"steps must be at least 1, got {steps}")
    if config.target_macs is not None or config.target_params is not None:
        share = {k: getattr(config, k) for k in ("target_macs", "target_params") if getattr(config, k) is not None}
        return [
            dataclasses.replace(config, **{k: v ** ((i + 1) / steps) for k, v in share.items()}) for i in range(steps)
        ]
    keep = 1 - config.ratio  # per step keep k such that k**steps = keep; ratios of the *current* widths
    step_ratio = 1 - keep ** (1 / steps)
    ratios = {k: 1 - (1 - v) ** (1 / steps) for k, v in config.ratios.items()}
    return [dataclasses.replace(config, ratio=step_ratio, ratios=ratios) for _ in range(steps)]


def prune_iteratively(
    model: nn.Module,
    data: Any,
    config: ChannelPruneConfig,
    *,
    steps: int = 3,
    finetune_epochs: int = 1,
    distill: bool = True,
    lr: float = 5e-4,
    on_step: Callable[[StepResult], None] | None = None,
    **fit_kwargs: Any,
) -> list[StepResult]:
    """Reach ``config``'s goal in ``steps`` prune + fine-tune rounds; returns one result per step.

    ``data`` is a :class:`slimkit.data.Dataset`. Targets (``target_macs``/``target_params``) are
    relative to the model as it is now. With ``distill``, fine-tuning learns from the unpruned
    model's logits (Hinton distillation) as well as the labels.
    """
    example = data.example
    macs0, params0 = count_macs(model, example), count_params(model)
    teacher = copy.deepcopy(model).eval() if distill and finetune_epochs else None
    results = []
    for i, cfg in enumerate(step_configs(config, steps), start=1):
        if cfg.target_macs is not None or cfg.target_params is not None:
            now_macs, now_params = count_macs(model, example), count_params(model)
            cfg = dataclasses.replace(
                cfg,
                target_macs=None if cfg.target_macs is None else min(1.0, cfg.target_macs * macs0 / now_macs),
                target_params=None if cfg.target_params is None else min(1.0, cfg.target_params * params0 / now_params),
            )
        record = prune_channels(model, cfg, example, data=data.train)
        history = None
        if finetune_epochs:
            history = fit(
                model,
                data.train,
                val=data.val,
                epochs=finetune_epochs,
                lr=lr,
                teacher=teacher,
                augment=data.augment,
                **fit_kwargs,
            )
        result = StepResult(i, record, history, count_macs(model, example), count_params(model))
        results.append(result)
        if on_step is not None:
            on_step(result)
    return results
