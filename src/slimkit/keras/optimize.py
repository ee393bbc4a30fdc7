"""``optimize`` for Keras models: meet a budget with the least accuracy lost, natively in Keras.

The loop is the one of :func:`slimkit.optimize.optimize` (candidates, back-off, budget fitting,
passes, Optuna search with ``trials``, ``resume``, report): :class:`KerasBackend` is its Keras side.
The model edits are the Keras transforms (:func:`~slimkit.keras.prune_units`,
:func:`~slimkit.keras.fold_batchnorm`), recovery is Keras ``fit`` with distillation from the
original (:func:`slimkit.keras.distill.fit`), quality and latency are measured on the model's ONNX
export with ONNX Runtime, and int8 is :func:`slimkit.compress.quantize` of that export.

Recipe steps available for Keras: ``SensitivityPruneConfig`` (allocation ``sensitivity`` or
``uniform``, importance ``l1`` / ``l2``), ``ChannelPruneConfig`` (``ratio`` / ``ratios``, l1 / l2),
``FineTuneConfig``, ``FoldConfig`` and ``QuantizeConfig``. Not available: low-rank steps and
``global`` allocation (a clear error names them).

Example::

    from slimkit.keras.optimize import optimize

    result = optimize("model.keras", "mnist5k", "macs=0.25", max_drop=0.5, output="runs/keras-opt")
    print(result.comparison)  # runs/keras-opt: model.keras, model.onnx, model.int8.onnx, report.html
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.compress import QuantizeConfig
from slimkit.core.errors import SlimkitError
from slimkit.core.files import atomic_path
from slimkit.core.transform import Config, apply_
from slimkit.evaluate.report import Report
from slimkit.keras._graph import Graph, keras_module, load, rebuild
from slimkit.keras.cost import KerasCostModel, count_macs, count_params, weights_bytes, widths
from slimkit.keras.data import arrays, for_model
from slimkit.keras.files import export_onnx, load_file, save
from slimkit.keras.fuse import probabilities
from slimkit.keras.prune import IMPORTANCE
from slimkit.optimize.recipe import FineTuneConfig, Recipe, SensitivityPruneConfig
from slimkit.optimize.run import OptimizeResult, run_optimize
from slimkit.optimize.sensitivity import probe_step
from slimkit.optimize.target import Target, parse_target
from slimkit.prune import ChannelPruneConfig
from slimkit.simplify import FoldConfig

__all__ = ["KerasBackend", "check_recipe", "optimize"]

KERAS_STEPS = (SensitivityPruneConfig, ChannelPruneConfig, FineTuneConfig, FoldConfig, QuantizeConfig)


def check_recipe(recipe: Recipe) -> None:
    """Raise a :class:`SlimkitError` naming the first step (or setting) the Keras loop cannot run."""
    names = ", ".join(t.__name__ for t in KERAS_STEPS)
    for i, s in enumerate(recipe.steps, start=1):
        if not isinstance(s, KERAS_STEPS):
            raise SlimkitError(f"recipe step {i}: {type(s).__name__} is not available for Keras models; use {names}")
        if isinstance(s, SensitivityPruneConfig | ChannelPruneConfig) and s.importance not in IMPORTANCE:
            raise SlimkitError(
                f"recipe step {i}: importance {s.importance!r} is not available for Keras models; "
                f"choose {' or '.join(IMPORTANCE)}"
            )
        if isinstance(s, SensitivityPruneConfig) and s.refit:
            raise SlimkitError(f"recipe step {i}: refit is not available for Keras models")
        if isinstance(s, SensitivityPruneConfig) and s.allocation == "global":
            raise SlimkitError(
                f"recipe step {i}: allocation 'global' is not available for Keras models; choose sensitivity or uniform"
            )
        if isinstance(s, ChannelPruneConfig) and s.global_ranking:
            raise SlimkitError(
                f"recipe step {i}: global ranking is not available for Keras models; give ratio, ratios or a target"
            )


def _nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())


class KerasBackend:
    """The Keras side of the optimize loop (:class:`slimkit.optimize.backend.Backend`) for a
    classifier with one ``(batch, classes)`` output; ``data`` is laid out for the model."""

    framework = "keras"
    allocations = ("sensitivity", "uniform")
    sets_lr = True

    def __init__(self, data: Any, *, seed: int = 0, verbose: int = 0) -> None:
        self.data = data
        self.example = data.example
        self.seed = seed
        self.verbose = verbose

    def check_recipe(self, recipe: Recipe) -> None:
        check_recipe(recipe)

    def copy(self, model: Any) -> Any:
        return rebuild(Graph(model))

    def costs(self, model: Any) -> dict[str, float]:
        return {"macs": count_macs(model), "params": count_params(model), "bytes": weights_bytes(model)}

    def cost_model(self, model: Any, protected: tuple[str, ...]) -> KerasCostModel:
        return KerasCostModel(model, protected)

    def widths(self, model: Any) -> dict[str, int]:
        return widths(model)

    def config_ties(self, model: Any, costs: KerasCostModel) -> None:
        """A Keras model has no transformers config: per-layer widths."""

    def prune(self, model: Any, cfg: ChannelPruneConfig) -> Any:
        return apply_(model, cfg)

    def transform(self, model: Any, cfg: Config) -> Any:
        return apply_(model, cfg)

    def scores(self, model: Any, split: str) -> dict[str, float]:
        """Classification metrics and log loss of a Keras model or an ONNX runner on ``split``."""
        from slimkit.evaluate.metrics import classification_metrics

        x, y = arrays(self.data, split)
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
        return {**metrics, "loss": _nll(probs, y)}

    def finetune(
        self, model: Any, cfg: FineTuneConfig, original: Any, *, on_epoch: Any = None, deadline: float | None = None
    ) -> None:
        from slimkit.keras.distill import fit

        fit(
            model,
            arrays(self.data, "train"),
            arrays(self.data, "val"),
            epochs=cfg.epochs,
            lr=cfg.lr,
            optimizer=cfg.optimizer,
            teacher=original if cfg.distill else None,
            distill=cfg.distillation,
            augment=self.data.augment if cfg.augment else None,
            patience=cfg.patience,
            seed=self.seed,
            verbose=self.verbose,
            on_epoch=on_epoch,
            deadline=deadline,
        )

    def export_onnx(self, model: Any, path: Path) -> Path:
        return export_onnx(model, path, force=True)

    def quantize(self, model: Any, cfg: Config, path: Path) -> Any:
        from slimkit.compress import quantize

        fp32 = self.export_onnx(model, path.with_name(path.name.replace(".int8.onnx", ".fp32.onnx")))
        return quantize(fp32, self.data, cfg, path, force=True)

    def fake_quantized(self, model: Any, quantized: Any, momentum: float) -> Any:
        raise SlimkitError("quantization-aware training is not available for Keras models yet (PyTorch only)")

    def report(self, model: Any, split: str, batch_sizes: tuple[int, ...], runtime: str = "onnxruntime") -> Report:
        """Quality and latency on ``runtime`` on ``split`` of an ONNX runner, or of a Keras model's fp32
        ONNX export (its params and MACs counted on the Keras model)."""
        from slimkit.evaluate import evaluate
        from slimkit.io.onnx import OnnxModel

        if not hasattr(model, "predict"):
            return evaluate(model, self.data, split=split, batch_sizes=batch_sizes)
        with tempfile.TemporaryDirectory(prefix="slimkit-keras-") as tmp:
            runner = OnnxModel(self.export_onnx(model, Path(tmp) / "model.onnx"), runtime=runtime)
            report = evaluate(runner, self.data, split=split, batch_sizes=batch_sizes)
        report.model = f"{model.name} (Keras, fp32 ONNX)"
        report.params, report.macs = count_params(model), count_macs(model)
        return report

    def save(self, model: Any, folder: Path, extra_files: dict[str, str] | None = None) -> None:
        """``folder/model.keras`` (+ ``extra_files``), the folder appearing whole."""
        with atomic_path(folder, force=True) as tmp:
            tmp.mkdir()
            model.save(tmp / "model.keras")
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)

    def load(self, folder: Path) -> Any:
        return load_file(folder / "model.keras")

    def save_outputs(self, model: Any, folder: Path) -> tuple[dict[str, str], list[str]]:
        save(model, folder / "model.keras", force=True)
        export_onnx(model, folder / "model.onnx", force=True)
        return {"keras": "model.keras", "onnx": "model.onnx"}, []

    def probe(self, model: Any, step: Any, target: Any) -> dict[str, dict[str, Any]]:
        return probe_step(self, model, step, target)

    def fingerprint(self, model: Any) -> str:
        """A short hash of the model's layers, weights and shapes."""
        h = hashlib.sha256(json.dumps([layer.name for layer in model.layers]).encode())
        for w in model.weights:
            v = np.asarray(w.numpy() if hasattr(w, "numpy") else w)
            h.update(f"{w.path}{v.shape}".encode())
            h.update(np.ascontiguousarray(v).tobytes())
        return h.hexdigest()[:16]


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
    trials: int = 0,
    storage: str | None = None,
    study_name: str = "slimkit-optimize",
    resume: bool = False,
    seed: int = 0,
    force: bool = False,
    html: bool = True,
    verbose: int = 0,
    log: Any = None,
) -> OptimizeResult:
    """Make a Keras ``model`` (or ``.keras`` file) meet ``target`` with the least loss of quality.

    ``data`` is a slimkit Dataset or its name, laid out for the model (:func:`slimkit.keras.data.for_model`):
    training data fine-tunes, the validation split drives every decision, the test split is used
    once at the end. ``target`` is a :class:`~slimkit.optimize.Target` or strings such as
    ``"macs=0.25"`` (then ``max_drop`` gives the quality constraint). The other arguments are
    those of :func:`slimkit.optimize.optimize` (``trials``, ``storage`` and ``resume`` too), except
    ``quantize``: a Keras model is deployed through its ONNX export, so by default (None) the recipe
    ends with int8 quantization, kept only if it holds the quality constraint (``quantize=False``:
    fp32 ONNX only). With ``output``, the run folder receives ``model.keras``, ``model.onnx``,
    ``model.int8.onnx`` (when quantized), ``recipe.json``, ``report.json`` and ``report.html``;
    otherwise call :meth:`OptimizeResult.save`.
    """
    import torch

    started = time.monotonic()
    if isinstance(target, str | list):
        target = parse_target(target, max_drop=max_drop)
    if not isinstance(target, Target):
        raise SlimkitError(f"target must be a slimkit.Target or strings like 'macs=0.25', got {type(target).__name__}")
    target = target.for_task("accuracy")
    if allocation not in KerasBackend.allocations:
        raise SlimkitError(
            f"allocation {allocation!r} is not available for Keras models; choose sensitivity or uniform"
        )
    original = load(model)
    keras_module().utils.set_random_seed(seed)
    torch.manual_seed(seed)
    data = for_model(data, original)
    if len(original.outputs) != 1 or len(tuple(original.outputs[0].shape)) != 2:
        raise SlimkitError("optimize takes a classifier with one (batch, classes) output")
    auto = {
        "quantize": True if quantize is None else quantize,  # deployed through ONNX: int8 unless told otherwise
        "qat": False,  # quantization-aware training is PyTorch only (not yet for Keras)
        "finetune_epochs": finetune_epochs,
        "rounds": rounds,
        "allocation": allocation,
        "importance": importance,
        "round_to": round_to,
    }
    return run_optimize(
        KerasBackend(data, seed=seed, verbose=verbose),
        original,
        data,
        target,
        recipe,
        auto,
        {},
        output=output,
        trials=trials,
        storage=storage,
        study_name=study_name,
        resume=resume,
        seed=seed,
        force=force,
        html=html,
        started=started,
        log=log or (lambda s: None),
    )
