"""``optimize`` for Keras models: meet a budget with the least accuracy lost, natively in Keras.

The same closed loop as :func:`slimkit.optimize.optimize`, with the framework-neutral parts reused
as they are: :class:`~slimkit.optimize.Target` and :func:`~slimkit.optimize.auto_recipe` (the
recipe), :class:`~slimkit.optimize.Sensitivity` with :func:`~slimkit.optimize.allocate` /
:func:`~slimkit.optimize.uniform` (per-group pruning ratios over a :class:`KerasCostModel`), the
candidates, Pareto front and ``report.json`` / ``report.html`` of
:class:`~slimkit.optimize.OptimizeResult`, and int8 ONNX by :func:`slimkit.compress.quantize` on
the Keras model's ONNX export. The model edits are the Keras transforms
(:func:`~slimkit.keras.prune_units`, :func:`~slimkit.keras.fold_batchnorm`) and recovery is Keras
``fit`` with distillation from the original (:func:`slimkit.keras.distill.fit`).

Recipe steps available for Keras: ``SensitivityPruneConfig`` (allocation ``sensitivity`` or
``uniform``, importance ``l1`` / ``l2``), ``ChannelPruneConfig`` (``ratio`` / ``ratios``, l1 / l2),
``FineTuneConfig``, ``FoldConfig`` and ``QuantizeConfig``. Not available: Optuna ``trials``,
``resume``, low-rank steps and ``global`` allocation (a clear error names them).

Example::

    from slimkit.keras.optimize import optimize

    result = optimize("model.keras", "mnist5k", "macs=0.25", max_drop=0.5, output="runs/keras-opt")
    print(result.comparison)  # runs/keras-opt: model.keras, model.onnx, model.int8.onnx, report.html
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.compress import QuantizeConfig
from slimkit.core.errors import SlimkitError
from slimkit.core.transform import Config
from slimkit.keras._graph import Graph, keras_module, load, rebuild
from slimkit.keras.cost import KerasCostModel, count_macs, count_params, group_widths, weights_bytes, widths
from slimkit.keras.data import arrays, for_model
from slimkit.keras.files import export_onnx, save
from slimkit.keras.fuse import probabilities
from slimkit.keras.prune import IMPORTANCE, prune_units
from slimkit.keras.simplify import fold_batchnorm
from slimkit.optimize.pipeline import BackOff, Candidate, Log, _round_width, ort_latency, pareto_front
from slimkit.optimize.recipe import FineTuneConfig, Recipe, SensitivityPruneConfig, auto_recipe
from slimkit.optimize.run import OptimizeResult, _rank, resolve_recipe, run_folder, run_passes
from slimkit.optimize.sensitivity import Sensitivity, allocate, uniform
from slimkit.optimize.target import Target, parse_target
from slimkit.prune import ChannelPruneConfig
from slimkit.simplify import FoldConfig

__all__ = ["KerasOptimizeResult", "check_recipe", "measure_sensitivity", "optimize"]

KERAS_STEPS = (SensitivityPruneConfig, ChannelPruneConfig, FineTuneConfig, FoldConfig, QuantizeConfig)


@dataclasses.dataclass
class KerasOptimizeResult(OptimizeResult):
    """:class:`~slimkit.optimize.OptimizeResult` of a Keras run: ``model`` is the optimized Keras model.

    ``before`` / ``after`` are measured on the test split through ONNX Runtime: the fp32 ONNX
    export of the original, and the deployed artifact (the int8 file when there is one).
    """

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["framework"] = "keras"
        int8 = "model.int8.onnx" if self.int8_path else None
        d["files"] = {"keras": "model.keras", "onnx": "model.onnx", "int8": int8}
        return d

    def _save_model(self, path: Path) -> None:
        """``model.keras`` and its fp32 ``model.onnx`` in ``path``."""
        save(self.model, path / "model.keras", force=True)
        export_onnx(self.model, path / "model.onnx", force=True)


def check_recipe(recipe: Recipe) -> None:
    """Raise a :class:`SlimkitError` naming the first step (or setting) the Keras loop cannot run."""
    names = ", ".join(t.__name__ for t in KERAS_STEPS)
    for i, s in enumerate(recipe.steps, start=1):
        if not isinstance(s, KERAS_STEPS):
            raise SlimkitError(f"recipe step {i}: {type(s).__name__} is not available for Keras models; use {names}")
        if isinstance(s, SensitivityPruneConfig | ChannelPruneConfig) and s.importance not in IMPORTANCE:
            raise SlimkitError(f"recipe step {i}: importance {s.importance!r} is not available for Keras models; "
                               f"choose {' or '.join(IMPORTANCE)}")  # fmt: skip
        if isinstance(s, SensitivityPruneConfig) and s.allocation == "global":
            raise SlimkitError(f"recipe step {i}: allocation 'global' is not available for Keras models; "
                               "choose sensitivity or uniform")  # fmt: skip
        if isinstance(s, ChannelPruneConfig) and (s.target_macs is not None or s.target_params is not None):
            raise SlimkitError(f"recipe step {i}: ChannelPruneConfig budgets are not available for Keras models; "
                               "use SensitivityPruneConfig(target_macs=...) or ratios")  # fmt: skip


def _nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())


class KerasLoop(BackOff):
    """State of one Keras optimization run: the original, the data (laid out for it), budgets, candidates."""

    def __init__(self, original: Any, data: Any, target: Target, *, workdir: Path, deadline: float | None,
                 log: Log, seed: int = 0, verbose: int = 0) -> None:  # fmt: skip
        self.original = original
        self.data = data
        self.train = arrays(data, "train")
        self.val = arrays(data, "val")
        self.example = data.example
        self.target = target
        self.workdir = workdir
        self.deadline = deadline
        self.log = log
        self.seed = seed
        self.verbose = verbose
        self.candidates: list[Candidate] = []
        self.allocations: list[dict[str, Any]] = []
        self.sensitivity: Sensitivity | None = None
        self.reference_onnx: Path | None = None
        self.round_to_used: int | str = 1
        self._n = 0
        self.base = self.measure_base()
        self.limits = target.limits(self.base["costs"])

    # ---- measuring -------------------------------------------------------------------------
    def scratch(self, suffix: str) -> Path:
        self._n += 1
        return self.workdir / f"candidate-{self._n:03d}{suffix}"

    def measure_base(self) -> dict[str, Any]:
        metrics, loss = self.val_metrics(self.original)
        costs = self.costs(self.original)
        self.reference_onnx = self.workdir / "original.onnx"
        export_onnx(self.original, self.reference_onnx, force=True)
        if "latency" in self.target.costs():
            costs["latency"] = ort_latency(self.reference_onnx, self.example, self.target.latency_batch, runs=40)[0]
        return {"metrics": metrics, "loss": loss, "costs": costs}

    def val_metrics(self, model: Any) -> tuple[dict[str, float], float]:
        """Validation metrics and log loss of a Keras model or an :class:`~slimkit.io.OnnxModel`."""
        from slimkit.evaluate.metrics import classification_metrics

        x, y = self.val
        if hasattr(model, "predict"):
            probs = probabilities(model, x)
        else:
            import torch

            out = np.concatenate([model(torch.from_numpy(xb)).numpy() for xb in np.array_split(x, -(-len(x) // 256))])
            probs = out.astype(np.float64)
            if not (probs.min() >= 0 and np.allclose(probs.sum(-1), 1, atol=1e-3)):  # logits
                probs = np.exp(probs - probs.max(-1, keepdims=True))
                probs /= probs.sum(-1, keepdims=True)
        metrics, _ = classification_metrics(probs, y, self.data.num_classes or probs.shape[1])
        return metrics, _nll(probs, y)

    def costs(self, model: Any) -> dict[str, float | None]:
        return {"macs": count_macs(model), "params": count_params(model), "bytes": weights_bytes(model)}

    def paired(self, ms: float, reference_ms: float | None) -> float:
        return ms if not reference_ms else ms / reference_ms * self.base["costs"]["latency"]

    def record(self, model: Any, step: str, config: Config | dict | None, *, onnx: Path | None = None,
               started: float, passno: int) -> Candidate:  # fmt: skip
        """Validate ``model`` (or the int8 ``onnx`` file made from it) and keep it as a candidate."""
        from slimkit.io.onnx import OnnxModel

        costs = self.costs(model)
        if onnx is not None:
            metrics, loss = self.val_metrics(OnnxModel(onnx))
            costs["bytes"] = onnx.stat().st_size
        else:
            metrics, loss = self.val_metrics(model)
        if "latency" in self.limits:
            path = onnx
            if path is None:
                path = self.scratch(".onnx")
                export_onnx(model, path, force=True)
            costs["latency"] = self.paired(*ort_latency(path, self.example, self.target.latency_batch,
                                                        reference=self.reference_onnx))  # fmt: skip
        cfg = config.to_dict() if isinstance(config, Config) else dict(config or {})
        c = Candidate(
            id=len(self.candidates), step=step, config=cfg, metrics=metrics, loss=loss, costs=costs,
            quality_ok=self.target.quality_ok(metrics, self.base["metrics"]),
            cost_ok=self.target.cost_ok(costs, self.base["costs"]), seconds=time.monotonic() - started,
            widths=widths(model), passno=passno,
        )  # fmt: skip
        self.candidates.append(c)
        m = self.target.metric
        drop = 100 * (self.base["metrics"][m] - metrics[m])
        self.log(f"  [{c.id}] {step}: val {m} {100 * metrics[m]:.2f}% ({-drop:+.2f} pts), "
                 f"MACs {costs['macs'] / self.base['costs']['macs']:.3f}x, "
                 f"file {costs['bytes'] / self.base['costs']['bytes']:.3f}x"
                 + (f", latency {costs['latency'] / self.base['costs']['latency']:.2f}x" if "latency" in costs else "")
                 + ("" if c.quality_ok else "  [breaks the quality constraint]"))  # fmt: skip
        return c

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    # ---- steps -----------------------------------------------------------------------------
    def finetune(self, model: Any, cfg: FineTuneConfig) -> None:
        from slimkit.keras.distill import fit

        fit(model, self.train, self.val, epochs=cfg.epochs, lr=cfg.lr, optimizer=cfg.optimizer,
            teacher=self.original if cfg.distill else None, temperature=cfg.temperature, alpha=cfg.alpha,
            augment=self.data.augment if cfg.augment else None, patience=cfg.patience, seed=self.seed,
            verbose=self.verbose)  # fmt: skip

    def run_pass(self, recipe: Recipe, passno: int = 1) -> dict[str, Any]:
        """Run every recipe step once; returns the pass's final state (model, int8 path, candidate)."""
        model = rebuild(Graph(self.original))  # a copy: fine-tuning trains in place
        state: dict[str, Any] = {"model": model, "onnx": None, "candidate": None, "backed_off": []}
        steps = list(recipe.steps)
        i = 0
        while i < len(steps):
            step = steps[i]
            recovery = steps[i + 1] if i + 1 < len(steps) and isinstance(steps[i + 1], FineTuneConfig) else None
            if self.out_of_time():
                self.log(f"time budget reached: stopping before step {i + 1} ({type(step).__name__})")
                break
            started = time.monotonic()
            if isinstance(step, SensitivityPruneConfig | ChannelPruneConfig):
                if not self.compress_step(state, step, recovery, passno):
                    state["backed_off"].append(type(step).__name__)
                i += 2 if recovery is not None else 1
                continue
            if isinstance(step, FineTuneConfig):
                self.finetune(state["model"], step)
                state["candidate"] = self.accept(self.record(state["model"], "fine-tune", step, started=started,
                                                             passno=passno))  # fmt: skip
            elif isinstance(step, FoldConfig):
                state["model"] = fold_batchnorm(state["model"]).model
                state["candidate"] = self.accept(self.record(state["model"], "fold", step, started=started,
                                                             passno=passno))  # fmt: skip
            elif isinstance(step, QuantizeConfig):
                self.quantize_step(state, step, passno)
            i += 1
        if state["candidate"] is None:
            state["candidate"] = self.accept(self.record(state["model"], "unchanged", None, started=time.monotonic(),
                                                         passno=passno))  # fmt: skip
        return state

    def accept(self, c: Candidate) -> Candidate:
        c.accepted = True
        return c

    def _candidate(self, model: Any, fn: Any) -> Any:
        """Keras transforms return a new model: ``fn(model)`` is the candidate."""
        return fn(model)

    def compress_step(self, state: dict[str, Any], step: Config, recovery: FineTuneConfig | None,
                      passno: int) -> bool:  # fmt: skip
        if isinstance(step, SensitivityPruneConfig):
            return self.budget_prune(state, step, recovery, passno)
        cfg: ChannelPruneConfig = step  # type: ignore[assignment]
        prunable = group_widths(state["model"], cfg.protected)
        ratios = dict(cfg.ratios) if cfg.ratios else dict.fromkeys(prunable, cfg.ratio)
        mild = {k: v / 2 for k, v in ratios.items()}
        variants = [(desc, cfg if not desc else {"ratios": r}, lambda m, r=r: prune_units(m, r, cfg.importance).model)
                    for desc, r in (("", ratios), (" (milder)", mild))]  # fmt: skip
        return self._attempt(state, "prune", variants, recovery, passno)

    def budget_prune(self, state: dict[str, Any], step: SensitivityPruneConfig, recovery: FineTuneConfig | None,
                     passno: int) -> bool:  # fmt: skip
        """Sensitivity-allocated (or uniform) pruning to the step's budget, in rounds (as the PyTorch loop)."""
        model = state["model"]
        limits = {k: getattr(step, f"target_{k}") * self.base["costs"][k]
                  for k in ("macs", "params") if getattr(step, f"target_{k}") is not None}  # fmt: skip
        costs = KerasCostModel(model, step.protected)
        if not costs.groups:
            self.log("  pruning: no prunable unit group (every group is blocked or protected): step skipped")
            return False
        sens = None
        if step.allocation == "sensitivity":
            self.log(f"  sensitivity: pruning each group alone at {', '.join(f'{r:.0%}' for r in step.probe_ratios)}"
                     " (validation split)")  # fmt: skip
            sens = measure_sensitivity(model, self.val, importance=step.importance, probe_ratios=step.probe_ratios,
                                       protected=step.protected)  # fmt: skip
            self.sensitivity = sens
            self.log(f"  sensitivity: {len(sens.groups)} groups in {sens.seconds:.1f} s")
        final_w = self.resolve(model, costs, sens, step, limits)

        def variant(ratios: dict[str, float]) -> tuple[dict, Any]:
            cfg = {"ratios": ratios, "importance": step.importance}
            return cfg, lambda m: prune_units(m, ratios, step.importance).model

        return self.prune_in_rounds(state, step, final_w, dict(costs.groups), recovery, passno, variant,
                                    lambda m: group_widths(m, step.protected))  # fmt: skip

    def resolve(self, model: Any, costs: KerasCostModel, sens: Sensitivity | None, step: SensitivityPruneConfig,
                limits: dict[str, float]) -> dict[str, int]:  # fmt: skip
        """Final widths per group meeting ``limits`` on the real pruned model (estimates checked, tightened)."""
        found = None
        for round_to in dict.fromkeys([step.round_to, 1]):  # rounded widths first, unrounded if they cannot fit
            self.round_to_used = round_to
            goal = dict(limits)
            for _ in range(6):
                try:
                    if sens is not None:
                        ratios = allocate(sens, costs, goal, max_ratio=step.max_ratio, spread=step.spread)
                    else:
                        ratios = uniform(costs, goal, max_ratio=step.max_ratio)
                except SlimkitError:
                    break
                target_w = {p: _round_width(n, n - round(n * ratios.get(p, 0.0)), round_to, nearest=True)
                            for p, n in costs.groups.items()}  # fmt: skip
                cut = {p: (n - target_w[p]) / n for p, n in costs.groups.items() if target_w[p] < n}
                trial = prune_units(model, cut, step.importance).model
                real = {"macs": count_macs(trial), "params": count_params(trial)}
                over = max([real[k] / lim for k, lim in limits.items()] + [0.0])
                if over <= 1 + 1e-9:
                    found = ratios, target_w, real
                    break
                goal = {k: v / over * 0.99 for k, v in goal.items()}
            if found is not None:
                break
            if round_to != 1:
                self.log(f"  widths in multiples of {round_to} cannot meet the budget: not rounding")
        if found is None:
            raise SlimkitError(f"cannot meet the pruning budget {limits} by pruning the model's unit groups")
        ratios, target_w, real = found
        entry = {"allocation": step.allocation, "ratios": ratios, "widths": target_w, "limits": limits,
                 "estimated": costs.estimate(ratios), "measured": real, "base": costs.base}  # fmt: skip
        if sens is not None:
            uni = uniform(costs, goal, max_ratio=step.max_ratio)
            entry["predicted_loss"] = sens.predicted_loss(ratios)
            entry["uniform_ratios"] = uni
            entry["uniform_predicted_loss"] = sens.predicted_loss(uni)
            self.log(f"  allocation: predicted validation-loss increase {entry['predicted_loss']:.3f} "
                     f"(uniform: {entry['uniform_predicted_loss']:.3f})")  # fmt: skip
        self.allocations.append(entry)
        self.log("  widths: " + ", ".join(f"{p} {costs.groups[p]} -> {w}" for p, w in target_w.items()))
        return target_w

    def quantize_step(self, state: dict[str, Any], step: QuantizeConfig, passno: int) -> None:
        from slimkit.compress import quantize

        started = time.monotonic()
        fp32 = self.scratch(".onnx")
        export_onnx(state["model"], fp32, force=True)
        path = self.scratch(".int8.onnx")
        result = quantize(fp32, self.data, step, path, force=True)
        c = self.record(state["model"], f"int8 ({result.mode})", step, onnx=path, started=started, passno=passno)
        c.note = result.reason
        if c.quality_ok:
            state["onnx"], state["candidate"], state["quantize"] = path, self.accept(c), result.to_dict()
        else:
            c.note = "backed off: int8 breaks the quality constraint; the fp32 model is kept"
            self.log("  backing off int8 quantization")


def measure_sensitivity(
    model: Any,
    val: tuple[np.ndarray, np.ndarray],
    *,
    importance: str = "l2",
    probe_ratios: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9),
    protected: tuple[str, ...] | list[str] = (),
) -> Sensitivity:
    """Prune each unit group of a Keras ``model`` alone at ``probe_ratios``; validation loss and accuracy.

    ``val`` is ``(x, y)`` laid out for the model. The result is a :class:`slimkit.optimize.Sensitivity`
    (groups keyed by their first producer layer), ready for :func:`slimkit.optimize.allocate`.
    """
    import hashlib

    start = time.perf_counter()
    x, y = val

    def scores(net: Any) -> dict[str, float]:
        probs = probabilities(net, x)
        return {"loss": _nll(probs, y), "accuracy": float((probs.argmax(-1) == y).mean())}

    base = scores(model)
    groups: dict[str, dict[str, Any]] = {}
    for producer, n in group_widths(model, protected).items():
        entry: dict[str, Any] = {"units": n, "group": producer, "ratios": [], "loss": [], "accuracy": [], "macs": []}
        for r in probe_ratios:
            trial = prune_units(model, {producer: r}, importance).model
            s = scores(trial)
            entry["ratios"].append(r)
            entry["loss"].append(s["loss"])
            entry["accuracy"].append(s["accuracy"])
            entry["macs"].append(count_macs(trial))
        groups[producer] = entry
    key = hashlib.sha256(f"{model.name}|{importance}|{tuple(probe_ratios)}|{len(y)}".encode()).hexdigest()[:16]
    return Sensitivity(key=key, base=base, groups=groups, seconds=time.perf_counter() - start)


def optimize(
    model: Any,
    data: Any,
    target: Target | str | list[str],
    *,
    max_drop: float | None = None,
    recipe: Recipe | str | Path | dict | None = "auto",
    output: str | Path | None = None,
    quantize: bool | None = None,
    finetune_epochs: int = 4,
    rounds: int = 2,
    allocation: str = "sensitivity",
    importance: str = "l2",
    round_to: int | str | None = None,
    seed: int = 0,
    force: bool = False,
    html: bool = True,
    verbose: int = 0,
    log: Log | None = None,
) -> KerasOptimizeResult:
    """Make a Keras ``model`` (or ``.keras`` file) meet ``target`` with the least loss of quality.

    ``data`` is a slimkit Dataset or its name, laid out for the model (:func:`slimkit.keras.data.for_model`):
    training data fine-tunes, the validation split drives every decision, the test split is used
    once at the end. ``target`` is a :class:`~slimkit.optimize.Target` or strings such as
    ``"macs=0.25"`` (then ``max_drop`` gives the quality constraint). The other arguments are
    those of :func:`slimkit.optimize.optimize`, except ``quantize``: a Keras model is deployed through
    its ONNX export, so by default (None) the recipe ends with int8 quantization, kept only if it
    holds the quality constraint (``quantize=False``: fp32 ONNX only). With ``output``, the run folder receives
    ``model.keras``, ``model.onnx``, ``model.int8.onnx`` (when quantized), ``recipe.json``,
    ``report.json`` and ``report.html``; otherwise call :meth:`KerasOptimizeResult.save`.
    """
    import torch

    started = time.monotonic()
    log = log or (lambda s: None)
    if isinstance(target, str | list):
        target = parse_target(target, max_drop=max_drop)
    if not isinstance(target, Target):
        raise SlimkitError(f"target must be a slimkit.Target or strings like 'macs=0.25', got {type(target).__name__}")
    target = target.for_task("accuracy")
    original = load(model)
    keras_module().utils.set_random_seed(seed)
    torch.manual_seed(seed)
    data = for_model(data, original)
    if len(original.outputs) != 1 or len(tuple(original.outputs[0].shape)) != 2:
        raise SlimkitError("optimize takes a classifier with one (batch, classes) output")
    manifest = {"model": str(model) if isinstance(model, str | Path) else model.name, "target": target.to_dict()}
    with run_folder(output, resume=False, force=force, manifest=manifest) as (workdir, temporary):
        deadline = None if target.time_budget is None else started + target.time_budget
        scratch = workdir / ".work"
        scratch.mkdir(exist_ok=True)
        log(f"target: {target}")
        loop = KerasLoop(
            original, data, target, workdir=scratch, deadline=deadline, log=log, seed=seed, verbose=verbose
        )
        m = target.metric
        log(f"original on validation: {m} {100 * loop.base['metrics'][m]:.2f}%, MACs {loop.base['costs']['macs']:,}, "
            f"params {loop.base['costs']['params']:,}")  # fmt: skip
        if recipe is None or recipe == "auto":
            quantize = True if quantize is None else quantize  # deployed through ONNX: int8 unless told otherwise
            recipe = auto_recipe(target, loop.base["costs"], quantize=quantize, finetune_epochs=finetune_epochs,
                                 rounds=rounds, allocation=allocation, importance=importance,
                                 round_to=round_to)  # fmt: skip
        else:
            recipe = resolve_recipe(recipe)
        check_recipe(recipe)
        log(f"recipe: {recipe}")
        notes: list[str] = []
        states, recipe = run_passes(loop, recipe, notes, log)
        best = max(states, key=lambda s: _rank(s, loop.limits, target))
        if not best["candidate"].target_ok:
            notes.append("the target was NOT met on validation: the report shows the closest candidate")
        result = _finish(loop, best, recipe, notes, started, None if temporary else workdir, log)
        if not temporary:
            result.save(workdir, force=True, html=html)
            shutil.rmtree(scratch, ignore_errors=True)
    if not temporary:  # the folder may have been built aside and swapped in: point at its final place
        result.placed_in(Path(output))  # type: ignore[arg-type]
        log(f"saved {output}")
    return result


def _finish(loop: KerasLoop, state: dict[str, Any], recipe: Recipe, notes: list[str], started: float,
            output: Path | None, log: Log) -> KerasOptimizeResult:  # fmt: skip
    """Test-split measurement (once, at the end) of the original and the chosen model, through ONNX Runtime."""
    from slimkit.evaluate import evaluate
    from slimkit.io.onnx import OnnxModel

    data, target = loop.data, loop.target
    batches = tuple(sorted({1, target.latency_batch, 64}))
    log("measuring on the test split (once): original, then the optimized model (ONNX Runtime)")
    model = state["model"]
    reference = loop.reference_onnx
    before = evaluate(OnnxModel(reference), data, split="test", batch_sizes=batches)
    before.model = f"{loop.original.name} (fp32 ONNX)"
    before.macs, before.params = count_macs(loop.original), count_params(loop.original)
    int8 = state.get("onnx")
    deployed = int8
    if deployed is None:
        deployed = loop.scratch(".onnx")
        export_onnx(model, deployed, force=True)
    after = evaluate(OnnxModel(deployed), data, split="test", batch_sizes=batches)
    after.model = f"{model.name} ({'int8' if int8 is not None else 'fp32'} ONNX)"
    after.macs, after.params = count_macs(model), count_params(model)
    ms, ref_ms = ort_latency(deployed, loop.example, target.latency_batch, runs=30, reference=reference)
    speed = {"batch": target.latency_batch, "original_fp32_onnx_ms": ref_ms, "optimized_ms": ms,
             "speedup": ref_ms / ms, "deployed": "int8 ONNX" if int8 is not None else "fp32 ONNX",
             "original_fp32_onnx_bytes": reference.stat().st_size, "optimized_onnx_bytes": deployed.stat().st_size,
             "smaller": reference.stat().st_size / deployed.stat().st_size}  # fmt: skip
    for c in loop.candidates:
        c.pareto = c.id in pareto_front(loop.candidates, target.metric, "macs", target.higher_is_better)
    chosen: Candidate = state["candidate"]
    return KerasOptimizeResult(
        model=model, int8_path=int8, target=target, recipe=recipe, base_val=loop.base, before=before, after=after,
        candidates=loop.candidates, chosen=chosen.id, target_met=chosen.target_ok, sensitivity=loop.sensitivity,
        allocations=loop.allocations, widths_before=widths(loop.original), widths_after=widths(model),
        seconds=time.monotonic() - started, output=output, notes=notes, quantize=state.get("quantize"), speed=speed,
    )  # fmt: skip
