"""What the optimize loop needs from a framework: the :class:`Backend` protocol and its PyTorch side.

The loop of :mod:`slimkit.optimize.pipeline` (candidates, back-off, budget fitting, resume, search,
report) is written once against :class:`Backend`; :class:`TorchBackend` (here) and
:class:`slimkit.keras.optimize.KerasBackend` implement it. A backend owns the data, the task and
the example inputs; the loop owns the target, the budgets and the candidates.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from slimkit import distributed
from slimkit.core.errors import SlimkitError, first_line
from slimkit.core.transform import Config, apply_
from slimkit.evaluate.cost import count_macs, count_params
from slimkit.evaluate.report import Report
from slimkit.graph.trace import flat_tensors
from slimkit.io.pretrained import ConfigTies, config_ties
from slimkit.optimize.recipe import FineTuneConfig, Recipe, SensitivityPruneConfig
from slimkit.optimize.sensitivity import CostModel, probe_step
from slimkit.optimize.target import Target
from slimkit.prune import ChannelPruneConfig, prune_channels
from slimkit.task import Task

OnEpoch = Callable[[dict[str, float]], None]


class Backend(Protocol):
    """One framework's side of the optimize loop. Models are opaque to the loop: it only passes them
    back to these methods. ``prune`` and ``transform`` return the changed model (a new one, or the
    given one changed in place); the loop gives them a :meth:`copy` when the input must stay."""

    framework: str  # "pytorch" or "keras"
    data: Any  # the Dataset / Loaders (None when the user's own loop needs none)
    example: Any  # a batch of model inputs (tracing, latency)
    allocations: tuple[str, ...]  # the SensitivityPruneConfig allocations it runs
    sets_lr: bool  # whether finetune trains at FineTuneConfig.lr (not the user's own loop)

    def check_recipe(self, recipe: Recipe) -> None: ...
    def copy(self, model: Any) -> Any: ...
    def costs(self, model: Any) -> dict[str, float]: ...
    def cost_model(self, model: Any, protected: tuple[str, ...]) -> CostModel: ...
    def widths(self, model: Any) -> dict[str, int]: ...
    def config_ties(self, model: Any, costs: CostModel) -> ConfigTies | None: ...
    def prune(self, model: Any, cfg: ChannelPruneConfig) -> Any: ...
    def transform(self, model: Any, cfg: Config) -> Any: ...
    def scores(self, model: Any, split: str) -> dict[str, float]: ...
    def finetune(
        self, model: Any, cfg: FineTuneConfig, original: Any, *, on_epoch: OnEpoch | None, deadline: float | None
    ) -> None: ...
    def export_onnx(self, model: Any, path: Path) -> Path: ...
    def quantize(self, model: Any, cfg: Config, path: Path) -> Any: ...
    def fake_quantized(self, model: Any, quantized: Any, momentum: float) -> AbstractContextManager[Any]: ...
    def report(self, model: Any, split: str, batch_sizes: tuple[int, ...], runtime: str = "onnxruntime") -> Report: ...
    def save(self, model: Any, folder: Path, extra_files: dict[str, str] | None = None) -> None: ...
    def load(self, folder: Path) -> Any: ...
    def save_outputs(self, model: Any, folder: Path) -> tuple[dict[str, str], list[str]]: ...
    def fingerprint(self, model: Any) -> str: ...
    def probe(self, model: Any, step: SensitivityPruneConfig, target: Target) -> dict[str, dict[str, Any]]: ...
    def lowrank_probe(  # only for backends whose check_recipe lets low-rank steps through
        self, model: Any, shares: tuple[float, ...], scores: Callable[[Any], dict[str, float]], metric: str
    ) -> dict[str, dict[str, Any]]: ...


@dataclasses.dataclass
class UserLoop:
    """The user's own training and evaluation, when given to :func:`slimkit.optimize.optimize`:
    ``finetune(model, epochs, teacher)`` trains in place, ``evaluate(model, split)`` returns metrics."""

    finetune: Callable[[nn.Module, int, nn.Module | None], Any] | None = None
    evaluate: Callable[[Any, str], dict[str, float]] | None = None

    @classmethod
    def check(cls, data: Any, finetune: Any, evaluate: Any, example: Any) -> UserLoop:
        """The user loop after checking that the arguments make a complete run (one-line errors)."""
        for name, fn in (("finetune", finetune), ("evaluate", evaluate)):
            if fn is not None and not callable(fn):
                raise SlimkitError(f"{name} must be a function, got {type(fn).__name__}")
        if data is None:
            missing = [name for name, v in (("evaluate", evaluate), ("example_inputs", example)) if v is None]
            if missing:
                raise SlimkitError(
                    f"without data, optimize needs {' and '.join(missing)}: pass data (a Dataset or Loaders) "
                    "or your own evaluate(model, split) and example_inputs"
                )
        return cls(finetune, evaluate)


def output_widths(model: nn.Module, names: list[str]) -> dict[str, int]:
    """Output width of each named layer (channels, features, hidden units)."""
    out = {}
    mods = dict(model.named_modules())
    for n in names:
        m = mods.get(n)
        for attr in ("out_channels", "out_features", "hidden_size", "embedding_dim", "num_features"):
            if m is not None and hasattr(m, attr):
                out[n] = int(getattr(m, attr))
                break
    return out


class TorchBackend:
    """PyTorch models: slimkit's ``fit`` (or the user's ``finetune``), the task's metrics (or the
    user's ``evaluate``), structural pruning by the dependency graph, ``torch.export`` to ONNX."""

    framework = "pytorch"
    allocations = ("sensitivity", "uniform", "global")

    def __init__(
        self,
        original: nn.Module,
        data: Any,
        *,
        task: Task | None = None,
        val_batches: int | None = None,
        user: UserLoop | None = None,
        example: Any = None,
        progress: bool = False,
        seed: int = 0,
        amp: str | None = None,
    ) -> None:
        from slimkit.evaluate import data_task

        self.data = data
        self.task = (task or data_task(data)).bind(original)
        self.val_batches = val_batches
        self.user = user or UserLoop()
        self.example = example if example is not None else data.example
        self.progress = progress
        self.seed = seed
        self.amp = amp  # fine-tuning's mixed precision (the models live on the original's device)
        self.shared = distributed.is_distributed()  # under torchrun, every rank scores a share of each split
        self.calibration_samples = 2048
        self.exported: dict[str, Path] = {}  # weights fingerprint -> the ONNX file made of them (see export_onnx)
        self.sets_lr = self.user.finetune is None
        self.layer_names = list(CostModel(original, self.example).groups)
        self.metric: str | None = None  # the deciding metric (set by the loop): the user's evaluate must give it

    def check_recipe(self, recipe: Recipe) -> None:
        """Every step runs on PyTorch models."""

    def copy(self, model: nn.Module) -> nn.Module:
        return copy.deepcopy(model)

    def costs(self, model: nn.Module) -> dict[str, float]:
        from slimkit.io.checkpoint import weights_bytes

        return {
            "macs": count_macs(model, self.example),
            "params": count_params(model),
            "bytes": len(weights_bytes(model)[0]),
        }

    def cost_model(self, model: nn.Module, protected: tuple[str, ...]) -> CostModel:
        return CostModel(model, self.example, protected)

    def widths(self, model: nn.Module) -> dict[str, int]:
        return output_widths(model, self.layer_names)

    def config_ties(self, model: nn.Module, costs: CostModel) -> ConfigTies | None:
        return config_ties(model, costs.groups, costs.slots, costs.aligns)

    def prune(self, model: nn.Module, cfg: ChannelPruneConfig) -> nn.Module:
        """Structured pruning in place; importance and calibration on training batches."""
        data = None if self.data is None else self.data.train
        prune_channels(model, cfg, self.example, data=data, task=self.task)
        return model

    def transform(self, model: nn.Module, cfg: Config) -> nn.Module:
        return apply_(model, cfg, example_inputs=self.calibration() if cfg.calibrated else self.example)

    def calibration(self) -> list[Any]:
        """Input batches from the training split, ``calibration_samples`` samples in all (the example
        without training data), for transforms that read data (activation statistics, id usage)."""
        if self.data is None or getattr(self.data, "train", None) is None:
            return [self.example]
        batches, rows = [], 0
        for batch in self.data.train:
            batches.append(self.task.inputs(batch))
            rows += len(next(iter(flat_tensors(batches[-1]))))
            if rows >= self.calibration_samples:
                break
        return batches or [self.example]

    def scores(self, model: Any, split: str) -> dict[str, float]:
        """Metrics of ``model`` (a module or an ONNX runner) on ``split``, ``loss`` among them: the user's
        ``evaluate``, else the task's."""
        if self.user.evaluate is None:
            loader = self.data.loader(split, shuffle=False)
            shared = self.shared and isinstance(model, nn.Module)  # an ONNX runner is scored on rank 0 alone
            if shared and distributed.rank() == 0:
                distributed.broadcast(("scores", model, split))
            limit = self.val_batches if split == "val" else None
            return self.task.evaluate(model, loader, max_batches=limit, shared=shared)
        got = self.user.evaluate(model, split)
        if not isinstance(got, dict) or not all(isinstance(v, int | float) for v in got.values()):
            raise SlimkitError(f"evaluate(model, {split!r}) must return a dict of numbers, got {got!r:.200}")
        metrics = {k: float(v) for k, v in got.items()}
        if self.metric is not None and self.metric not in metrics:
            raise SlimkitError(
                f"evaluate(model, {split!r}) returned no {self.metric!r} (it gave {', '.join(metrics)}); "
                "pass metric= the key that decides"
            )
        return metrics

    def finetune(
        self,
        model: nn.Module,
        cfg: FineTuneConfig,
        original: nn.Module,
        *,
        on_epoch: OnEpoch | None = None,
        deadline: float | None = None,
    ) -> None:
        """Recovery training in place: the user's ``finetune`` if given, else :func:`slimkit.train.fit`.
        Under torchrun, rank 0 sends ``model`` and ``cfg`` to the other ranks (:meth:`follow`), all
        train it together, then check that they hold the same weights."""
        if distributed.is_distributed() and distributed.rank() == 0:
            distributed.broadcast(("finetune", model, cfg, deadline is not None))
        self._finetune(model, cfg, original, on_epoch=on_epoch, deadline=deadline)
        if distributed.is_distributed():
            hashes = distributed.gather(self.fingerprint(model))
            if len(set(hashes)) > 1:
                raise SlimkitError(f"the {len(hashes)} processes ended fine-tuning with different weights: {hashes}")

    def probe(self, model: nn.Module, step: SensitivityPruneConfig, target: Target) -> dict[str, dict[str, Any]]:
        """Each group pruned alone at the step's ratios (:func:`~slimkit.optimize.sensitivity.probe_step`);
        under torchrun the groups are split between the ranks and the results gathered."""
        if not distributed.is_distributed():
            return probe_step(self, model, step, target)
        if distributed.rank() == 0:
            distributed.broadcast(("probe", model, step, target))
        self.shared = False  # each rank scores its own probes alone
        try:
            mine = probe_step(self, model, step, target, (distributed.rank(), distributed.world_size()))
        finally:
            self.shared = True
        parts = distributed.gather(mine)
        merged = {k: v for part in parts for k, v in part.items()}
        return {k: merged[k] for k in self.cost_model(model, step.protected).groups}

    def follow(self, original: nn.Module) -> None:
        """The loop of a rank other than 0: fine-tune or probe what rank 0 sends, until it says stop."""
        while True:
            command = distributed.broadcast()
            if command[0] == "stop":
                return
            if command[0] == "probe":
                self.probe(*command[1:])
                continue
            if command[0] == "scores":
                self.scores(*command[1:])
                continue
            _, model, cfg, timed = command
            with contextlib.suppress(SlimkitError):  # rank 0 met the same error (decided collectively)
                # with a deadline on rank 0, its clock decides each step (fit asks it): never due here
                self.finetune(model, cfg, original, deadline=math.inf if timed else None)

    def _finetune(
        self, model: nn.Module, cfg: FineTuneConfig, original: nn.Module, *, on_epoch: Any, deadline: Any
    ) -> None:
        from slimkit.train import fit

        if self.user.finetune is not None:
            self.user.finetune(model, cfg.epochs, original if cfg.distill else None)
            model.eval()
            return
        if self.data is None:
            raise SlimkitError("the recipe fine-tunes, but there is no training data: pass data or finetune=fn")
        trainee, teacher = self.trainee(model, original if cfg.distill or not self.task.needs_targets else None)
        fit(
            trainee,
            self.data.train,
            val=self.data.val,
            task=self.task,
            epochs=cfg.epochs,
            steps_per_epoch=cfg.steps_per_epoch,
            lr=cfg.lr,
            optimizer=cfg.optimizer,
            teacher=teacher,
            distill=cfg.distillation,
            patience=cfg.patience,
            augment=getattr(self.data, "augment", None) if cfg.augment else None,
            progress=self.progress,
            on_epoch=on_epoch,
            seed=self.seed,
            max_val_batches=self.val_batches,
            deadline=deadline,
            amp=self.amp,
        )

    def trainee(self, model: nn.Module, teacher: nn.Module | None) -> tuple[nn.Module, Any]:
        """What ``fit`` trains (``model`` or a module around it that adds loss terms) and learns from."""
        return model, teacher

    def export_onnx(self, model: nn.Module, path: Path) -> Path:
        """``model`` as ONNX at ``path``; a model already exported with the same weights (the chosen
        candidate, timed, then saved) is copied from that file: the exporter takes seconds per call."""
        import shutil

        from slimkit.io.onnx import export_onnx

        key = self.fingerprint(model)
        done = self.exported.get(key)
        if done == path and path.is_file():
            return path
        for k in [k for k, p in self.exported.items() if p == path]:
            del self.exported[k]  # the file at path is about to hold other weights
        if done is not None and done.is_file():
            shutil.copyfile(done, path)
        else:
            export_onnx(model, path, self.example)
        self.exported[key] = path
        return path

    def quantize(self, model: nn.Module, cfg: Config, path: Path) -> Any:
        from slimkit.compress import quantize

        if self.val_batches is not None and getattr(cfg, "val_batches", 0) is None:
            cfg = dataclasses.replace(cfg, val_batches=self.val_batches)
        fp32 = self.export_onnx(model, path.with_suffix(".fp32.onnx"))  # kept: timing and saving reuse it
        return quantize(model, self.data, cfg, path, force=True, task=self.task, exported=fp32)

    def fake_quantized(self, model: nn.Module, quantized: Any, momentum: float) -> AbstractContextManager[Any]:
        """:func:`slimkit.compress.fake_quantized` simulating the int8 file ``quantized`` (a
        :class:`slimkit.compress.QuantizeResult`): its mode, weight scales and weight range."""
        from slimkit.compress import fake_quantized

        s = quantized.settings
        return fake_quantized(
            model,
            mode=quantized.mode,
            per_channel="per-channel" in s["weights"],
            reduce_range=bool(s.get("reduce_range")),
            momentum=momentum,
        )

    def report(self, model: Any, split: str, batch_sizes: tuple[int, ...], runtime: str = "onnxruntime") -> Report:
        """The full :class:`slimkit.evaluate.Report` of ``model`` on ``split`` (quality and costs,
        latency on ``runtime``)."""
        from slimkit.evaluate import evaluate

        if self.user.evaluate is None:
            return evaluate(model, self.data, task=self.task, split=split, batch_sizes=batch_sizes, runtime=runtime)
        metrics = self.scores(model, split)
        return evaluate(
            model,
            None,
            metrics=metrics,
            example_inputs=self.example,
            split=split,
            batch_sizes=batch_sizes,
            runtime=runtime,
        )

    def save(self, model: nn.Module, folder: Path, extra_files: dict[str, str] | None = None) -> None:
        from slimkit.io import save

        save(model, folder, example=self.example, extra_files=extra_files, force=True)

    def load(self, folder: Path) -> nn.Module:
        from slimkit.io import load

        return load(folder)

    def save_outputs(self, model: nn.Module, folder: Path) -> tuple[dict[str, str], list[str]]:
        """``checkpoint/`` (a ``torch.export`` program ``model.pt2`` for a model slimkit cannot rebuild:
        no zoo name, no factory) and ``model.onnx``."""
        from slimkit.core.errors import UnknownModelError
        from slimkit.io import export, save

        notes = []
        try:
            save(model, folder / "checkpoint", example=self.example, force=True)
            files = {"checkpoint": "checkpoint"}
        except UnknownModelError as exc:
            export(model, folder / "model.pt2", self.example, force=True)
            files = {"program": "model.pt2"}
            notes.append(f"no checkpoint/ (load model.pt2 with slimkit.load): {first_line(exc)}")
        try:
            self.export_onnx(model, folder / "model.onnx")
            files["onnx"] = "model.onnx"
        except SlimkitError as exc:
            notes.append(f"no model.onnx: {exc}")
        return files, notes

    def fingerprint(self, model: nn.Module) -> str:
        from slimkit.optimize.sensitivity import fingerprint

        return fingerprint(model)

    def lowrank_probe(
        self, model: nn.Module, shares: tuple[float, ...], scores: Callable[[Any], dict[str, float]], metric: str
    ) -> dict[str, dict[str, Any]]:
        """Low-rank sensitivity: each Linear / Conv2d factorized alone (SVD) at ``shares`` of its rank."""
        from slimkit.optimize.sensitivity import lowrank_sensitivity

        return lowrank_sensitivity(model, self.example, shares, scores, metric)
