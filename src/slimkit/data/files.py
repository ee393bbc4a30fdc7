"""User datasets from ``.npz`` files (loaded with ``allow_pickle=False``)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from slimkit.core.errors import DataError
from slimkit.data.base import Dataset, names, to_tensors

ACCEPTED_KEYS = "x, y (required); x_val, y_val, x_test, y_test, classes (optional)"


def load_npz(path: Path, *, seed: int = 0) -> Dataset:
    """Arrays ``x`` (N, ...) and integer labels ``y`` (N,); missing val/test splits are carved out
    of ``x``/``y`` (stratified 80 / 10 / 10, seeded)."""
    if path.suffix != ".npz":
        raise DataError(f"cannot load dataset {str(path)!r}: expected a .npz file or one of: {', '.join(names())}")
    if not path.is_file():
        raise DataError(f"no such dataset file: {path}; give a .npz file or one of: {', '.join(names())}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc}); it must hold {ACCEPTED_KEYS}") from None
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path} holds keys {sorted(arrays)}; it must hold {ACCEPTED_KEYS}")
    unknown = set(arrays) - {"x", "y", "x_val", "y_val", "x_test", "y_test", "classes"}
    if unknown:
        raise DataError(f"{path} has unexpected keys {sorted(unknown)}; accepted: {ACCEPTED_KEYS}")

    def pair(suffix: str) -> tuple[np.ndarray, np.ndarray] | None:
        xk, yk = f"x{suffix}", f"y{suffix}"
        if (xk in arrays) != (yk in arrays):
            raise DataError(f"{path} has {xk if xk in arrays else yk} without its partner; give both")
        if xk not in arrays:
            return None
        x, y = arrays[xk], arrays[yk]
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: {yk} must be a 1-D array of integer class labels, got {y.dtype} {y.shape}")
        if len(x) != len(y):
            raise DataError(f"{path}: {xk} has {len(x)} rows but {yk} has {len(y)}")
        if x.shape[1:] != arrays["x"].shape[1:]:
            raise DataError(f"{path}: {xk} samples have shape {x.shape[1:]}, x has {arrays['x'].shape[1:]}")
        return x, y

    train, val, test = pair(""), pair("_val"), pair("_test")
    assert train is not None
    if test is None:
        train, test = _carve(*train, fraction=0.1, seed=seed)
    if val is None:
        train, val = _carve(*train, fraction=0.1 / 0.9, seed=seed)
    splits = {"train": train, "val": val, "test": test}
    labels = np.concatenate([y for _, y in splits.values()])
    if labels.min() < 0:
        raise DataError(f"{path}: labels must be 0..K-1, found {labels.min()}")
    n_classes = int(labels.max()) + 1
    classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else [str(i) for i in range(n_classes)]
    if len(classes) < n_classes:
        raise DataError(f"{path}: {len(classes)} class names for labels up to {n_classes - 1}")
    x_dtype = torch.long if np.issubdtype(arrays["x"].dtype, np.integer) else torch.float32
    meta: dict = {}
    if x_dtype == torch.float32 and arrays["x"].ndim == 4:
        meta = {"in_channels": arrays["x"].shape[1], "input_size": arrays["x"].shape[2]}
    return Dataset(
        name=path.stem,
        splits=to_tensors(splits, x_dtype),
        classes=classes,
        meta=meta,
        source=str(path),
    )


def _carve(x: np.ndarray, y: np.ndarray, *, fraction: float, seed: int) -> tuple[tuple, tuple]:
    """Split off ``fraction`` of the rows, stratified when every class has two or more rows."""
    from sklearn.model_selection import train_test_split

    stratify = y if np.bincount(y).min(initial=2) >= 2 and len(np.unique(y)) > 1 else None
    x_a, x_b, y_a, y_b = train_test_split(x, y, test_size=fraction, stratify=stratify, random_state=seed)
    return (x_a, y_a), (x_b, y_b)
