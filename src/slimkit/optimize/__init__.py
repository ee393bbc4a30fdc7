"""The closed loop: meet a budget (MACs, params, file size, latency) with the least quality lost.

- :class:`Target`: the budget, the quality constraint (validation split) and a time budget;
  :func:`parse_target` reads CLI strings such as ``macs=0.25`` or ``latency=0.3@64``.
- :func:`optimize`: sensitivity analysis, non-uniform pruning allocation, a recipe of steps
  (prune -> fine-tune with distillation -> fold -> int8), back-off, Pareto front, test once,
  report (``report.json`` + a self-contained ``report.html``). ``trials=N`` searches recipe
  parameters with Optuna (extra ``search``), resumable.
- :class:`Recipe`, :class:`FineTuneConfig`, :class:`SensitivityPruneConfig`: the steps.
- :func:`measure_sensitivity`, :class:`CostModel`, :func:`allocate`, :func:`uniform`: per-layer
  sensitivity and the budget allocation, usable on their own.

A run folder (``output=``) holds the outputs (``checkpoint/``, ``model.onnx``, ``model.int8.onnx``,
``report.json``, ``report.html``, each written atomically), the sensitivity cache and, while the run
is going, ``progress/`` (the model after every finished step) or the Optuna study (``study.db``):
``resume=True`` (CLI ``--resume``) continues from the last finished step or trial.

Example::

    import slimkit as sk
    from slimkit.optimize import Target, optimize

    data = sk.data.load("mnist5k")
    result = optimize(sk.load("runs/cnn"), data, Target(macs=0.25, bytes=0.05, max_drop=0.5), output="runs/opt")
    print(result.comparison)
"""

from __future__ import annotations

from slimkit.optimize.recipe import FineTuneConfig, Recipe, SensitivityPruneConfig, auto_recipe
from slimkit.optimize.run import OptimizeResult, optimize
from slimkit.optimize.sensitivity import CostModel, Sensitivity, allocate, measure_sensitivity, uniform
from slimkit.optimize.target import Target, parse_duration, parse_target

__all__ = [
    "CostModel",
    "FineTuneConfig",
    "OptimizeResult",
    "Recipe",
    "Sensitivity",
    "SensitivityPruneConfig",
    "Target",
    "allocate",
    "auto_recipe",
    "measure_sensitivity",
    "optimize",
    "parse_duration",
    "parse_target",
    "uniform",
]
