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

Backend: ``KERAS_BACKEND=torch`` is chosen when the variable is unset (set it yourself before
importing keras to use another; tensorflow and jax are not required). Importing ``slimkit`` does
not import keras; calling any of these functions does. ONNX: ``model.export("m.onnx",
format="onnx")`` (Keras 3, torch backend) gives a file that ``slimkit.load`` runs; its input is
channels-last (NHWC).

Not yet (issue 7, later slices): ``.keras`` files in the CLI verbs, SVD / two-layer low-rank Dense,
ensembles, weight soups and distillation as Keras models; ``slimkit.evaluate`` of a Keras model or
of its NHWC ONNX export on slimkit's NCHW datasets.

>>> import slimkit.keras as sk_keras
>>> keras = sk_keras.keras_module()
>>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
...     keras.layers.Flatten(), keras.layers.Dense(2, name="out")])
>>> small, record = sk_keras.prune_units(model, {"conv": 0.5})
>>> small.get_layer("conv").filters, small.get_layer("out").kernel.shape
(2, (72, 2))
"""

from slimkit.keras._graph import SUPPORTED, check_supported, keras_module, load
from slimkit.keras.prune import KerasResult, pca_dense, prune_units, unit_scores
from slimkit.keras.simplify import fold_batchnorm, remove_layers, resample_grid

__all__ = [
    "SUPPORTED",
    "KerasResult",
    "check_supported",
    "fold_batchnorm",
    "keras_module",
    "load",
    "pca_dense",
    "prune_units",
    "remove_layers",
    "resample_grid",
    "unit_scores",
]
