"""Keras 3 front end: prune, narrow, simplify and fold Sequential / Functional Keras models natively.

Each function takes a ``keras.Model`` (or a ``.keras`` file) and returns a :class:`KerasResult`
``(model, record)``: a NEW Keras model rebuilt from layer configs and sliced weights (the input
model is untouched; nothing goes through PyTorch) and a
:class:`~slimkit.core.transform.TransformRecord` naming the layers changed and the layers skipped
with the reason. The new model is a plain Keras model: ``compile``/``fit`` it as usual, save it
as ``.keras`` and reload it with ``keras.models.load_model`` (no custom objects).

- :func:`load`: a ``.keras`` file or model; subclassed models are refused with a clear error.
- :func:`prune_units`: Conv filters / Dense units by l1 or l2 importance, with BatchNormalization,
  Flatten -> Dense blocks (channels-last), Add and Concatenate kept consistent.
- :func:`pca_dense`: Dense ``n`` -> ``r`` units by activation PCA, next Dense refit by least squares.
- :func:`remove_layers`: drop single-input layers (the brief's pooling) and repair the shapes after.
- :func:`fold_batchnorm`: fold BatchNormalization into the preceding linear Conv/Dense.
- :func:`ensemble`: members combined into one Functional model (``mean``, ``weighted``, ``vote``);
  :func:`uniform_soup`, :func:`greedy_soup`: weight averaging with BatchNorm re-estimation.
- :func:`distill` / :func:`distiller`: a student trained towards a teacher (or an ensemble) with a
  Keras training step (``compute_loss``), usable with your own ``compile``/``fit``.
- :func:`optimize` (:mod:`slimkit.keras.optimize`): the closed loop of :func:`slimkit.optimize.optimize`
  for Keras models (sensitivity pruning, Keras ``fit`` recovery, BN folding, int8 ONNX, the report).
- :func:`save` / :func:`export_onnx`: atomic ``.keras`` and ONNX files; :func:`for_model` lays a slimkit
  dataset out for the model (channels-last images).

Backend: ``KERAS_BACKEND=torch`` is chosen when the variable is unset (set it yourself before
importing keras to use another; tensorflow and jax are not required). Importing ``slimkit`` does
not import keras; calling any of these functions does. ONNX: ``model.export("m.onnx",
format="onnx")`` (Keras 3, torch backend) gives a file that ``slimkit.load`` runs; its input is
channels-last (NHWC) and :class:`slimkit.io.OnnxModel` also accepts NCHW batches for it.

The CLI takes ``.keras`` files (``slimkit prune / optimize / compress --lowrank --method pca /
simplify / distill / evaluate / export / quantize model.keras ...``); options with no Keras
implementation (e.g. ``--sparsity``, ``--trials``) give a one-line error naming what is supported.

Not yet: SVD / two-layer low-rank Dense, stacking ensembles, unstructured / N:M sparsity,
taylor / activation importances for Keras models.

>>> import slimkit.keras as sk_keras
>>> keras = sk_keras.keras_module()
>>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
...     keras.layers.Flatten(), keras.layers.Dense(2, name="out")])
>>> small, record = sk_keras.prune_units(model, {"conv": 0.5})
>>> small.get_layer("conv").filters, small.get_layer("out").kernel.shape
(2, (72, 2))
"""

from typing import Any

from slimkit.keras._graph import SUPPORTED, check_supported, keras_module, load
from slimkit.keras.data import for_model
from slimkit.keras.distill import distill, distiller
from slimkit.keras.files import export_onnx, save
from slimkit.keras.fuse import check_same_architecture, ensemble, greedy_soup, reestimate_bn, uniform_soup
from slimkit.keras.prune import KerasResult, pca_dense, prune_units, unit_scores
from slimkit.keras.simplify import fold_batchnorm, remove_layers, resample_grid


def optimize(*args: Any, **kwargs: Any) -> Any:
    """:func:`slimkit.keras.optimize.optimize` (imported on first use: it loads the optimize machinery)."""
    from slimkit.keras.optimize import optimize as run

    return run(*args, **kwargs)


__all__ = [
    "SUPPORTED",
    "KerasResult",
    "check_same_architecture",
    "check_supported",
    "distill",
    "distiller",
    "ensemble",
    "export_onnx",
    "fold_batchnorm",
    "for_model",
    "greedy_soup",
    "keras_module",
    "load",
    "optimize",
    "pca_dense",
    "prune_units",
    "reestimate_bn",
    "remove_layers",
    "resample_grid",
    "save",
    "uniform_soup",
    "unit_scores",
]
