"""Recipes: an ordered list of transform configs that the optimizer applies, recovers and checks.

A recipe file (JSON or YAML) lists steps; each step is a config dataclass, written either as
``{"type": "FineTuneConfig", "epochs": 3}`` or as ``{"FineTuneConfig": {"epochs": 3}}``::

    steps:
      - SensitivityPruneConfig: {target_macs: 0.25, rounds: 2}
      - FineTuneConfig: {epochs: 4}
      - FoldConfig: {}
      - QuantizeConfig: {mode: static}
      - QATConfig: {epochs: 2}

Usable configs: :class:`slimkit.prune.ChannelPruneConfig` (its ``target_macs`` / ``target_params``
are read as shares of the *original* model), :class:`SensitivityPruneConfig` (non-uniform widths
from measured sensitivity), :class:`slimkit.compress.LowRankConfig`, :class:`slimkit.simplify.FoldConfig`,
:class:`FineTuneConfig` and :class:`slimkit.compress.QuantizeConfig` (last: it produces the int8
ONNX file). A fine-tune step right after a compressing step is that step's recovery: it runs after
each round and attempt of the step, before the step is validated. A
:class:`slimkit.compress.QATConfig` after ``QuantizeConfig`` is the int8's recovery: when the
post-training int8 file breaks the quality constraint, the model is fine-tuned quantization-aware
and quantized again.

>>> r = Recipe.from_dict({"steps": [{"SensitivityPruneConfig": {"target_macs": 0.25}}, {"type": "FineTuneConfig"}]})
>>> [type(s).__name__ for s in r.steps]
['SensitivityPruneConfig', 'FineTuneConfig']
>>> Recipe.from_dict(r.to_dict()) == r
True
"""

from __future__ import annotations

import dataclasses
import json
import reprlib
from pathlib import Path
from typing import Any

from slimkit.compress import LowRankConfig, QATConfig, QuantizeConfig
from slimkit.core.errors import SlimkitError
from slimkit.core.transform import Config, register_config
from slimkit.optimize.target import Target
from slimkit.prune import ChannelPruneConfig
from slimkit.prune import importance as imp
from slimkit.simplify import FoldConfig
from slimkit.train import DistillConfig

ALLOCATIONS = ("sensitivity", "uniform", "global")
WIDTHS = ("auto", "config", "per-layer")
MAX_RECIPE_BYTES = 1_000_000


@register_config
@dataclasses.dataclass(frozen=True, kw_only=True)
class FineTuneConfig(Config):
    """Fine-tuning (recovery) after a compressing step, with distillation from the original model
    (``distill``; ``temperature`` and ``alpha`` as in :class:`slimkit.train.DistillConfig`, same defaults).

    ``patience`` stops early when the task's validation metric stalls; the best validation epoch is
    kept. ``steps_per_epoch`` makes an epoch that many batches (needed for a training stream without a
    length; the stream is not restarted between epochs).

    ``lr_search``: factors of ``lr`` tried before the run's first recovery: a copy of the model is
    fine-tuned ``probe_steps`` batches at each rate and the factor whose copy scores best on
    validation (the first listed among equals) scales the rate of every fine-tuning of the run. A
    learning rate that suits one kind of model (the default, image classifiers) can leave another
    (a recommender, a U-Net) far from recovered.
    """

    epochs: int = 3
    steps_per_epoch: int | None = None
    lr: float = 5e-4
    lr_search: tuple[float, ...] = ()
    probe_steps: int = 50
    optimizer: str = "adam"
    distill: bool = True
    temperature: float = DistillConfig.temperature
    alpha: float = DistillConfig.alpha
    patience: int | None = None
    augment: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise SlimkitError(f"fine-tuning epochs must be at least 1, got {self.epochs}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise SlimkitError(f"steps_per_epoch must be at least 1, got {self.steps_per_epoch}")
        if self.lr <= 0:
            raise SlimkitError(f"fine-tuning lr must be positive, got {self.lr}")
        object.__setattr__(self, "lr_search", tuple(self.lr_search))
        if any(f <= 0 for f in self.lr_search) or self.probe_steps < 1:
            raise SlimkitError(
                f"lr_search takes positive factors of lr and probe_steps >= 1, got {self.lr_search}, {self.probe_steps}"
            )
        self.distillation  # noqa: B018 (checks temperature and alpha)

    @property
    def distillation(self) -> DistillConfig:
        """The distillation setting of this fine-tuning (used when ``distill``)."""
        return DistillConfig(temperature=self.temperature, alpha=self.alpha)


@register_config
@dataclasses.dataclass(frozen=True, kw_only=True)
class SensitivityPruneConfig(Config):
    """Structured pruning to a MACs / params budget with per-layer ratios chosen by sensitivity.

    Every prunable group is pruned alone at ``probe_ratios`` and the validation loss measured;
    ``allocation="sensitivity"`` then gives each group the ratio that meets the budget with the
    least predicted loss (greedy on loss per unit of cost saved). ``"uniform"`` removes the same
    share of every group, ``"global"`` ranks all units together. ``target_macs`` / ``target_params``
    are shares of the original model; ``rounds`` reaches them in that many prune + recover rounds.
    ``round_to`` keeps widths multiples of that (``"auto"``: ONNX Runtime's channel block on this CPU,
    16 with AVX-512, else 8; faster kernels, coarser widths).
    The step is resolved into a :class:`slimkit.prune.ChannelPruneConfig` with explicit ``ratios``
    (recorded in the report). ``spread`` bounds each group's ratio to that distance from the uniform
    ratio (None: no bound; see :func:`slimkit.optimize.allocate`). ``refit``: least-squares refits of
    the layers after pruned ones (see :class:`slimkit.prune.ChannelPruneConfig`), in probes and rounds,
    on ``calibration_batches`` training batches (also those of data-driven importances and BatchNorm
    statistics). ``widths="config"`` prunes alike the groups that one field of a ``transformers``
    config sizes (every layer's FFN; every layer's heads; the hidden size, with the heads where the
    family derives the head size from it), so the result is a ``from_pretrained`` folder;
    ``"per-layer"`` lets every group take its own width (a closer fit, but a transformers model then
    saves as ``model.pt2`` only); ``"auto"``: ``"config"`` for a transformers model when such widths
    meet the budget, else per-layer.
    """

    target_macs: float | None = None
    target_params: float | None = None
    allocation: str = "sensitivity"
    widths: str = "auto"
    importance: str = "l2"
    probe_ratios: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9)
    rounds: int = 1
    round_to: int | str = 1
    max_ratio: float = 0.9
    spread: float | None = 0.25
    protected: tuple[str, ...] = ()
    refit: bool = False
    calibration_batches: int = 4

    def channel_config(self, ratios: dict[str, float]) -> ChannelPruneConfig:
        """The :class:`~slimkit.prune.ChannelPruneConfig` removing ``ratios`` (per group) as this step does."""
        return ChannelPruneConfig(
            ratio=0.0,
            ratios=ratios,
            importance=self.importance,
            protected=list(self.protected),
            refit=self.refit,
            calibration_batches=self.calibration_batches,
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "probe_ratios", tuple(self.probe_ratios))
        object.__setattr__(self, "protected", tuple(self.protected))
        if self.target_macs is None and self.target_params is None:
            raise SlimkitError("SensitivityPruneConfig needs target_macs and/or target_params (shares of the original)")
        for name in ("target_macs", "target_params"):
            v = getattr(self, name)
            if v is not None and not 0 < v <= 1:
                raise SlimkitError(f"{name}={v} must be a share of the original in (0, 1]")
        if self.allocation not in ALLOCATIONS:
            raise SlimkitError(f"unknown allocation {self.allocation!r}; choose one of {', '.join(ALLOCATIONS)}")
        if self.widths not in WIDTHS:
            raise SlimkitError(f"unknown widths {self.widths!r}; choose one of {', '.join(WIDTHS)}")
        if self.widths == "config" and self.allocation == "global":
            raise SlimkitError(
                "global ranking gives every layer its own widths: use widths='config' with another allocation"
            )
        if self.importance not in imp.METHODS:
            raise SlimkitError(f"unknown importance {self.importance!r}; choose one of {', '.join(imp.METHODS)}")
        if not self.probe_ratios or not all(0 < r < 1 for r in self.probe_ratios):
            raise SlimkitError(f"probe_ratios must be in (0, 1), got {self.probe_ratios}")
        if self.rounds < 1:
            raise SlimkitError(f"rounds must be at least 1, got {self.rounds}")
        if self.round_to != "auto" and not (isinstance(self.round_to, int) and self.round_to >= 1):
            raise SlimkitError(f"round_to must be an integer >= 1 or 'auto', got {self.round_to!r}")
        if not 0 < self.max_ratio < 1:
            raise SlimkitError(f"max_ratio must be in (0, 1), got {self.max_ratio}")
        if self.spread is not None and not 0 <= self.spread <= 1:
            raise SlimkitError(f"spread must be in [0, 1] (or None), got {self.spread}")


COMPRESSING = (ChannelPruneConfig, SensitivityPruneConfig, LowRankConfig)
STEP_TYPES = (*COMPRESSING, FoldConfig, FineTuneConfig, QuantizeConfig, QATConfig)
FINISHING = (FoldConfig, QuantizeConfig)  # no training, a minute or so: run even after the time budget


@dataclasses.dataclass(frozen=True)
class Recipe:
    """An ordered list of step configs (see the module docstring for the file format)."""

    steps: tuple[Config, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        if not self.steps:
            raise SlimkitError("a recipe needs at least one step")
        for i, s in enumerate(self.steps):
            if not isinstance(s, STEP_TYPES):
                names = ", ".join(t.__name__ for t in STEP_TYPES)
                raise SlimkitError(f"recipe step {i + 1}: {type(s).__name__} cannot be a step; use one of {names}")
            last = i == len(self.steps) - 1 or (i == len(self.steps) - 2 and isinstance(self.steps[-1], QATConfig))
            if isinstance(s, QuantizeConfig) and not last:
                raise SlimkitError(
                    "QuantizeConfig must be the last recipe step (it produces the int8 ONNX file), "
                    "followed at most by its QATConfig"
                )
            if isinstance(s, QATConfig) and not (i and isinstance(self.steps[i - 1], QuantizeConfig)):
                raise SlimkitError(
                    f"recipe step {i + 1}: QATConfig is the recovery of post-training int8: "
                    "put it right after QuantizeConfig"
                )

    @property
    def quantizes(self) -> bool:
        return any(isinstance(s, QuantizeConfig) for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {"steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        if not isinstance(d, dict) or not isinstance(d.get("steps"), list):
            raise SlimkitError(
                "a recipe is a mapping with a 'steps' list, e.g. {'steps': [{'type': 'FineTuneConfig'}]}"
            )
        steps = []
        for i, raw in enumerate(d["steps"]):
            if isinstance(raw, dict) and "type" not in raw and len(raw) == 1:
                ((name, fields),) = raw.items()
                if fields is not None and not isinstance(fields, dict):
                    raise SlimkitError(
                        f"recipe step {i + 1} ({name}): its fields must be a mapping, got {reprlib.repr(fields)}"
                    )
                raw = {"type": name, **(fields or {})}
            if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
                raise SlimkitError(f"recipe step {i + 1} must name its config type, got {reprlib.repr(raw)}")
            try:
                steps.append(Config.from_dict(raw))
            except (TypeError, ValueError, SlimkitError) as exc:
                raise SlimkitError(f"recipe step {i + 1} ({raw.get('type')}): {exc}") from None
        return cls(tuple(steps))

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read a ``.json``, ``.yaml`` or ``.yml`` recipe file."""
        path = Path(path)
        if not path.is_file():
            raise SlimkitError(f"no such recipe file: {path}")
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise SlimkitError(
                f"{path} is {path.stat().st_size:,} bytes; a recipe is a short list of steps "
                f"(at most {MAX_RECIPE_BYTES:,} bytes)"
            )
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise SlimkitError(f"{path} is not a text file; a recipe is JSON or YAML") from None
        try:
            data = _yaml(text) if path.suffix.lower() in (".yaml", ".yml") else json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and YAMLError (see _yaml) are ValueErrors
            kind = "YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON"
            problem = str(exc).splitlines()[0] if str(exc) else "nested too deeply"
            raise SlimkitError(f"{path} is not valid {kind} ({problem}); a recipe maps steps to a list") from None
        return cls.from_dict(data)

    def __str__(self) -> str:
        return " -> ".join(type(s).__name__.removesuffix("Config") for s in self.steps)


def _yaml(text: str) -> Any:
    """``yaml.safe_load`` without aliases (``*name``: a recipe needs none, and nested aliases can
    expand a small file into gigabytes); YAML errors become ValueErrors."""
    from slimkit.core.optional import require

    yaml = require("yaml", extra="search", package="pyyaml")

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.events.AliasEvent):
                raise ValueError("aliases (*name) are not allowed in recipes")
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc).splitlines()[0] if str(exc) else "invalid YAML") from None


INT8_FILE_SHARE = 0.27  # an int8 ONNX file is ~0.25-0.28x the fp32 one (measured, bench/RESULTS-compress.md)


def auto_recipe(
    target: Target,
    base: dict[str, float | None],
    *,
    quantize: bool | None = None,
    finetune_epochs: int = 4,
    rounds: int = 2,
    allocation: str = "sensitivity",
    widths: str = "auto",
    importance: str = "l2",
    round_to: int | str | None = None,
    steps_per_epoch: int | None = None,
    lr_search: tuple[float, ...] | None = None,
    qat: bool = True,
) -> Recipe:
    """The default recipe for ``target``: sensitivity pruning in ``rounds``, each recovered by
    ``finetune_epochs`` of fine-tuning with distillation, a final fine-tune twice as long, BatchNorm
    folding, then int8 quantization when the file or latency budget asks for it (recovered by ``qat``:
    quantization-aware fine-tuning, half the rounds' epochs, when post-training int8 loses too much).
    ``steps_per_epoch`` makes a fine-tuning epoch that many batches (a training stream need not end). The fine-tuning
    rates (5e-4, 1e-3 at the end) were tuned on image classifiers; for other tasks (a deciding metric
    other than accuracy) ``lr_search`` defaults to trying them x1, x4 and x0.25 first
    (:class:`FineTuneConfig`).

    ``base`` holds the original's ``macs``, ``params``, ``bytes`` (absolute targets become shares).
    ``quantize`` defaults to True when a file-size target is below 0.5x or a latency target is given;
    ``round_to`` then defaults to ``"auto"`` (widths in ONNX Runtime's channel block: on seed_cnn int8
    this took batch-64 throughput from ~2.1-2.8x to ~2.9-3.2x the fp32 original at the same MACs).
    """
    limits = target.limits(base)
    share = {k: limits[k] / base[k] for k in limits if k in ("macs", "params", "bytes") and base.get(k)}
    if quantize is None:
        quantize = share.get("bytes", 1.0) < 0.5 or "latency" in limits
    if round_to is None:  # deployed with ONNX Runtime: widths in its kernels' channel block run faster
        round_to = "auto" if quantize or "latency" in limits else 1
    macs = share.get("macs")
    if "latency" in limits:  # latency falls more slowly than MACs; start from the same share, tighten if needed
        lat = target.latency if target.latency is not None else None
        if lat is not None:
            lat_macs = min(1.0, lat / (0.7 if quantize else 1.0))
            macs = lat_macs if macs is None else min(macs, lat_macs)
    params = share.get("params")
    if "bytes" in share:
        file_params = min(1.0, share["bytes"] / (INT8_FILE_SHARE if quantize else 1.0))
        params = file_params if params is None else min(params, file_params)
    steps: list[Config] = []
    if (macs is not None and macs < 1) or (params is not None and params < 1):
        steps.append(
            SensitivityPruneConfig(
                target_macs=macs if macs is not None and macs < 1 else None,
                target_params=params if params is not None and params < 1 else None,
                allocation=allocation,
                widths=widths,
                importance=importance,
                rounds=rounds,
                round_to=round_to,
            )
        )
        if lr_search is None:
            lr_search = () if target.metric in (None, "accuracy") else (1.0, 4.0, 0.25)
        steps.append(FineTuneConfig(epochs=finetune_epochs, steps_per_epoch=steps_per_epoch, lr_search=lr_search))
        # a longer last fine-tune at the final widths recovers what the rounds' short ones could not
        steps.append(FineTuneConfig(epochs=2 * finetune_epochs, lr=1e-3, steps_per_epoch=steps_per_epoch))
    steps.append(FoldConfig())
    if quantize:
        steps.append(QuantizeConfig())
        if qat:  # run only if post-training int8 breaks the quality constraint
            steps.append(QATConfig(epochs=max(1, finetune_epochs // 2), steps_per_epoch=steps_per_epoch))
    return Recipe(tuple(steps))
