"""``optimize``: meet a user's budget with the least accuracy lost, validate, test once, report."""

from __future__ import annotations

import atexit
import contextlib
import copy
import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit import distributed
from slimkit.core.device import check_amp, resolve_device
from slimkit.core.errors import OutputExistsError, SlimkitError, first_line
from slimkit.core.files import atomic_path, check_output, write_text_atomic
from slimkit.evaluate import Report, compare, data_task
from slimkit.io.onnx import RUNTIME_NAMES, OnnxModel, check_runtime, runtimes
from slimkit.optimize.backend import Backend, TorchBackend, UserLoop
from slimkit.optimize.pipeline import Candidate, Log, Loop, copy_file, pareto_front, tighten
from slimkit.optimize.recipe import Recipe, auto_recipe
from slimkit.optimize.sensitivity import Sensitivity
from slimkit.optimize.target import Target, format_duration, parse_target
from slimkit.task import Task, format_metric

MAX_PASSES = 3


@dataclasses.dataclass
class OptimizeResult:
    """The outcome of :func:`optimize`.

    ``model`` is the optimized float model (pruned / factorized / folded); ``int8_path`` the int8
    ONNX file when the recipe quantized. ``before`` / ``after`` are measured once on the **test**
    split (``after`` measures the deployed artifact: the int8 file when there is one).
    ``candidates`` are every model the loop validated, ``chosen`` the id of the final one.
    ``model`` is a ``torch.nn.Module``, or a Keras model for :func:`slimkit.keras.optimize`.
    """

    model: Any
    int8_path: Path | None
    target: Target
    recipe: Recipe
    base_val: dict[str, Any]
    before: Report
    after: Report
    candidates: list[Candidate]
    chosen: int
    target_met: bool
    sensitivity: Sensitivity | None
    allocations: list[dict[str, Any]]
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    seconds: float
    output: Path | None = None
    trials: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    quantize: dict[str, Any] | None = None
    speed: dict[str, Any] | None = None
    backend: Backend | None = dataclasses.field(default=None, repr=False)
    files: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def comparison(self) -> Any:
        """Test-split before / after: metric changes in points, cost ratios."""
        return compare(self.before, self.after)

    @property
    def chosen_candidate(self) -> Candidate:
        return self.candidates[self.chosen]

    def to_dict(self) -> dict[str, Any]:
        return {
            "framework": self.backend.framework if self.backend is not None else "pytorch",
            "target": self.target.to_dict(),
            "target_text": str(self.target),
            "target_met_on_validation": self.target_met,
            "recipe": self.recipe.to_dict(),
            "validation": {"original": self.base_val, "chosen": self.chosen_candidate.to_dict()},
            "test": {
                "before": self.before.to_dict(),
                "after": self.after.to_dict(),
                "change": dict(self.comparison),
            },
            "candidates": [c.to_dict() for c in self.candidates],
            "chosen": self.chosen,
            "pareto": {
                cost: pareto_front(self.candidates, self.target.metric, cost, self.target.higher_is_better)
                for cost in ("macs", "bytes")
            },
            "allocations": self.allocations,
            "sensitivity": None if self.sensitivity is None else self.sensitivity.to_dict(),
            "widths": {"before": self.widths_before, "after": self.widths_after},
            "quantize": self.quantize,
            "speed": self.speed,
            "trials": self.trials,
            "notes": self.notes,
            "seconds": self.seconds,
            "files": {**self.files, "int8": "model.int8.onnx" if self.int8_path else None},
        }

    def save(self, path: str | Path, *, force: bool = False, html: bool = True) -> Path:
        """Write the model (``checkpoint/``; ``model.keras`` for Keras), ``model.onnx``, ``model.int8.onnx``
        (if quantized), ``recipe.json``, ``report.json`` and ``report.html`` into the folder ``path``; every
        file is written atomically."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if (path / "report.json").exists() and not force and path != self.output:
            raise OutputExistsError(f"{path} already holds a report; pass force=True (CLI: --force) to replace it")
        self._save_model(path)
        if self.int8_path is not None and Path(self.int8_path).resolve() != (path / "model.int8.onnx").resolve():
            copy_file(Path(self.int8_path), path / "model.int8.onnx")
        write_text_atomic(path / "recipe.json", json.dumps(self.recipe.to_dict(), indent=2) + "\n", force=True)
        write_text_atomic(path / "report.json", json.dumps(self.to_dict(), indent=2, default=str) + "\n", force=True)
        if html:
            from slimkit.optimize.report import write_html

            write_html(self, path / "report.html")
        return path

    def placed_in(self, folder: Path) -> None:
        """Point the result at its run folder's final place (the saved int8 file lives there)."""
        self.output = folder
        if self.int8_path is not None:
            self.int8_path = folder / "model.int8.onnx"

    def _save_model(self, path: Path) -> None:
        """The optimized model's own files in ``path`` (the backend's: ``checkpoint/`` or ``model.pt2``
        and ``model.onnx`` for PyTorch, ``model.keras`` and ``model.onnx`` for Keras)."""
        self.files, notes = self.backend.save_outputs(self.model, path)
        self.notes += [n for n in notes if n not in self.notes]

    def summary(self) -> str:
        c = self.chosen_candidate
        lines = [
            f"target: {self.target}",
            f"recipe: {self.recipe}",
            f"target {'met' if self.target_met else 'NOT met'} on validation (candidate {c.id}: {c.step}); "
            f"{len(self.candidates)} candidates in {format_duration(self.seconds)}",
        ]
        if self.speed:
            lines += speed_lines(self.speed)
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def speed_lines(speed: dict[str, Any]) -> list[str]:
    """The paired latency figures of an :class:`OptimizeResult` (its ``speed``) as sentences."""

    def times(row: dict[str, float | None]) -> str:
        return ", ".join(
            f"{name} {ms:.2f} ms ({row['original'] / ms:.2f}x)" if ms else f"{name} cannot run"
            for name, ms in row.items()
            if name != "original"
        )

    best = speed["best"]
    return [
        f"{speed['deployed']} vs the fp32 ONNX original: file {speed['smaller']:.1f}x smaller",
        *(
            f"{RUNTIME_NAMES[rt]}, batch {speed['batch']}: original {row['original']:.2f} ms, {times(row)} "
            "(timed taking turns)"
            for rt, row in speed["runtimes"].items()
        ),
        f"fastest: the {best['file']} on {RUNTIME_NAMES[best['runtime']]}, {best['ms']:.2f} ms, "
        f"{best['speedup']:.2f}x the original's throughput on the same runtime",
    ]


RUN_FILE = "run.json"  # what a run folder was made from: --resume continues only the same run


def run_manifest(model_hash: str, data: Any, target: Target, settings: dict[str, Any]) -> dict[str, Any]:
    """The identity of a run: input model, data and every setting that shapes the result (not the time
    budget or the number of trials, which a resumed run may change)."""
    goal = {k: v for k, v in target.to_dict().items() if k != "time_budget"}
    data_id = getattr(data, "source", None) or getattr(data, "name", None) or str(data)
    return json.loads(json.dumps({"model": model_hash, "data": data_id, "target": goal, **settings}, default=str))


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    """What differs between two run manifests, e.g. ``["target.max_drop (5.0, now 4.0)"]``."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _differences(old.get(k), new.get(k), f"{where}{k}.")]
    if old == new:
        return []
    if where == "model.":
        return ["input model (its weights differ)"]
    return [f"{where.rstrip('.')} ({json.dumps(old)}, now {json.dumps(new)})"]


@contextlib.contextmanager
def run_folder(
    output: str | Path | None, *, resume: bool, force: bool, manifest: dict[str, Any]
) -> Iterator[tuple[Path, bool]]:
    """The folder a run works in, and whether it is temporary; every case keeps earlier work whole.

    - no ``output``: a temporary folder, removed when the process exits (the result's int8 file lives
      there until then);
    - a new (or empty) folder: created and bound to the run (``run.json``); removed again if the run
      fails before it saved any progress, so failures leave nothing half-made;
    - ``resume``: the existing folder, only if its ``run.json`` names the same model, data and settings;
    - ``force`` over an existing folder: the new run is built in a hidden sibling and swapped in only
      when it succeeds: a failed or killed run leaves the old one as it was.
    """
    if output is None:
        scratch = Path(tempfile.mkdtemp(prefix="slimkit-optimize-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        yield scratch, True
        return
    out = check_output(output, force=True)  # the path itself (not a symlink, not an input); existence below
    if out.exists() and not out.is_dir():
        raise SlimkitError(f"{out} exists and is not a folder; choose another --output")
    used = out.is_dir() and any(out.iterdir())
    if resume:
        if not used:
            raise SlimkitError(f"cannot resume: {out} holds no run; start it without --resume")
        bound = out / RUN_FILE
        try:
            previous = json.loads(bound.read_text())
        except (OSError, ValueError, RecursionError):
            raise SlimkitError(
                f"cannot resume: {out} is not a slimkit optimize run folder (no readable {RUN_FILE}); "
                "choose another --output, or --force to replace it"
            ) from None
        differ = _differences(previous, manifest)
        if differ:
            raise SlimkitError(
                f"cannot resume {out}: it was started with another {'; '.join(differ[:4])}; "
                "resume with the same model, data and settings, or use --force to start over"
            )
        yield out, False
        return
    if used and not force:
        raise OutputExistsError(f"{out} already exists; pass --resume to continue the run or --force to replace it")
    if used:
        with atomic_path(out, force=True) as staging:
            staging.mkdir()
            write_text_atomic(staging / RUN_FILE, json.dumps(manifest, indent=1) + "\n", force=True)
            yield staging, False
        return
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / RUN_FILE, json.dumps(manifest, indent=1) + "\n", force=True)
    try:
        yield out, False
    except Exception:
        if not _has_progress(out):  # nothing to resume: leave the folder as it was before the run
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            if created:
                out.rmdir()
        raise


def _has_progress(folder: Path) -> bool:
    """Whether a run folder holds work that --resume would continue (saved steps or search trials)."""
    return any((folder / name).is_dir() and any((folder / name).iterdir()) for name in ("progress", "trials"))


class SensitivityCache:
    """Sensitivity results kept in ``sensitivity.json`` in the run folder, keyed by model + settings."""

    def __init__(self, path: Path, log: Log) -> None:
        self.path, self.log = path, log
        self.entries: dict[str, Any] = {}
        if path.is_file():
            try:
                self.entries = json.loads(path.read_text())
            except json.JSONDecodeError:
                self.entries = {}

    def __call__(self, key: str, measure: Callable[[], Sensitivity]) -> Sensitivity:
        if key in self.entries:
            self.log("  sensitivity: reusing the cached analysis")
            return Sensitivity.from_dict(self.entries[key])
        sens = measure()
        self.entries[key] = sens.to_dict()
        write_text_atomic(self.path, json.dumps(self.entries, indent=1) + "\n", force=True)
        self.log(f"  sensitivity: {len(sens.groups)} groups in {sens.seconds:.1f} s (cached in {self.path.name})")
        return sens


def _rank(state: dict[str, Any], limits: dict[str, float], target: Target) -> tuple:
    c: Candidate = state["candidate"]
    overrun = max([c.costs[k] / lim for k, lim in limits.items() if c.costs.get(k) is not None] or [1.0])
    return (c.target_ok, c.quality_ok, -max(1.0, overrun), target.score(c.metrics))


def optimize(
    model: nn.Module,
    data: Any = None,
    target: Target | str | list[str] | None = None,
    *,
    task: Task | str | None = None,
    finetune: Callable[[nn.Module, int, nn.Module | None], Any] | None = None,
    evaluate: Callable[[Any, str], dict[str, float]] | None = None,
    metric: str | None = None,
    higher_is_better: bool | None = None,
    example_inputs: Any = None,
    val_batches: int | None = None,
    recipe: Recipe | str | Path | dict | None = "auto",
    output: str | Path | None = None,
    quantize: bool | None = None,
    finetune_epochs: int = 4,
    rounds: int = 2,
    allocation: str = "sensitivity",
    widths: str = "auto",
    importance: str = "l2",
    round_to: int | str | None = None,
    steps_per_epoch: int | None = None,
    trials: int = 0,
    storage: str | None = None,
    study_name: str = "slimkit-optimize",
    resume: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
    amp: str | None = None,
    progress: bool = False,
    force: bool = False,
    html: bool = True,
    log: Log | None = None,
) -> OptimizeResult | None:
    """Make ``model`` meet ``target`` with the least loss of quality; returns an :class:`OptimizeResult`
    (None on the ranks other than 0 of a torchrun job: see :mod:`slimkit.distributed`).

    ``data`` is a :class:`slimkit.data.Dataset` (or its name) or :class:`slimkit.data.Loaders` (any
    DataLoaders, iterable datasets too): training data fine-tunes, the validation split drives every
    decision, the test split is used once at the end. ``task`` (default: the data's, else
    classification) reads the batches and gives the loss, the metrics and the distillation loss;
    the target's ``max_drop`` is in its deciding metric's units. ``val_batches`` bounds every
    validation pass (sensitivity probes, candidates) to that many batches.

    The user's own loop: ``finetune(model, epochs, teacher)`` trains ``model`` in place (``teacher``
    is the original model when the recipe distils, else None) and ``evaluate(model, split)`` returns
    a dict of metrics for ``"val"`` or ``"test"`` (``model`` may be an int8 ONNX runner, callable like
    the module). With them slimkit never trains or evaluates by itself; ``metric`` names the deciding
    key of ``evaluate``'s dict and ``higher_is_better`` its direction (known metrics need none);
    ``example_inputs`` (a batch of model inputs) replaces ``data`` for tracing. ``recipe`` is ``"auto"``
    (built from the target: sensitivity pruning in ``rounds`` with ``finetune_epochs`` of distilled
    fine-tuning, BatchNorm folding, int8 when the file or latency budget needs it; ``widths``:
    see :class:`SensitivityPruneConfig`, by default a transformers model keeps widths its config
    describes, so ``checkpoint/`` is a ``from_pretrained`` folder), a
    :class:`Recipe`, a dict or a JSON / YAML file. ``trials > 0`` searches recipe parameters with
    Optuna (extra ``search``) in ``storage`` (default: ``study.db`` in ``output``); ``resume``
    continues an interrupted run in ``output``. ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``,
    ``"cuda:N"``, ``"mps"``; default: where ``model`` is) is where the candidates are analysed, pruned,
    fine-tuned and evaluated (``model`` itself stays where it is); ``amp`` (``"bf16"``, ``"fp16"``)
    fine-tunes in mixed precision. With ``output``, everything is saved there
    (atomically, file by file); otherwise call :meth:`OptimizeResult.save` (the run's scratch files
    are in a temporary folder that is removed when the process exits).

    Example::

        data = sk.data.load("mnist5k")
        result = optimize(sk.load("runs/cnn"), data, Target(macs=0.25, bytes=0.05, max_drop=0.5))
        result.save("runs/cnn-opt")
    """
    from slimkit import data as data_mod

    started = time.monotonic()
    log = log or (lambda s: None)
    target = _as_target(target)
    if isinstance(data, str):
        data = data_mod.load(data)
    if not isinstance(model, nn.Module):
        raise SlimkitError(f"optimize takes a torch.nn.Module, got {type(model).__name__}")
    user = UserLoop.check(data, finetune, evaluate, example_inputs)
    task = data_task(data, task)
    target = target.for_task(metric or task.metric, higher_is_better)
    if val_batches is not None and val_batches < 1:
        raise SlimkitError(f"val_batches must be at least 1, got {val_batches}")
    dev = distributed.setup(resolve_device(device, model))
    amp = check_amp(amp, dev)
    torch.manual_seed(seed)
    original = copy.deepcopy(model).eval().to(dev)
    backend = TorchBackend(
        original,
        data,
        task=task,
        val_batches=val_batches,
        user=user,
        example=example_inputs,
        progress=progress,
        seed=seed,
        amp=amp,
    )
    backend.metric = target.metric
    settings = {
        "task": task.name,
        "amp": amp,
        "val_batches": val_batches,
        "user_loop": [name for name in ("finetune", "evaluate") if getattr(user, name) is not None],
    }
    auto = {
        "quantize": quantize,
        "finetune_epochs": finetune_epochs,
        "rounds": rounds,
        "allocation": allocation,
        "widths": widths,
        "importance": importance,
        "round_to": round_to,
        "steps_per_epoch": steps_per_epoch,
    }
    return distributed.lead(
        backend,
        original,
        lambda: run_optimize(
            backend,
            original,
            data,
            target,
            recipe,
            auto,
            settings,
            output=output,
            trials=trials,
            storage=storage,
            study_name=study_name,
            resume=resume,
            seed=seed,
            force=force,
            html=html,
            started=started,
            log=log,
        ),
    )


def _as_target(target: Any) -> Target:
    if isinstance(target, str | list):
        target = parse_target(target)
    if not isinstance(target, Target):
        raise SlimkitError(f"target must be a slimkit.Target or strings like 'macs=0.25', got {type(target).__name__}")
    return target


def run_optimize(
    backend: Backend,
    original: Any,
    data: Any,
    target: Target,
    recipe: Recipe | str | Path | dict | None,
    auto: dict[str, Any],
    settings: dict[str, Any],
    *,
    output: str | Path | None,
    trials: int,
    storage: str | None,
    study_name: str,
    resume: bool,
    seed: int,
    force: bool,
    html: bool,
    started: float,
    log: Log,
) -> OptimizeResult:
    """The framework-neutral body of ``optimize``: the run folder, the loop (or the search), the result.
    ``auto`` holds the :func:`auto_recipe` settings used when ``recipe`` is ``"auto"``."""
    if target.runtime != "onnxruntime":  # the default is optional (timed when installed); another must be there
        check_runtime(target.runtime)
    if recipe is None or recipe == "auto":
        auto_recipe(target, dict.fromkeys(("macs", "params", "bytes", "latency"), 1.0), **auto)  # checks them now
        recipe_setting: Any = {"auto": auto}
    else:
        recipe, auto = resolve_recipe(recipe), None
        backend.check_recipe(recipe)
        recipe_setting = recipe.to_dict()
    settings = {
        "framework": backend.framework,
        "recipe": recipe_setting,
        "seed": seed,
        "study": study_name,
        "search": trials > 0,
        **settings,
    }
    manifest = run_manifest(backend.fingerprint(original), data, target, settings)
    with run_folder(output, resume=resume, force=force, manifest=manifest) as (workdir, temporary):
        result = _run(
            backend,
            original,
            target,
            recipe,
            workdir,
            temporary,
            auto=auto,
            trials=trials,
            storage=storage,
            study_name=study_name,
            resume=resume,
            seed=seed,
            html=html,
            started=started,
            log=log,
        )
    if not temporary:  # the folder may have been built aside and swapped in: point at its final place
        result.placed_in(Path(output))  # type: ignore[arg-type]
        log(f"saved {output}")
    return result


def resolve_recipe(recipe: Recipe | str | Path | dict) -> Recipe:
    """A :class:`Recipe` from itself, its dict or its JSON / YAML file."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe)
    if isinstance(recipe, str | Path):
        return Recipe.load(recipe)
    raise SlimkitError(f"recipe must be 'auto', a Recipe, a dict or a file, got {type(recipe).__name__}")


def _run(
    backend: Backend,
    original: Any,
    target: Target,
    recipe: Any,
    workdir: Path,
    temporary: bool,
    *,
    auto: dict[str, Any] | None,
    trials: int,
    storage: str | None,
    study_name: str,
    resume: bool,
    seed: int,
    html: bool,
    started: float,
    log: Log,
) -> OptimizeResult:
    """The body of :func:`run_optimize` inside its run folder ``workdir``."""
    deadline = None if target.time_budget is None else started + target.time_budget
    cache = SensitivityCache(workdir / "sensitivity.json", log)
    log(f"target: {target}")
    scratch = workdir / ".work"  # int8 files of candidates; removed once the outputs are saved
    scratch.mkdir(exist_ok=True)
    loop = Loop(backend, original, target, workdir=scratch, deadline=deadline, log=log, sensitivity_cache=cache)
    m = target.metric
    log(
        f"original on validation: {m} {format_metric(m, loop.base['metrics'][m])}, "
        f"MACs {loop.base['costs']['macs']:,}, params {loop.base['costs']['params']:,}"
    )
    if auto is not None:
        recipe = auto_recipe(target, loop.base["costs"], **auto)
        backend.check_recipe(recipe)
    log(f"recipe: {recipe}")
    notes: list[str] = []
    trial_rows: list[dict[str, Any]] = []
    if trials:
        from slimkit.optimize.search import search

        best, recipe, trial_rows = search(
            loop,
            recipe,
            trials=trials,
            storage=storage,
            study_name=study_name,
            resume=resume,
            seed=seed,
            workdir=workdir,
        )
        states = [best]
    else:
        first = 1
        if not temporary:
            loop.progress_dir = workdir / "progress"
            restored = loop.restore_progress() if resume else None
            if restored is not None:
                recipe, first = restored, loop.restored["passno"]
        states, recipe = run_passes(loop, recipe, notes, log, first=first)
    best = max(states, key=lambda s: _rank(s, loop.limits, target))
    chosen: Candidate = best["candidate"]
    if not chosen.target_ok:
        notes.append("the target was NOT met on validation: the report shows the closest candidate")
    result = _finish(loop, best, recipe, notes, trial_rows, started, workdir if not temporary else None, log)
    if not temporary:
        result.save(workdir, force=True, html=html)
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(workdir / "progress", ignore_errors=True)  # the run is complete: nothing to resume
    return result


def run_passes(loop: Loop, recipe: Recipe, notes: list[str], log: Log, first: int = 1) -> tuple[list[dict], Recipe]:
    """Run ``recipe`` pass after pass until the target holds,
    time runs out or a pass cannot help; each next pass tightens the pruning budget by what the last
    one missed. Returns every pass's state and the last recipe run."""
    states = []
    for passno in range(first, MAX_PASSES + 1):
        log(f"pass {passno}: {recipe}")
        state = loop.run_pass(recipe, passno)
        states.append(state)
        c: Candidate = state["candidate"]
        if c.target_ok:
            break
        if loop.out_of_time():
            notes.append("the time budget ended before the target was met")
            break
        unmet = [k for k, ok in c.cost_ok.items() if not ok]
        if not unmet or state["backed_off"] or not c.quality_ok or passno == MAX_PASSES:
            break
        factor = min(loop.limits[k] / c.costs[k] for k in unmet) * 0.97
        nxt = tighten(recipe, factor)
        if nxt is None:
            notes.append(f"the recipe cannot reach the {', '.join(unmet)} budget (no pruning step to tighten)")
            break
        notes.append(f"pass {passno} missed the {', '.join(unmet)} budget: pruning budget tightened x{factor:.2f}")
        log(f"  {notes[-1]}")
        recipe = nxt
    return states, recipe


def _finish(
    loop: Loop,
    state: dict[str, Any],
    recipe: Recipe,
    notes: list[str],
    trials: list[dict[str, Any]],
    started: float,
    output: Path | None,
    log: Log,
) -> OptimizeResult:
    """Test-split measurement (once, at the end) of the original and the chosen model."""

    be, target = loop.be, loop.target
    batches = tuple(sorted({1, target.latency_batch, 64}))
    log("measuring on the test split (once): original, then the optimized model")
    before = be.report(loop.original, "test", batches, runtime=target.runtime)
    model = state["model"]
    int8 = state.get("onnx")
    if int8 is not None:
        after = be.report(OnnxModel(int8, runtime=target.runtime), "test", batches)
        after.model = f"{after.model} (int8 ONNX)"
        after.macs = be.costs(model)["macs"]
    else:
        after = be.report(model, "test", batches, runtime=target.runtime)
    front = pareto_front(loop.candidates, target.metric, "macs", target.higher_is_better)
    for c in loop.candidates:
        c.pareto = c.id in front
    chosen = state["candidate"]
    try:
        speed = _paired_speed(loop, model, int8, target.latency_batch)
    except SlimkitError as exc:  # a model torch's ONNX exporter cannot take (T5): the results stand without it
        speed = None
        notes.append(f"no ONNX speed comparison: {first_line(exc)}")
    notes.extend(f"no {RUNTIME_NAMES[rt]} timing: {why}" for rt, why in (speed or {}).get("unrunnable", {}).items())
    return OptimizeResult(
        model=model,
        int8_path=int8,
        target=target,
        recipe=recipe,
        base_val=loop.base,
        before=before,
        after=after,
        candidates=loop.candidates,
        chosen=chosen.id,
        target_met=chosen.target_ok,
        sensitivity=loop.sensitivity,
        allocations=loop.allocations,
        widths_before=be.widths(loop.original),
        widths_after=be.widths(model),
        seconds=time.monotonic() - started,
        output=output,
        trials=trials,
        notes=notes,
        quantize=state.get("quantize"),
        speed=speed,
        backend=be,
    )


def _paired_speed(loop: Loop, model: Any, int8: Path | None, batch: int) -> dict[str, Any] | None:
    """Latency at ``batch`` rows of the fp32 ONNX original and of the optimized model (its fp32 ONNX,
    and its int8 file when there is one) on every runtime installed, each taking turns with
    the original on the same runtime (a fair ratio on a busy machine). The figures of the target's
    runtime lead (``runtimes``: ``{runtime: {"original" | file: ms}}``, None where the runtime cannot
    run the file); ``best`` names the fastest runtime and file. None without the ``onnx`` extra."""
    from slimkit.core.errors import ModelFileError
    from slimkit.core.optional import available
    from slimkit.evaluate.cost import onnx_latency

    found = runtimes()
    if not (available("onnxscript") and loop.target.runtime in found):
        return None
    reference = loop.reference_onnx
    if reference is None or not reference.exists():
        reference = loop.be.export_onnx(loop.original, loop.workdir / "original.onnx")
    files = {"fp32 ONNX": loop.be.export_onnx(model, loop.workdir / "final.onnx")}
    if int8 is not None:
        files["int8 ONNX"] = int8
    table: dict[str, dict[str, float | None]] = {}
    unrunnable: dict[str, str] = {}
    for runtime in [loop.target.runtime] + [r for r in found if r != loop.target.runtime]:
        runnable = dict(files)
        if int8 is not None:
            try:  # a runtime may lack an operator of the int8 file (ONNX Runtime's contrib ops)
                OnnxModel(int8, runtime=runtime)
            except ModelFileError:
                del runnable["int8 ONNX"]
        try:
            ms = onnx_latency([reference, *runnable.values()], loop.example, batch, runs=30, runtime=runtime)
        except ModelFileError as exc:  # another runtime that cannot take the files: the target's figures stand
            if runtime == loop.target.runtime:
                raise
            unrunnable[runtime] = first_line(exc)
            continue
        timed = dict(zip(runnable, ms[1:], strict=True))
        table[runtime] = {"original": ms[0]} | {name: timed.get(name) for name in files}
    deployed = "int8 ONNX" if int8 is not None else "fp32 ONNX"
    best = min(
        ((rt, name, t) for rt, row in table.items() for name, t in row.items() if name != "original" and t),
        key=lambda b: b[2],
    )
    return {
        "batch": batch,
        "runtime": loop.target.runtime,
        "deployed": deployed,
        "runtimes": table,
        "best": {"runtime": best[0], "file": best[1], "ms": best[2], "speedup": table[best[0]]["original"] / best[2]},
        "unrunnable": unrunnable,
        "original_fp32_onnx_bytes": reference.stat().st_size,
        "optimized_onnx_bytes": files[deployed].stat().st_size,
        "smaller": reference.stat().st_size / files[deployed].stat().st_size,
    }
