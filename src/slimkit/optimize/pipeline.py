"""The closed loop: apply a recipe step, recover (fine-tune with distillation), validate, back off.

One pass runs the recipe's steps in order on a copy of the model. A compressing step (pruning,
low-rank) is followed by its recovery (the next ``FineTuneConfig`` of the recipe) and checked on
the validation split; if the quality constraint breaks, the candidate gets a second recovery, then
a milder version of the step is tried, and if that breaks too the step is skipped (backed off).
When a pass ends with the cost target unmet (e.g. measured latency), the pruning budget is
tightened by the measured shortfall and the recipe runs again, until the target holds or the time
budget ends. Every candidate is kept (validation metric and costs) for the Pareto front.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimkit.compress import LowRankConfig, QATConfig, QuantizeConfig
from slimkit.core.errors import SlimkitError, UnknownModelError
from slimkit.core.transform import Config
from slimkit.evaluate.cost import onnx_latency
from slimkit.optimize.recipe import COMPRESSING, FINISHING, FineTuneConfig, Recipe, SensitivityPruneConfig
from slimkit.optimize.sensitivity import CostModel, Sensitivity, TiedCosts, allocate, sensitivity_key, uniform
from slimkit.optimize.target import Target
from slimkit.prune import ChannelPruneConfig
from slimkit.simplify import FoldConfig
from slimkit.task import format_metric, in_points

if TYPE_CHECKING:
    from slimkit.io.pretrained import ConfigTies
    from slimkit.optimize.backend import Backend

Log = Callable[[str], None]


@dataclasses.dataclass
class Candidate:
    """One model the loop built and validated: what made it, its validation metrics and costs."""

    id: int
    step: str
    config: dict[str, Any]
    metrics: dict[str, float]
    loss: float
    costs: dict[str, float | None]
    quality_ok: bool
    cost_ok: dict[str, bool]
    accepted: bool = False
    seconds: float = 0.0
    note: str = ""
    widths: dict[str, int] = dataclasses.field(default_factory=dict)
    passno: int = 1
    pareto: bool = False

    @property
    def target_ok(self) -> bool:
        return self.quality_ok and all(self.cost_ok.values())

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "target_ok": self.target_ok}


def pareto_front(
    candidates: list[Candidate], metric: str, cost: str = "macs", higher_is_better: bool | None = True
) -> list[int]:
    """Ids of the candidates no other candidate beats on both ``metric`` and ``cost`` (lower)."""
    sign = -1 if higher_is_better is False else 1
    pts = [(c.id, c.metrics.get(metric), c.costs.get(cost)) for c in candidates]
    pts = [(i, sign * m, c) for i, m, c in pts if m is not None and c is not None]
    front = []
    for i, m, c in pts:
        dominated = any((m2 >= m and c2 <= c) and (m2 > m or c2 < c) for _, m2, c2 in pts)
        if not dominated:
            front.append(i)
    return front


def fit_widths(
    costs: CostModel | TiedCosts,
    limits: dict[str, float],
    measure: Callable[[dict[str, float]], dict[str, float]],
    *,
    sens: Sensitivity | None = None,
    max_ratio: float = 0.9,
    spread: float | None = 0.25,
    round_to: int | str = 1,
    classes: list[tuple[list[str], int]] | None = None,
) -> tuple[dict[str, int], dict[str, float]] | None:
    """Per-group widths (and the ratios they came from) whose pruned model meets ``limits``
    (absolute ``{"macs", "params"}``) measured for real: ``measure(ratios)`` gives the real costs of
    the model pruned by ``ratios``. The estimated budget is tightened by each miss; widths are
    multiples of ``round_to`` where a group has that many units, then whole blocks that rounding took
    beyond the budget are given back. Ratios come from :func:`allocate` over ``sens`` (unless
    :func:`uniform` is predicted to lose less), or are uniform. None when no widths fit.

    ``classes`` (producers and unit count of each; groups in none stay whole) prunes the groups of each
    class in proportion, through :class:`TiedCosts`.

    The one width fitter of slimkit: the optimize loop (both frameworks) and budget pruning of
    ``.keras`` files use it.
    """
    if classes is not None:
        tied = TiedCosts(costs, classes)
        found = fit_widths(
            tied,
            limits,
            lambda ratios: measure(tied.expand(ratios)),
            sens=None if sens is None else tied.sensitivity(sens),
            max_ratio=max_ratio,
            spread=spread,
            round_to=round_to,
        )
        return None if found is None else (tied.expand_widths(found[0]), tied.expand(found[1]))
    n = costs.groups

    def real(widths: dict[str, int]) -> dict[str, float]:
        return measure({p: (n[p] - w) / n[p] for p, w in widths.items() if w < n[p]})

    scale = 1.0
    for _ in range(8):
        lim = {k: v * scale for k, v in limits.items()}
        try:
            ratios = uniform(costs, lim, max_ratio=max_ratio)
            if sens is not None:  # greedy allocation, unless uniform ratios are predicted to lose less
                greedy = allocate(sens, costs, lim, max_ratio=max_ratio, spread=spread)
                ratios = greedy if sens.predicted_loss(greedy) <= sens.predicted_loss(ratios) else ratios
        except SlimkitError:
            return None
        widths = {
            p: _round_width(k, k - math.floor(ratios.get(p, 0.0) * k + 1e-9), round_to, nearest=True)
            for p, k in n.items()
        }
        got = real(widths)
        over = max(got[k] / lim_k for k, lim_k in limits.items())
        if over <= 1.0 + 1e-9:
            return _grow(costs, sens, limits, widths, round_to, real), ratios
        scale /= over * 1.005
    return None


def _grow(
    costs: CostModel | TiedCosts,
    sens: Sensitivity | None,
    limits: dict[str, float],
    widths: dict[str, int],
    round_to: int | str,
    real: Callable[[dict[str, int]], dict[str, float]],
) -> dict[str, int]:
    """Give back whole channel blocks that rounding took beyond the budget, where they lower the
    predicted loss most per unit of cost, while the (estimated, then real) budget still holds."""
    block = _block(round_to)
    if block <= 1:
        return widths
    n = costs.groups

    def ratios_of(w: dict[str, int]) -> dict[str, float]:
        return {p: (n[p] - v) / n[p] for p, v in w.items()}

    def loss(w: dict[str, int]) -> float:
        return sens.predicted_loss(ratios_of(w)) if sens is not None else -sum(v / n[p] for p, v in w.items())

    grown = dict(widths)
    while True:
        best, best_score = None, math.inf
        for p in grown:
            if grown[p] + block > n[p]:
                continue
            trial = {**grown, p: grown[p] + block}
            est = costs.estimate(ratios_of(trial))
            if any(est[k] > 0.995 * lim for k, lim in limits.items()):
                continue
            added = sum(est[k] / costs.base[k] for k in limits) + 1e-12
            score = (loss(trial) - loss(grown)) / added  # most loss removed per cost added
            if score < best_score:
                best, best_score = trial, score
        if best is None:
            break
        grown = best
    if grown == widths:
        return widths
    got = real(grown)
    return grown if all(got[k] <= lim for k, lim in limits.items()) else widths


CONFIG_FILL = 0.85  # widths="auto": config widths must use this share of the budget, else per-layer widths


class Loop:
    """State of one optimization run (one pass or several): the original, budgets, candidates.

    Written once for every framework: all it does to models goes through ``backend``
    (:class:`slimkit.optimize.backend.Backend`). Used by :func:`slimkit.optimize.optimize`, by
    :func:`slimkit.keras.optimize.optimize` and by each search trial; not a public API.
    """

    def __init__(
        self,
        backend: Backend,
        original: Any,
        target: Target,
        *,
        workdir: Path,
        deadline: float | None,
        log: Log,
        sensitivity_cache: Callable[[str, Callable[[], Sensitivity]], Sensitivity] | None = None,
        on_epoch: Callable[[dict[str, float]], None] | None = None,
    ) -> None:
        self.be = backend
        self.original = original
        self.target = target
        self.workdir = workdir
        self.deadline = deadline
        self.log = log
        self.sensitivity_cache = sensitivity_cache
        self.on_epoch = on_epoch
        self.lr_scale: float | None = None  # chosen by the first fine-tuning with lr_search
        self.candidates: list[Candidate] = []
        self.allocations: list[dict[str, Any]] = []
        self.sensitivity: Sensitivity | None = None
        self.reference_onnx: Path | None = None
        self.progress_dir: Path | None = None  # where finished steps are checkpointed (resumable runs)
        self.restored: dict[str, Any] | None = None
        self.round_to_used: int | str = 1
        self._files = 0
        self.base = self.measure_base()
        self.limits = target.limits(self.base["costs"])

    @property
    def example(self) -> Any:
        return self.be.example

    def scratch(self, suffix: str) -> Path:
        """A new file name in the run's scratch folder."""
        self._files += 1
        return self.workdir / f"candidate-{self._files:03d}{suffix}"

    # ---- measuring -------------------------------------------------------------------------
    def measure_base(self) -> dict[str, Any]:
        metrics, loss = self.val_metrics(self.original)
        costs = self.be.costs(self.original)
        if "latency" in self.target.costs():
            self.reference_onnx = self.be.export_onnx(self.original, self.workdir / "original.onnx")
            costs["latency"] = onnx_latency(
                [self.reference_onnx], self.example, self.target.latency_batch, runs=40, runtime=self.target.runtime
            )[0]
        return {"metrics": metrics, "loss": loss, "costs": costs}

    def val_metrics(self, model: Any) -> tuple[dict[str, float], float]:
        """The metrics of ``model`` (a model or an ONNX runner) on validation, and its loss (without
        one from the user's ``evaluate``: the deciding metric made lower-is-better)."""
        metrics = self.be.scores(model, "val")
        return metrics, metrics.get("loss", -self.target.score(metrics))

    def record(
        self,
        model: Any,
        step: str,
        config: Config | dict | None,
        *,
        onnx: Path | None = None,
        started: float,
        passno: int,
    ) -> Candidate:
        """Validate ``model`` (or the int8 ``onnx`` file made from it) and keep it as a candidate."""
        from slimkit.io.onnx import OnnxModel

        metrics, loss = self.val_metrics(model if onnx is None else OnnxModel(onnx, runtime=self.target.runtime))
        costs = self.be.costs(model)
        if onnx is not None:
            costs["bytes"] = onnx.stat().st_size
        if "latency" in self.limits:
            path = onnx or self.be.export_onnx(model, self.scratch(".onnx"))
            costs["latency"] = self.paired(
                *onnx_latency(
                    [path, self.reference_onnx], self.example, self.target.latency_batch, runtime=self.target.runtime
                )
            )
            if onnx is None:
                path.unlink()
        cfg = config.to_dict() if isinstance(config, Config) else dict(config or {})
        c = Candidate(
            id=len(self.candidates),
            step=step,
            config=cfg,
            metrics=metrics,
            loss=loss,
            costs=costs,
            quality_ok=self.target.quality_ok(metrics, self.base["metrics"]),
            cost_ok=self.target.cost_ok(costs, self.base["costs"]),
            seconds=time.monotonic() - started,
            widths=self.be.widths(model),
            passno=passno,
        )
        self.candidates.append(c)
        m = self.target.metric
        change = (100 if in_points(m) else 1) * (metrics[m] - self.base["metrics"][m])  # signed, as measured
        unit = " pts" if in_points(m) else ""
        floors = "".join(f", {k} {format_metric(k, metrics[k])}" for k in self.target.min_metrics if k in metrics)
        self.log(
            f"  [{c.id}] {step}: val {m} {format_metric(m, metrics[m])} ({change:+.4g}{unit}){floors}, "
            f"MACs {costs['macs'] / self.base['costs']['macs']:.3f}x, "
            f"file {costs['bytes'] / self.base['costs']['bytes']:.3f}x"
            + (f", latency {costs['latency'] / self.base['costs']['latency']:.2f}x" if "latency" in costs else "")
            + ("" if c.quality_ok else "  [breaks the quality constraint]")
        )
        return c

    def paired(self, ms: float, reference_ms: float | None) -> float:
        """A candidate's latency scaled to the original's baseline by their paired ratio."""
        return ms if not reference_ms else ms / reference_ms * self.base["costs"]["latency"]

    def worse(self, c: Candidate, than: Candidate) -> bool:
        """Whether ``c`` scores worse than ``than`` on the deciding validation metric."""
        m = self.target.metric
        return (c.metrics[m] - than.metrics[m]) * (1 if self.target.higher_is_better else -1) < 0

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def accept(self, c: Candidate) -> Candidate:
        c.accepted = True
        return c

    # ---- steps -----------------------------------------------------------------------------
    def finetune(self, model: Any, cfg: FineTuneConfig) -> None:
        """Recovery training of ``model`` in place (distilled from the original when ``cfg.distill``),
        at the rate the run's learning-rate search chose (:class:`FineTuneConfig` ``lr_search``)."""
        if cfg.lr_search and self.lr_scale is None and self.be.sets_lr:
            self.lr_scale = self.search_lr(model, cfg)
        if self.lr_scale is not None and self.lr_scale != 1:
            cfg = dataclasses.replace(cfg, lr=cfg.lr * self.lr_scale)
        self.be.finetune(model, cfg, self.original, on_epoch=self.on_epoch, deadline=self.deadline)

    def search_lr(self, model: Any, cfg: FineTuneConfig) -> float:
        """The factor of ``cfg.lr`` whose ``probe_steps``-batch fine-tune of a copy scores best on validation."""
        metric, sign = self.target.metric, 1 if self.target.higher_is_better else -1
        best, best_score, tried = 1.0, None, []
        for factor in cfg.lr_search:
            trial = self.be.copy(model)
            probe = dataclasses.replace(
                cfg, lr=cfg.lr * factor, epochs=1, steps_per_epoch=cfg.probe_steps, patience=None
            )
            self.be.finetune(trial, probe, self.original, on_epoch=None, deadline=self.deadline)
            score = self.be.scores(trial, "val")[metric]
            tried.append(f"{probe.lr:.2g}: {score:.4g}")
            if best_score is None or sign * score > sign * best_score:
                best, best_score = factor, score
        self.log(
            f"  learning rate: {cfg.lr * best:.2g} (val {metric} after {cfg.probe_steps} batches at {', '.join(tried)})"
        )
        return best

    def run_pass(self, recipe: Recipe, passno: int = 1) -> dict[str, Any]:
        """Run every recipe step once; returns the pass's final state (model, int8 path, candidate)."""
        self.be.check_recipe(recipe)
        state: dict[str, Any] = {"model": self.be.copy(self.original), "onnx": None, "candidate": None}
        state["backed_off"] = []
        steps = list(recipe.steps)
        i = 0
        if self.restored is not None and self.restored["passno"] == passno:
            r, self.restored = self.restored, None
            state.update(model=r["model"], candidate=self.candidates[r["candidate"]], backed_off=r["backed_off"])
            i = r["next_step"]
            self.log(f"  resumed after step {i} of pass {passno} (saved progress)")
        while i < len(steps):
            if i and self.progress_dir is not None and not isinstance(steps[i - 1], QuantizeConfig):
                self.save_progress(recipe, passno, i, state)
            step = steps[i]
            recovery = steps[i + 1] if i + 1 < len(steps) and isinstance(steps[i + 1], FineTuneConfig) else None
            if self.out_of_time() and not isinstance(step, FINISHING):
                self.log(f"time budget reached: skipping step {i + 1} ({type(step).__name__})")
                state["stopped"] = "time budget"
                i += 1
                continue
            if isinstance(step, COMPRESSING):
                ok = self.compress_step(state, step, recovery, passno)
                if not ok:
                    state["backed_off"].append(type(step).__name__)
                i += 2 if recovery is not None else 1
                continue
            started = time.monotonic()
            if isinstance(step, FineTuneConfig):
                before, previous = self.be.copy(state["model"]), state["candidate"]
                self.finetune(state["model"], step)
                c = self.record(state["model"], "fine-tune", step, started=started, passno=passno)
                if previous is not None and self.worse(c, previous):
                    self.log(f"  the fine-tune lowered validation {self.target.metric}: kept the model before it")
                    state["model"] = before
                else:
                    state["candidate"] = self.accept(c)
            elif isinstance(step, FoldConfig):
                state["model"] = self.be.transform(state["model"], step)
                state["candidate"] = self.accept(
                    self.record(state["model"], "fold", step, started=started, passno=passno)
                )
            elif isinstance(step, QuantizeConfig):
                qat = steps[i + 1] if i + 1 < len(steps) and isinstance(steps[i + 1], QATConfig) else None
                self.quantize_step(state, step, passno, qat)
                i += 1 if qat is None else 2
                continue
            i += 1
        if state["candidate"] is None:
            state["candidate"] = self.accept(
                self.record(state["model"], "unchanged", None, started=time.monotonic(), passno=passno)
            )
        return state

    def save_progress(self, recipe: Recipe, passno: int, next_step: int, state: dict[str, Any]) -> None:
        """Checkpoint the pass after a finished step (one atomic folder: model + loop state)."""
        folder = self.progress_dir / f"pass{passno:02d}-step{next_step:02d}"
        if folder.exists():
            return
        info = {
            "recipe": recipe.to_dict(),
            "passno": passno,
            "next_step": next_step,
            "candidate": state["candidate"].id if state["candidate"] is not None else None,
            "backed_off": state["backed_off"],
            "candidates": [c.to_dict() for c in self.candidates],
            "allocations": self.allocations,
        }
        try:
            self.be.save(state["model"], folder, {"progress.json": json.dumps(info, default=str)})
        except UnknownModelError as exc:
            self.progress_dir = None
            self.log(f"  progress is not saved, so --resume starts over: {exc}")

    def restore_progress(self) -> Recipe | None:
        """Load the latest saved progress (``--resume`` without a search); returns its pass's recipe."""
        if self.progress_dir is None or not self.progress_dir.is_dir():
            return None
        folders = sorted(p for p in self.progress_dir.iterdir() if (p / "progress.json").is_file())
        if not folders:
            return None
        info = json.loads((folders[-1] / "progress.json").read_text())
        names = {f.name for f in dataclasses.fields(Candidate)}
        self.candidates = [Candidate(**{k: v for k, v in d.items() if k in names}) for d in info["candidates"]]
        self.allocations = info["allocations"]
        if info["candidate"] is None:
            return None
        self.restored = {
            "passno": info["passno"],
            "next_step": info["next_step"],
            "candidate": info["candidate"],
            "backed_off": info["backed_off"],
            "model": self.be.load(folders[-1]),
        }
        return Recipe.from_dict(info["recipe"])

    def _attempt(
        self,
        state: dict[str, Any],
        label: str,
        variants: list[tuple[str, Config | dict, Callable[[Any], Any]]],
        recovery: FineTuneConfig | None,
        passno: int,
    ) -> bool:
        """Try ``variants`` (strongest first) of a compressing step; keep the first that holds quality.
        ``fn(model)`` of a variant changes a copy of the state's model and returns it."""
        for k, (desc, cfg, fn) in enumerate(variants):
            if self.out_of_time():
                self.log(f"time budget reached during {label}")
                return False
            started = time.monotonic()
            try:
                cand = fn(self.be.copy(state["model"]))
            except SlimkitError as exc:  # this variant cannot be built (e.g. nothing left to shrink): the next one
                self.log(f"  {label}{desc} cannot be applied: {exc}")
                continue
            if recovery is not None:
                self.finetune(cand, recovery)
            c = self.record(cand, f"{label}{desc}", cfg, started=started, passno=passno)
            if not c.quality_ok and recovery is not None and k == 0 and not self.out_of_time():
                c.note = "quality broken: fine-tuned again"
                self.finetune(cand, recovery)
                c = self.record(cand, f"{label}{desc} + more fine-tuning", cfg, started=started, passno=passno)
            if c.quality_ok:
                state["model"], state["candidate"] = cand, self.accept(c)
                return True
            c.note = "backed off: breaks the quality constraint"
            self.log(f"  backing off {label}{desc}")
        return False

    def compress_step(self, state: dict[str, Any], step: Config, recovery: FineTuneConfig | None, passno: int) -> bool:
        if isinstance(step, SensitivityPruneConfig):
            return self.budget_prune(state, step, recovery, passno)
        if isinstance(step, ChannelPruneConfig):
            cfg = step
            if step.target_macs is not None or step.target_params is not None:  # shares of the original
                now = self.be.costs(state["model"])
                cfg = dataclasses.replace(
                    step,
                    target_macs=None
                    if step.target_macs is None
                    else min(1.0, step.target_macs * self.base["costs"]["macs"] / now["macs"]),
                    target_params=None
                    if step.target_params is None
                    else min(1.0, step.target_params * self.base["costs"]["params"] / now["params"]),
                )
            mild = _milder(cfg)
            variants = [("", cfg, lambda m, c=cfg: self.be.prune(m, c))]
            if mild is not None:
                variants.append((" (milder)", mild, lambda m, c=mild: self.be.prune(m, c)))
            return self._attempt(state, "prune", variants, recovery, passno)
        if isinstance(step, LowRankConfig) and step.layers is None:
            step = self.pick_lowrank_layers(state["model"], step)
            if not step.layers:
                self.log("  low-rank: every layer is too sensitive (or would not shrink): step skipped")
                return False
        variants = [("", step, lambda m: self.be.transform(m, step))]
        mild = _milder(step)
        if mild is not None:
            variants.append((" (milder)", mild, lambda m: self.be.transform(m, mild)))
        return self._attempt(state, "low-rank", variants, recovery, passno)

    def budget_prune(
        self, state: dict[str, Any], step: SensitivityPruneConfig, recovery: FineTuneConfig | None, passno: int
    ) -> bool:
        """Sensitivity-allocated (or uniform / global) pruning to the step's budget, in rounds."""
        model = state["model"]
        limits = {
            k: getattr(step, f"target_{k}") * self.base["costs"][k]
            for k in ("macs", "params")
            if getattr(step, f"target_{k}") is not None
        }
        if step.allocation == "global":
            return self.global_prune(state, step, limits, recovery, passno)
        costs = self.be.cost_model(model, step.protected)
        if not costs.groups:
            self.log("  pruning: no prunable group (every group is blocked or protected): step skipped")
            return False
        ties = self.config_ties(model, costs, step)
        sens = self.get_sensitivity(model, step) if step.allocation == "sensitivity" else None
        final_w = self.resolve(model, costs, sens, step, limits, ties)
        return self.prune_in_rounds(state, step, final_w, dict(costs.groups), recovery, passno)

    def prune_in_rounds(
        self,
        state: dict[str, Any],
        step: SensitivityPruneConfig,
        final_w: dict[str, int],
        start_w: dict[str, int],
        recovery: FineTuneConfig | None,
        passno: int,
    ) -> bool:
        """Prune from ``start_w`` to ``final_w`` in ``step.rounds`` geometric rounds (one extra allowed),
        each with a milder fallback."""
        rounds, done_rounds, extra = step.rounds, 0, 1
        while True:
            # a group pruned to its last unit (one head, one key / value group) is no longer prunable
            current = dict(self.be.cost_model(state["model"], step.protected).groups)
            if all(current.get(p, w) <= w for p, w in final_w.items()):
                return True
            done_rounds += 1
            if done_rounds > rounds + extra:
                return False
            frac = min(1.0, done_rounds / rounds)
            round_w = _round_widths(start_w, final_w, frac, self.round_to_used)
            round_w = {p: w for p, w in round_w.items() if p in current}
            mid_w = {p: max(round_w[p], round(math.sqrt(current[p] * round_w[p]))) for p in round_w}
            label = f"prune round {done_rounds}/{rounds} ({step.allocation})"
            variants = []
            for desc, widths in (("", round_w), (" (milder)", mid_w)):
                ratios = {p: (current[p] - w) / current[p] for p, w in widths.items() if w < current[p]}
                if not ratios or (desc and widths == round_w):
                    continue
                cfg = step.channel_config(ratios)
                variants.append((desc, cfg, lambda m, c=cfg: self.be.prune(m, c)))
            if not variants:  # this round's widths round to the current ones: the next round
                continue
            if not self._attempt(state, label, variants, recovery, passno):
                return False

    def config_ties(self, model: Any, costs: CostModel, step: SensitivityPruneConfig) -> ConfigTies | None:
        """How the model's config sizes its groups, when ``step.widths`` asks for widths a
        ``transformers`` config describes (see :class:`SensitivityPruneConfig`); None: per-layer widths."""
        if step.widths == "per-layer" or step.allocation == "global":
            return None
        ties = self.be.config_ties(model, costs)
        if ties is None:
            if step.widths == "config":
                raise SlimkitError(
                    "widths='config' needs a Hugging Face transformers model (its config describes the widths); "
                    "use widths='auto' or 'per-layer'"
                )
            return None
        whole: dict[str, list[str]] = {}
        for p, why in ties.frozen.items():
            whole.setdefault(why, []).append(p)
        self.log(
            f"  widths as a {ties.config} sizes them (a from_pretrained folder): "
            + ", ".join(f"{k} ({len(v)} groups)" for k, v in ties.classes.items())
            + "".join(f"; kept whole: {', '.join(ps)} ({why})" for why, ps in whole.items())
        )
        return ties

    def resolve(
        self,
        model: Any,
        costs: CostModel,
        sens: Sensitivity | None,
        step: SensitivityPruneConfig,
        limits: dict[str, float],
        ties: ConfigTies | None = None,
    ) -> dict[str, int]:
        """Per-group final widths meeting ``limits`` on the real pruned model (:func:`fit_widths`), the
        groups that ``ties`` puts in one class pruned in proportion.

        Widths rounded to ``step.round_to`` that cannot meet the budget fall back to unrounded widths;
        config widths that do not fit (``step.widths="auto"``), to per-layer widths.
        """

        def pruned(ratios: dict[str, float]) -> Any:
            cfg = ChannelPruneConfig(ratio=0.0, ratios=ratios, protected=list(step.protected))
            return self.be.prune(self.be.copy(model), cfg) if ratios else model

        fit = functools.partial(
            fit_widths,
            costs,
            limits,
            lambda ratios: self.be.costs(pruned(ratios)),
            sens=sens,
            max_ratio=step.max_ratio,
            spread=step.spread,
        )
        found = None
        for tie in [ties, None] if ties is not None and step.widths == "auto" else [ties]:
            classes = None if tie is None else tie.tied(costs.groups)
            self.round_to_used = step.round_to
            found = fit(round_to=step.round_to, classes=classes)
            if found is None and _block(step.round_to) > 1:
                self.log(f"  widths in multiples of {_block(step.round_to)} cannot meet the budget: not rounding")
                self.round_to_used = 1
                found = fit(round_to=1, classes=classes)
            why = None if tie is None else self.config_misfit(tie, found, costs, limits, pruned, step.widths == "auto")
            if why is None:
                break
            if step.widths == "config":
                raise SlimkitError(f"widths='config': {why}; use widths='auto' or 'per-layer'")
            self.log(f"  {why}: per-layer widths (saved as model.pt2; widths='config' insists)")
        if found is None:
            kept = f" (kept whole: {', '.join(step.protected)}; a milder target or fewer protected layers)"
            raise SlimkitError(
                f"cannot meet the pruning budget {limits} by pruning the model's groups{kept if step.protected else ''}"
            )
        widths, ratios = found
        entry = {
            "allocation": step.allocation,
            "config_widths": tie is not None,
            "ratios": ratios,
            "widths": widths,
            "limits": limits,
            "estimated": costs.estimate(ratios),
            "base": costs.base,
        }
        if sens is not None:
            uni = uniform(costs, limits, max_ratio=step.max_ratio)
            entry["predicted_loss"] = sens.predicted_loss(ratios)
            entry["uniform_ratios"] = uni
            entry["uniform_predicted_loss"] = sens.predicted_loss(uni)
            self.log(
                f"  allocation: predicted validation-loss increase {entry['predicted_loss']:.3f} "
                f"(uniform: {entry['uniform_predicted_loss']:.3f})"
            )
        self.allocations.append(entry)
        self.log("  widths: " + ", ".join(f"{p} {costs.groups[p]} -> {w}" for p, w in widths.items()))
        return widths

    @staticmethod
    def config_misfit(
        ties: ConfigTies,
        found: tuple[dict[str, int], dict[str, float]] | None,
        costs: CostModel,
        limits: dict[str, float],
        pruned: Callable[[dict[str, float]], Any],
        coarse: bool,
    ) -> str | None:
        """Why the config widths ``found`` do not do (none, ``coarse``: far below the budget, or not a
        config's after all), or None."""
        if found is None:
            return f"no widths a {ties.config} describes meet the budget"
        ratios = {p: (costs.groups[p] - w) / costs.groups[p] for p, w in found[0].items() if w < costs.groups[p]}
        if coarse:  # a config's widths move in coarse steps (a tiny model's half hidden size)
            est = costs.estimate(ratios)
            fill, kind = max((est[k] / lim, k) for k, lim in limits.items())
            if fill < CONFIG_FILL:
                return f"widths a {ties.config} describes would cut {kind} to {fill:.0%} of the budget (too coarse)"
        return ties.check(pruned(ratios))

    def pick_lowrank_layers(self, model: Any, step: LowRankConfig) -> LowRankConfig:
        """Factorize only the layers whose low-rank sensitivity is small: factorizing one alone (SVD, at
        the probed rank share nearest the step's) may cost at most half the allowed quality drop."""
        self.log("  low-rank sensitivity: factorizing each Linear / Conv2d alone (validation split)")
        m = self.target.metric
        layers = self.be.lowrank_probe(model, (0.5, 0.25, 0.125), self.probe_scores, m)
        if self.sensitivity is None:
            self.sensitivity = Sensitivity(key="lowrank", base=self.probe_scores(model), groups={}, metric=m)
        self.sensitivity.layers = layers
        share = step.ratio if step.ratio is not None else 0.5
        allowed = 0.5 * (self.target.max_drop if self.target.max_drop is not None else (1.0 if in_points(m) else 0.01))
        chosen = []
        for name, entry in layers.items():
            k = min(range(len(entry["ratios"])), key=lambda j: abs(entry["ratios"][j] - share))
            if self.target.drop({m: entry[m][k]}, self.sensitivity.base) <= allowed:
                chosen.append(name)
        skipped = sorted(set(layers) - set(chosen))
        self.log(
            f"  low-rank: factorizing {', '.join(chosen) or 'nothing'}"
            + (f"; too sensitive: {', '.join(skipped)}" if skipped else "")
        )
        return dataclasses.replace(step, layers=tuple(chosen))

    def probe_scores(self, model: Any) -> dict[str, float]:
        """Validation ``loss`` and deciding metric of a sensitivity probe."""
        return self.target.probe_scores(self.be.scores(model, "val"))

    def get_sensitivity(self, model: Any, step: SensitivityPruneConfig) -> Sensitivity:
        """Per-group sensitivity of ``model`` (from the run folder's cache when it was measured before)."""
        metric = self.target.metric
        name = getattr(self.be.data, "name", None) or "user evaluate"
        batches = getattr(self.be, "val_batches", None)
        key = sensitivity_key(
            self.be.fingerprint(model), step.importance, tuple(step.probe_ratios), name, False, metric, batches
        )

        def measure() -> Sensitivity:
            self.log(
                "  sensitivity: pruning each group alone at "
                f"{', '.join(f'{r:.0%}' for r in step.probe_ratios)} (validation split)"
            )
            started = time.perf_counter()
            base = self.probe_scores(model)
            groups = self.be.probe(model, step, self.target)
            return Sensitivity(key, base, groups, seconds=time.perf_counter() - started, metric=metric)

        if self.sensitivity_cache is None:
            sens = measure()
            self.log(f"  sensitivity: {len(sens.groups)} groups in {sens.seconds:.1f} s")
        else:
            sens = self.sensitivity_cache(key, measure)
        self.sensitivity = sens
        return sens

    def global_prune(
        self,
        state: dict[str, Any],
        step: SensitivityPruneConfig,
        limits: dict[str, float],
        recovery: FineTuneConfig | None,
        passno: int,
    ) -> bool:
        for r in range(1, step.rounds + 1):
            now = self.be.costs(state["model"])
            frac = r / step.rounds
            shares = {
                k: (lim / self.base["costs"][k]) ** frac * self.base["costs"][k] / now[k] for k, lim in limits.items()
            }
            if all(s >= 1 for s in shares.values()):
                continue
            cfg = dataclasses.replace(
                step.channel_config({}),
                global_ranking=True,
                max_ratio=step.max_ratio,
                round_to=step.round_to,
                target_macs=min(1.0, shares["macs"]) if "macs" in shares else None,
                target_params=min(1.0, shares["params"]) if "params" in shares else None,
            )
            fn = lambda m, c=cfg: self.be.prune(m, c)  # noqa: E731
            if not self._attempt(state, f"prune round {r}/{step.rounds} (global)", [("", cfg, fn)], recovery, passno):
                return False
        return True

    def quantize_step(self, state: dict[str, Any], step: QuantizeConfig, passno: int, qat: QATConfig | None) -> None:
        """int8 ONNX of the state's model, kept when it holds the quality constraint (the slack the fp32
        candidate leaves is what int8 may use); when it does not, ``qat`` fine-tunes a copy of the model
        quantization-aware and quantizes that."""
        if self.be.data is None:
            self.log("  int8 quantization skipped: it calibrates on data (pass data= with your own evaluate)")
            state["backed_off"].append("QuantizeConfig (no calibration data)")
            return
        started = time.monotonic()
        c_fp32 = state["candidate"]
        cfg = step
        if step.max_drop is None and self.target.max_drop is not None and not self.target.min_metrics:
            slack = self.target.slack(c_fp32.metrics, self.base["metrics"]) if c_fp32 is not None else 0.0
            cfg = dataclasses.replace(step, max_drop=max(0.0, slack))
        if step.runtime is None:  # made for (and measured on) the runtime the target names
            cfg = dataclasses.replace(cfg, runtime=self.target.runtime)
        if step.latency_batch is None:
            cfg = dataclasses.replace(cfg, latency_batch=self.target.latency_batch)
        fp32_ms = c_fp32.costs.get("latency") if c_fp32 is not None else None
        if step.max_latency is None and fp32_ms:
            # mixed precision: the layers int8 hurts most may stay in float as long as the latency holds
            cfg = dataclasses.replace(cfg, max_latency=self.limits["latency"] / fp32_ms)
        path = self.scratch(".int8.onnx")
        result = self.be.quantize(state["model"], cfg, path)
        c = self.record(state["model"], f"int8 ({result.mode})", cfg, onnx=path, started=started, passno=passno)
        c.note = result.reason
        if not c.quality_ok and qat is not None:
            if result.mode == "int4" or self.out_of_time():
                why = "int4 is weight-only" if result.mode == "int4" else "the time budget is spent"
                self.log(f"  int8 breaks the quality constraint; quantization-aware training skipped: {why}")
            else:
                self.log(f"  int8 breaks the quality constraint: quantization-aware training ({qat.epochs} epochs)")
                started = time.monotonic()
                model = self.be.copy(state["model"])
                ft = FineTuneConfig(
                    epochs=qat.epochs, steps_per_epoch=qat.steps_per_epoch, lr=qat.lr, distill=qat.distill
                )
                with self.be.fake_quantized(model, result, qat.momentum):
                    self.finetune(model, ft)
                path = self.scratch(".int8.onnx")
                result = self.be.quantize(model, cfg, path)
                c = self.record(
                    model, f"int8 ({result.mode}) after QAT", qat, onnx=path, started=started, passno=passno
                )
                c.note = result.reason
                if c.quality_ok:
                    state["model"] = model
        if c.quality_ok:
            state["onnx"], state["candidate"], state["quantize"] = path, self.accept(c), result.to_dict()
        else:
            c.note = "backed off: int8 breaks the quality constraint; the fp32 model is kept"
            self.log("  backing off int8 quantization")


def _block(round_to: int | str) -> int:
    if round_to != "auto":
        return int(round_to)
    try:
        from slimkit.core.hardware import simd_channels
    except ImportError:  # pragma: no cover (older trees)
        return 8
    return simd_channels()


def _round_widths(start_w: dict[str, int], final_w: dict[str, int], frac: float, round_to: int | str) -> dict[str, int]:
    """The widths ``frac`` of the way from ``start_w`` to ``final_w`` (geometric), each rounded to the
    nearest block of ``round_to`` (rounding up kept narrow groups, 32 -> 16 in blocks of 8, whole until
    the last round, which then cut half the MACs); exactly ``final_w`` at ``frac`` 1."""
    if frac >= 1:
        return dict(final_w)
    return {
        p: max(w, _round_width(start_w[p], round(start_w[p] * (w / start_w[p]) ** frac), round_to, nearest=True))
        for p, w in final_w.items()
    }


def _round_width(n: int, keep: int, round_to: int | str, *, nearest: bool = False) -> int:
    """``keep`` rounded up (or to the nearest) multiple of ``round_to`` when the group has that many
    units, at least 1."""
    keep = max(1, keep)
    round_to = _block(round_to)
    if nearest and round_to > 1 and n >= round_to:
        return min(n, max(round_to, round(keep / round_to) * round_to))
    if round_to > 1 and n >= round_to:
        keep = min(n, max(round_to, math.ceil(keep / round_to) * round_to))
    return keep


def _milder(cfg: Config) -> Config | None:
    """A gentler version of a compressing config (halfway back to the original), or None."""
    if isinstance(cfg, ChannelPruneConfig):
        if cfg.target_macs is not None or cfg.target_params is not None:
            return dataclasses.replace(
                cfg,
                target_macs=None if cfg.target_macs is None else math.sqrt(cfg.target_macs),
                target_params=None if cfg.target_params is None else math.sqrt(cfg.target_params),
            )
        return dataclasses.replace(cfg, ratio=cfg.ratio / 2, ratios={k: v / 2 for k, v in cfg.ratios.items()})
    if isinstance(cfg, LowRankConfig):
        for k in ("ratio", "energy", "budget"):
            v = getattr(cfg, k)
            if v is not None:
                return None if v >= 1 else dataclasses.replace(cfg, **{k: (1 + v) / 2})
        if cfg.rank is not None:
            return dataclasses.replace(cfg, rank=cfg.rank * 2)
        return dataclasses.replace(cfg, ratio=0.75)
    return None


def tighten(recipe: Recipe, factor: float) -> Recipe | None:
    """The recipe with its pruning budgets multiplied by ``factor`` (< 1), or None if it has none."""
    steps, changed = [], False
    for s in recipe.steps:
        if isinstance(s, SensitivityPruneConfig | ChannelPruneConfig) and (s.target_macs or s.target_params):
            s = dataclasses.replace(
                s,
                target_macs=None if s.target_macs is None else max(1e-3, s.target_macs * factor),
                target_params=None if s.target_params is None else max(1e-3, s.target_params * factor),
            )
            changed = True
        steps.append(s)
    return Recipe(tuple(steps)) if changed else None


def copy_file(src: Path, dst: Path) -> None:
    from slimkit.core.files import atomic_path

    with atomic_path(dst, force=True) as tmp:
        shutil.copy(src, tmp)
