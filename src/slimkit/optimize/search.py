"""Optuna search over a recipe's parameters (extra ``search``), resumable and shareable.

Each trial runs the recipe once with sampled parameters (allocation, importance, rounds,
fine-tuning epochs / learning rate / distillation weight); the validation accuracy after every
fine-tuning epoch is reported so that the median pruner stops bad trials early. A trial that misses
the budget or the quality constraint scores below every trial that meets them.

The study lives in ``storage`` (default: ``sqlite:///<run folder>/study.db``); any Optuna storage
URL works, so several processes or machines can run trials of one study (each stops when the study
holds ``trials`` finished trials). Each finished trial's model is saved (atomically) under
``trials/<number>/`` in the run folder; ``resume`` reloads the study, re-queues trials that a
killed run left unfinished, and runs only the missing trials. A model class slimkit cannot rebuild
(no zoo name, no factory) cannot be saved: the best trial's model then stays in memory, and a
resumed search can only use the trials it runs itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from slimkit.core.errors import SlimkitError, UnknownModelError, first_line
from slimkit.core.files import write_text_atomic
from slimkit.core.optional import require
from slimkit.optimize.pipeline import Candidate, Loop, copy_file
from slimkit.optimize.recipe import FineTuneConfig, Recipe, SensitivityPruneConfig
from slimkit.prune import ChannelPruneConfig


def suggest(trial: Any, recipe: Recipe, allocations: tuple[str, ...] = ("sensitivity", "uniform", "global")) -> Recipe:
    """The recipe with its tunable fields sampled by ``trial`` (names like ``s0.allocation``);
    ``allocations``: those the framework runs (global ranking only with ``"global"``)."""
    steps = []
    for i, s in enumerate(recipe.steps):
        p = f"s{i}."
        if isinstance(s, SensitivityPruneConfig):
            s = dataclasses.replace(
                s,
                allocation=trial.suggest_categorical(p + "allocation", list(allocations)),
                importance=trial.suggest_categorical(p + "importance", ["l1", "l2"]),
                rounds=trial.suggest_int(p + "rounds", 1, 3),
            )
        elif isinstance(s, ChannelPruneConfig):
            s = dataclasses.replace(
                s,
                importance=trial.suggest_categorical(p + "importance", ["l1", "l2"]),
                global_ranking=trial.suggest_categorical(p + "global_ranking", [False, True])
                if "global" in allocations
                else False,
            )
        elif isinstance(s, FineTuneConfig):
            s = dataclasses.replace(
                s,
                epochs=trial.suggest_int(p + "epochs", 1, max(2, 2 * s.epochs)),
                lr=trial.suggest_float(p + "lr", 1e-4, 3e-3, log=True),
                alpha=trial.suggest_float(p + "alpha", 0.2, 0.9),
            )
        steps.append(s)
    return Recipe(tuple(steps))


def _storage(url: str, attempts: int = 5) -> Any:
    """An Optuna storage for ``url``; workers that start together may race to create the same database's
    tables, so creation is retried."""
    from optuna.storages import RDBStorage

    for attempt in range(attempts):
        try:
            return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {})
        except Exception as exc:  # sqlalchemy's OperationalError / IntegrityError while another worker creates it
            if attempt == attempts - 1 or not url.startswith("sqlite"):  # (other databases create atomically)
                raise SlimkitError(
                    f"cannot open the Optuna storage {url}: {first_line(exc)}; give a database URL "
                    "such as sqlite:///study.db or postgresql://host/db"
                ) from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _candidate(d: dict[str, Any]) -> Candidate:
    names = {f.name for f in dataclasses.fields(Candidate)}
    return Candidate(**{k: v for k, v in d.items() if k in names})


def search(
    loop: Loop,
    recipe: Recipe,
    *,
    trials: int,
    storage: str | None,
    study_name: str,
    resume: bool,
    seed: int,
    workdir: Path,
) -> tuple[dict[str, Any], Recipe, list[dict[str, Any]]]:
    """Run the study; returns the best trial's final state, its recipe and one row per trial."""
    optuna = require("optuna", extra="search")
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    local = storage is None
    url = storage or f"sqlite:///{workdir / 'study.db'}"
    store = _storage(url)
    exists = study_name in {s.study_name for s in optuna.get_all_study_summaries(store)}
    if exists and local and not resume:
        raise SlimkitError(
            f"the study {study_name!r} already exists in {url}: pass --resume to continue it (or --force to start over)"
        )
    if exists and not local:
        loop.log(f"search: joining the study {study_name!r} in {url}")
    # Workers sharing a storage each sample with their own seed (the same seed would repeat the same
    # trials); the constant liar keeps them from all exploring the same region while trials run.
    sampler_seed = seed if local else (seed * 1_000_003 + os.getpid() + time.time_ns()) % 2**32
    study = optuna.create_study(
        storage=store,
        study_name=study_name,
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=min(4, trials), constant_liar=not local),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    if resume and local:  # a killed run leaves its trial RUNNING: fail it and run its parameters again
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)  # noqa: SLF001
            study.enqueue_trial(t.params, skip_if_exists=False)
            loop.log(f"  trial {t.number} was interrupted: queued again")
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    if done:
        loop.log(f"search: {done} finished trial(s) in the study, {max(0, trials - done)} to run")
    metric = loop.target.metric
    trial_dir = workdir / "trials"

    unsaved: dict[str, Any] = {}  # the best trial model that could not be saved (a class slimkit cannot rebuild)

    def objective(trial: Any) -> float:
        r = suggest(trial, recipe, loop.be.allocations)
        loop.log(f"trial {trial.number}: {json.dumps(trial.params)}")
        first = len(loop.candidates)
        epoch = [0]

        def on_epoch(rec: dict[str, float]) -> None:
            epoch[0] += 1
            if f"val_{metric}" in rec:
                trial.report(loop.target.score({metric: rec[f"val_{metric}"]}), epoch[0])
                if trial.should_prune():
                    raise optuna.TrialPruned()

        loop.on_epoch = on_epoch
        try:
            state = loop.run_pass(r, passno=trial.number + 1)
        except optuna.TrialPruned:
            trial.set_user_attr("candidates", [c.to_dict() for c in loop.candidates[first:]])
            loop.log(f"  trial {trial.number} pruned")
            raise
        finally:
            loop.on_epoch = None
        c: Candidate = state["candidate"]
        value = loop.target.score(c.metrics)  # higher is better, whatever the metric
        if not c.target_ok:  # below every candidate that meets the target
            overrun = max([c.costs[k] / lim for k, lim in loop.limits.items() if c.costs.get(k)] or [1.0])
            unit = max(1.0, abs(loop.target.score(loop.base["metrics"])))
            value -= unit * (1.0 + max(0.0, overrun - 1.0) + (0 if c.quality_ok else 1.0))
        folder = trial_dir / str(trial.number)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            loop.be.save(state["model"], folder / "checkpoint")
        except UnknownModelError as exc:
            if not unsaved:
                loop.log(f"  trial models stay in memory (a resumed search cannot use them): {exc}")
            if not unsaved or value > unsaved["value"]:
                unsaved.update(number=trial.number, value=value, model=state["model"])
        if state.get("onnx") is not None:
            copy_file(state["onnx"], folder / "model.int8.onnx")
        write_text_atomic(folder / "recipe.json", json.dumps(r.to_dict()) + "\n", force=True)
        trial.set_user_attr("candidates", [x.to_dict() for x in loop.candidates[first:]])
        trial.set_user_attr("chosen", c.to_dict())
        trial.set_user_attr("quantize", state.get("quantize"))
        return value

    remaining = None
    if loop.deadline is not None:
        remaining = max(1.0, loop.deadline - time.monotonic())
    if done < trials:
        study.optimize(objective, timeout=remaining, callbacks=[MaxTrialsCallback(trials, states=finished)], catch=())
    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if (trial_dir / str(t.number) / "checkpoint").exists() or t.number == unsaved.get("number")
    ]
    if not complete:
        raise SlimkitError("no search trial finished: raise --time-budget or --trials")
    best = max(complete, key=lambda t: t.value)
    # every candidate of every finished trial (also those of earlier, resumed runs) for the Pareto front
    loop.candidates = []
    chosen_id = None
    for t in sorted(study.get_trials(deepcopy=False, states=finished), key=lambda t: t.number):
        for d in t.user_attrs.get("candidates", []):
            c = _candidate(d)
            if t.number == best.number and d["id"] == best.user_attrs["chosen"]["id"]:
                chosen_id = len(loop.candidates)
            c.id = len(loop.candidates)
            c.step = f"trial {t.number}: {c.step}"
            loop.candidates.append(c)
    chosen = loop.candidates[chosen_id] if chosen_id is not None else _candidate(best.user_attrs["chosen"])
    folder = trial_dir / str(best.number)
    model = unsaved["model"] if best.number == unsaved.get("number") else loop.be.load(folder / "checkpoint")
    onnx = folder / "model.int8.onnx"
    state = {
        "model": model,
        "onnx": onnx if onnx.exists() else None,
        "candidate": chosen,
        "backed_off": [],
        "quantize": best.user_attrs.get("quantize"),
    }
    best_recipe = Recipe.from_dict(json.loads((folder / "recipe.json").read_text()))
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value if t.value is None or math.isfinite(t.value) else None,
            "params": t.params,
        }
        for t in study.get_trials(deepcopy=False)
    ]
    loop.log(f"search: best trial {best.number} (val {metric} score {best.value:.4f}) of {len(rows)}")
    return state, best_recipe, rows
