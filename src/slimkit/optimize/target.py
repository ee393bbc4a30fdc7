"""What the user wants: a cost budget, a quality constraint and a time budget (:class:`Target`).

Costs are shares of the original model (``macs=0.25``: 4x fewer multiply-accumulates) or absolute
values (``max_macs=1_500_000``). Quality is checked on the **validation** split: ``metric`` (default:
the task's deciding metric) may degrade by at most ``max_drop`` in its own units, its direction
respected (points for shares such as accuracy, F1 or mean IoU: ``0.5``; the metric's own units for
the others: "RMSE may rise by at most 0.01", "AUC may drop by at most 0.005"), and / or every metric
in ``min_metrics`` must be at least that good (``{"f1": 0.97}``, ``{"rmse": 0.9}``).

>>> t = parse_target(["macs=0.25", "bytes=300KB", "latency=0.3@64"], max_drop=0.5)
>>> t.macs, t.max_bytes, t.latency, t.latency_batch
(0.25, 307200, 0.3, 64)
>>> print(parse_target("macs=0.25", max_drop=0.5).for_task("accuracy"))
MACs <= 25% of the original; accuracy drop <= 0.5 points (validation)
>>> t = parse_target("params=0.25", max_drop=0.01, metric="rmse")
>>> print(t); t.quality_ok({"rmse": 0.905}, {"rmse": 0.9}), t.quality_ok({"rmse": 0.92}, {"rmse": 0.9})
params <= 25% of the original; rmse rise <= 0.01 (validation)
(True, False)
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from slimkit.core.errors import SlimkitError
from slimkit.io.onnx import RUNTIME_NAMES, RUNTIMES
from slimkit.task import format_metric, in_points, metric_info, worse_by

_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1, "%": 1}
_BYTES = {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "%": 1}
_TIME = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Target:
    """A budget: every cost given must hold, and the quality constraint must hold on validation data.

    - ``macs`` / ``params`` / ``bytes`` / ``latency``: share of the original (in (0, 1]).
      ``bytes`` is the deployable file (int8 ONNX when quantized, else the fp32 weights);
      ``latency`` is the fp32 or int8 ONNX file on ``runtime`` (``"onnxruntime"`` or ``"openvino"``)
      at ``latency_batch`` rows, against the original on the same runtime.
    - ``max_macs`` / ``max_params`` / ``max_bytes`` / ``max_latency_ms``: absolute limits.
    - ``metric``: the deciding metric (None: the task's, e.g. accuracy, RMSE, mean IoU, cosine);
      ``higher_is_better`` its direction when slimkit does not know it (a metric of the user's own
      ``evaluate``).
    - ``max_drop``: how much ``metric`` may degrade on validation, in points for shares (accuracy,
      F1, mean IoU) and in its own units otherwise (RMSE, AUC, cosine); ``min_metrics``: each metric
      at least this good (fractions for shares, e.g. ``{"f1": 0.97}``; ``{"rmse": 0.9}`` is a ceiling).
    - ``time_budget``: seconds of training and search (None: no limit); once spent, the steps that do
      not train (BatchNorm folding, int8) still run, then the test split is measured.
    """

    macs: float | None = None
    params: float | None = None
    bytes: float | None = None
    latency: float | None = None
    max_macs: int | None = None
    max_params: int | None = None
    max_bytes: int | None = None
    max_latency_ms: float | None = None
    latency_batch: int = 64
    runtime: str = "onnxruntime"
    metric: str | None = None
    higher_is_better: bool | None = None
    max_drop: float | None = None
    min_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    time_budget: float | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            values = v.values() if isinstance(v, dict) else [v]
            if any(isinstance(x, float) and not math.isfinite(x) for x in values):
                raise SlimkitError(f"target {f.name}={v} must be a finite number")
        for name in ("macs", "params", "bytes", "latency"):
            v = getattr(self, name)
            if v is not None and not 0 < v <= 1:
                raise SlimkitError(
                    f"target {name}={v} must be a share of the original in (0, 1]; "
                    f"give an absolute limit with max_{name}"
                )
        for name in ("max_macs", "max_params", "max_bytes", "max_latency_ms"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise SlimkitError(f"target {name}={v} must be positive")
        if self.runtime not in RUNTIMES:
            raise SlimkitError(f"unknown runtime {self.runtime!r}: choose {' or '.join(RUNTIMES)}")
        if self.latency_batch < 1:
            raise SlimkitError(f"latency batch size must be at least 1, got {self.latency_batch}")
        if self.max_drop is not None and self.max_drop < 0:
            raise SlimkitError(f"max_drop must be >= 0, got {self.max_drop}")
        for k, v in self.min_metrics.items():
            if in_points(k) and not 0 <= v <= 1:
                raise SlimkitError(f"min_metrics[{k!r}]={v} must be a fraction in [0, 1] (0.97 = 97%)")
        if self.time_budget is not None and self.time_budget <= 0:
            raise SlimkitError(f"time_budget must be positive seconds, got {self.time_budget}")
        if not self.costs():
            raise SlimkitError("the target names no cost: give at least one of macs, params, bytes, latency")

    def costs(self) -> dict[str, tuple[str, float]]:
        """``{cost: ("share" | "abs", value)}`` for every cost the target limits."""
        out: dict[str, tuple[str, float]] = {}
        for name, absolute in (
            ("macs", "max_macs"),
            ("params", "max_params"),
            ("bytes", "max_bytes"),
            ("latency", "max_latency_ms"),
        ):
            if getattr(self, name) is not None:
                out[name] = ("share", getattr(self, name))
            elif getattr(self, absolute) is not None:
                out[name] = ("abs", getattr(self, absolute))
        return out

    def limits(self, base: dict[str, float | None]) -> dict[str, float]:
        """Absolute limits given the original's costs ``base`` (``{"macs": ..., "latency": ms}``)."""
        out = {}
        for name, (kind, v) in self.costs().items():
            if kind == "abs":
                out[name] = float(v)
            elif base.get(name) is None:
                raise SlimkitError(f"cannot limit {name}: the original's {name} could not be measured")
            else:
                out[name] = float(v) * float(base[name])
        return out

    def cost_ok(self, costs: dict[str, float | None], base: dict[str, float | None]) -> dict[str, bool]:
        """Whether each limited cost of a candidate holds (unmeasured costs count as not holding)."""
        return {k: costs.get(k) is not None and costs[k] <= lim * (1 + 1e-9) for k, lim in self.limits(base).items()}

    def for_task(self, metric: str, higher_is_better: bool | None = None) -> Target:
        """The target with its deciding metric settled: its own, else the task's ``metric``; its
        direction from slimkit's metric table, else ``higher_is_better``, else an error."""
        name = self.metric or metric
        info = metric_info(name)
        direction = self.higher_is_better
        if direction is None:
            direction = info[0] if info is not None else higher_is_better
        if direction is None:
            raise SlimkitError(
                f"slimkit does not know whether a higher {name!r} is better: pass higher_is_better=True or False"
            )
        for k in self.min_metrics:
            if k != name and metric_info(k) is None:
                raise SlimkitError(f"min_metrics[{k!r}]: slimkit does not know its direction; make it the metric")
        return dataclasses.replace(self, metric=name, higher_is_better=direction)

    @property
    def deciding(self) -> str:
        """The deciding metric (before :meth:`for_task` settles it: classification's accuracy)."""
        return self.metric or "accuracy"

    def _higher(self, name: str) -> bool | None:
        return self.higher_is_better if name == self.metric else None

    def score(self, metrics: dict[str, float]) -> float:
        """The deciding metric made higher-is-better (for ranking candidates)."""
        return -worse_by(self.deciding, 0.0, metrics[self.deciding], self._higher(self.deciding))

    def probe_scores(self, metrics: dict[str, float]) -> dict[str, float]:
        """``loss`` (without one, the deciding metric made lower-is-better) and the deciding metric."""
        return {"loss": metrics.get("loss", -self.score(metrics)), self.metric: metrics[self.metric]}

    def drop(self, metrics: dict[str, float], base: dict[str, float]) -> float:
        """How much worse ``metrics`` are than ``base`` on the deciding metric, in its units (points for shares)."""
        return worse_by(self.deciding, base[self.deciding], metrics[self.deciding], self._higher(self.deciding))

    def quality_ok(self, metrics: dict[str, float], base: dict[str, float]) -> bool:
        """Whether validation ``metrics`` satisfy the quality constraint relative to ``base``."""
        return self.slack(metrics, base) >= -1e-9

    def slack(self, metrics: dict[str, float], base: dict[str, float]) -> float:
        """Quality left before the constraint breaks, in the deciding metric's units (negative: broken;
        inf: no constraint)."""
        out = math.inf
        if self.max_drop is not None:
            drop = self.drop(metrics, base)
            out = self.max_drop - drop if math.isfinite(drop) else -math.inf
        for k, v in self.min_metrics.items():
            value = metrics.get(k, math.nan)
            out = min(out, -worse_by(k, v, value, self._higher(k)) if math.isfinite(value) else -math.inf)
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Target:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise SlimkitError(f"Target has no field(s) {sorted(unknown)}; fields: {sorted(fields)}")
        return cls(**d)

    def __str__(self) -> str:
        parts = []
        names = {
            "macs": "MACs",
            "params": "params",
            "bytes": "file",
            "latency": f"{RUNTIME_NAMES[self.runtime]} latency (batch {self.latency_batch})",
        }
        for name, (kind, v) in self.costs().items():
            if kind == "share":
                parts.append(f"{names[name]} <= {v:.0%} of the original")
            else:
                unit = " ms" if name == "latency" else (" bytes" if name == "bytes" else "")
                parts.append(f"{names[name]} <= {v:,}{unit}")
        quality = []
        if self.max_drop is not None:
            metric = self.metric or "quality"
            worse = "rise" if self.metric and worse_by(self.metric, 0, 1, self.higher_is_better) > 0 else "drop"
            unit = " points" if self.metric is None or in_points(self.metric) else ""
            quality.append(f"{metric} {worse} <= {self.max_drop:g}{unit}")
        for k, v in self.min_metrics.items():
            bound = "<=" if worse_by(k, 0, 1, self._higher(k)) > 0 else ">="
            quality.append(f"{k} {bound} {format_metric(k, v)}")
        text = ", ".join(parts)
        if quality:
            text += "; " + ", ".join(quality) + " (validation)"
        if self.time_budget is not None:
            text += f"; within {format_duration(self.time_budget)}"
        return text


def _number(text: str, units: dict[str, float], what: str) -> tuple[float, str]:
    """``"1.5M"`` -> (1.5e6, "m"); ``"0.25"`` -> (0.25, "")."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([a-z]*|%)\s*", text.lower())
    if not m or m.group(2) not in units:
        raise SlimkitError(f"cannot read {what} {text!r}; examples: 0.25 (share), 1.5M, 300KB, 2ms")
    if not math.isfinite(float(m.group(1)) * units[m.group(2)]):
        raise SlimkitError(f"{what} {text!r} is too large to be a limit")
    return float(m.group(1)) * units[m.group(2)], m.group(2)


def parse_target(
    items: str | list[str],
    *,
    max_drop: float | None = None,
    min_metrics: dict[str, float] | None = None,
    metric: str | None = None,
    time_budget: float | str | None = None,
    runtime: str = "onnxruntime",
) -> Target:
    """Build a :class:`Target` from CLI strings.

    Each item is ``name=value`` with name in macs, params, bytes, latency; several items may share
    one string, comma-separated. A value in (0, 1] or with ``%`` is a share of the original
    (``macs=0.25``, ``macs=25%``); with a unit or above 100 it is absolute (``macs=1.5M``,
    ``params=200k``, ``bytes=300KB``, ``latency=2ms@64``). A bare value in (1, 100] is refused as
    ambiguous (``macs=2``: 2% or 2 MACs?), as is a bare latency above 1.
    ``latency=0.3@64`` measures ``runtime`` at batch 64 (default 64).
    """
    if isinstance(items, str):
        items = [items]
    kwargs: dict[str, Any] = {}
    for item in (p.strip() for raw in items for p in raw.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not sep or not value.strip():
            raise SlimkitError(f"--target takes name=value such as macs=0.25, got {item!r}")
        if name not in ("macs", "params", "bytes", "latency"):
            raise SlimkitError(f"unknown target {name!r} in {item!r}; choose macs, params, bytes or latency")
        if name in kwargs or f"max_{name}" in kwargs or (name == "latency" and "max_latency_ms" in kwargs):
            raise SlimkitError(f"target {name} is given twice")
        if name == "latency":
            value, at, batch = value.partition("@")
            if at:
                if not batch.strip().isdigit() or int(batch) < 1:
                    raise SlimkitError(f"latency batch size must be a positive integer, got {batch!r} in {item!r}")
                kwargs["latency_batch"] = int(batch)
            v, unit = _number(value, {"": 1, "ms": 1, "s": 1000, "%": 1}, "latency")
            if unit == "%":
                v, unit = v / 100, ""
            elif not unit and v > 1:
                raise SlimkitError(
                    f"--target {item} is ambiguous: write latency={v:g}ms for milliseconds or "
                    f"latency={v:g}% for a share of the original"
                )
            kwargs["max_latency_ms" if unit else "latency"] = v
            continue
        units = _BYTES if name == "bytes" else _SUFFIX
        v, unit = _number(value, units, name)
        if unit == "%":
            v, unit = v / 100, ""
        elif not unit and 1 < v <= 100:
            raise SlimkitError(
                f"--target {item} is ambiguous: did you mean {v:g}% ({name}={v / 100:g}, a share of the "
                f"original) or an absolute count? Write {name}={v:g}% or {name}={v / 100:g} for a "
                f"share, or an absolute value with a unit ({name}={v:g}k, {name}=1.5M)"
            )
        if unit or v > 1:
            kwargs[f"max_{name}"] = int(round(v))
        elif v <= 0:
            raise SlimkitError(f"target {name}={value} must be positive")
        else:
            kwargs[name] = v
    if isinstance(time_budget, str):
        time_budget = parse_duration(time_budget)
    return Target(
        **kwargs,
        max_drop=max_drop,
        min_metrics=dict(min_metrics or {}),
        metric=metric,
        time_budget=time_budget,
        runtime=runtime,
    )


def parse_min_metrics(items: list[str] | None) -> dict[str, float]:
    """``["f1=0.97", "recall=96"]`` -> ``{"f1": 0.97, "recall": 0.96}`` (above 1: percent, for shares)."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise SlimkitError(f"--min-metric takes metric=value such as f1=0.97, got {item!r}")
        try:
            v = float(value)
        except ValueError:
            raise SlimkitError(f"--min-metric value must be a number, got {value!r} in {item!r}") from None
        out[name.strip()] = v / 100 if v > 1 and in_points(name.strip()) else v
    return out


def parse_duration(text: str | float) -> float:
    """Seconds in ``"20m"``, ``"90s"``, ``"1h30m"``, ``"45"`` (seconds).

    >>> parse_duration("1h30m"), parse_duration("20m"), parse_duration("90")
    (5400.0, 1200.0, 90.0)
    """
    if isinstance(text, int | float):
        return float(text)
    parts = re.findall(r"([0-9]*\.?[0-9]+)\s*(h|min|m|s|)", text.strip().lower())
    if not parts or re.sub(r"[0-9.\s]*(h|min|m|s)?", "", text.strip().lower()):
        raise SlimkitError(f"cannot read the duration {text!r}; examples: 90s, 20m, 1h30m")
    total = sum(float(v) * _TIME[u] for v, u in parts)
    if total <= 0:
        raise SlimkitError(f"the duration {text!r} must be positive")
    return total


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v) or "0s"
