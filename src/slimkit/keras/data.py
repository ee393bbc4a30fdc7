"""slimkit's datasets for Keras models: the same splits, laid out as the model's input expects.

slimkit's image datasets are channels-first tensors ``(N, C, H, W)`` (PyTorch's layout); a Keras
model built with the defaults takes channels-last ``(N, H, W, C)``. :func:`for_model` returns the
dataset with its inputs permuted when (and only when) that is what makes them fit the model, so
everything that reads a :class:`~slimkit.data.Dataset` (``slimkit.compress.quantize``,
``slimkit.evaluate`` of the model's ONNX export) works on the Keras side unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from slimkit.core.errors import ShapeError, SlimkitError
from slimkit.data.base import Dataset

__all__ = ["arrays", "batches", "for_model", "xy"]


def _fits(want: tuple, have: tuple) -> bool:
    return len(want) == len(have) and all(w is None or w == h for w, h in zip(want, have, strict=True))


def for_model(data: Dataset | str, model: Any) -> Dataset:
    """``data`` (a Dataset or its name) with inputs laid out as ``model``'s first input.

    Returns ``data`` itself when the shapes already fit, a channels-last copy of an image dataset
    (and of its ``augment``, which keeps working on channels-first batches) when that fits, and
    raises :class:`ShapeError` naming both shapes otherwise.
    """
    from slimkit import data as data_mod

    if isinstance(data, str):
        data = data_mod.load(data)
    if not isinstance(data, Dataset):
        raise SlimkitError(f"expected a slimkit Dataset or its name, got {type(data).__name__}")
    want = tuple(model.inputs[0].shape[1:])
    have = data.input_shape
    if _fits(want, have):
        return data
    if len(have) == 3 and _fits(want, (have[1], have[2], have[0])):
        splits = {k: (x.permute(0, 2, 3, 1).contiguous(), y) for k, (x, y) in data.splits.items()}
        augment = data.augment
        wrapped = None
        if augment is not None:

            def wrapped(x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> augment in (B, C, H, W) -> back
                return augment(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).contiguous()

        meta = {**data.meta, "layout": "channels_last"}
        return dataclasses.replace(data, splits=splits, augment=wrapped, meta=meta)
    raise ShapeError(
        f"model {model.name!r} takes inputs of shape {want} but {data.name} has {have} "
        f"(channels-last {(have[1], have[2], have[0]) if len(have) == 3 else have} does not fit either)"
    )


def arrays(data: Dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of ``split`` as NumPy arrays (float32 inputs unless they are integer ids)."""
    x, y = data.splits[split]
    x = x.numpy()
    if x.dtype == np.float64:
        x = x.astype(np.float32)
    return x, y.numpy()


def xy(data: Any, model: Any, split: str, what: str = "data") -> tuple[np.ndarray, np.ndarray] | None:
    """``data`` as arrays for ``model``: an ``(x, y)`` pair as given, a Dataset (or name) by ``split``."""
    if data is None:
        return None
    if isinstance(data, tuple | list) and len(data) == 2:
        return np.asarray(data[0]), np.asarray(data[1])
    if isinstance(data, Dataset | str):
        return arrays(for_model(data, model), split)
    raise SlimkitError(f"{what} must be an (x, y) pair of arrays or a slimkit Dataset, got {type(data).__name__}")


def batches(x: np.ndarray, y: np.ndarray, batch_size: int = 64, augment: Any = None, seed: int = 0) -> Any:
    """A shuffled ``keras.utils.PyDataset`` of ``(x, y)`` batches, ``augment`` applied per batch.

    ``augment`` is a slimkit batch transform (torch tensor in, torch tensor out), such as a
    channels-last dataset's ``augment`` from :func:`for_model`; without it, plain arrays are
    returned (``fit(x, y)`` works as well).
    """
    from slimkit.keras._graph import keras_module

    keras = keras_module()

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(x))

        def __len__(self) -> int:
            return math.ceil(len(x) / batch_size)

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            idx = self.order[i * batch_size : (i + 1) * batch_size]
            xb = x[idx]
            if augment is not None:
                xb = augment(torch.from_numpy(xb)).numpy()
            return xb, y[idx]

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(len(x))

    return Batches()
