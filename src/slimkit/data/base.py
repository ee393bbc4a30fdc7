"""The :class:`Dataset` container, the registry of named datasets and ``load``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from slimkit.core.errors import DataError
from slimkit.core.registry import Registry

SPLITS = ("train", "val", "test")
Augment = Callable[[torch.Tensor], torch.Tensor]

_REGISTRY: Registry[Callable[..., Dataset]] = Registry("dataset")
register = _REGISTRY.register


@dataclasses.dataclass
class Dataset:
    """Train / val / test tensors plus what a model needs to know about them.

    ``meta`` holds the model-shaping facts (``num_classes``, ``in_channels``, ``input_size``,
    ``vocab_size``, ``cardinalities``...) that :func:`slimkit.zoo.create_for` passes to a model.
    ``augment`` is the training-time batch transform recommended for this data (or None).
    """

    name: str
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    classes: list[str]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    augment: Augment | None = None
    batch_size: int = 64
    source: str = ""

    def __post_init__(self) -> None:
        for split in SPLITS:
            if split not in self.splits:
                raise DataError(f"dataset {self.name!r} has no {split!r} split")
            x, y = self.splits[split]
            if len(x) != len(y):
                raise DataError(f"dataset {self.name!r}: {split} has {len(x)} inputs but {len(y)} labels")
        self.meta.setdefault("num_classes", len(self.classes))

    def loader(self, split: str = "train", batch_size: int | None = None, shuffle: bool | None = None) -> DataLoader:
        """A DataLoader over ``split``; shuffled for train by default (seeded by torch's global RNG)."""
        if split not in self.splits:
            raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        tensors = TensorDataset(*self.splits[split])
        shuffle = split == "train" if shuffle is None else shuffle
        sampler = RandomSampler(tensors) if shuffle else SequentialSampler(tensors)
        # Index whole batches at once: far faster than collating one sample at a time.
        batches = BatchSampler(sampler, batch_size or self.batch_size, drop_last=False)
        return DataLoader(tensors, sampler=batches, batch_size=None)

    @property
    def train(self) -> DataLoader:
        return self.loader("train")

    @property
    def val(self) -> DataLoader:
        return self.loader("val")

    @property
    def test(self) -> DataLoader:
        return self.loader("test")

    @property
    def example(self) -> torch.Tensor:
        """A small input batch (4 training samples) for tracing and export."""
        return self.splits["train"][0][:4].clone()

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample, without the batch dimension."""
        return tuple(self.splits["train"][0].shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def sizes(self) -> dict[str, int]:
        return {split: len(self.splits[split][1]) for split in SPLITS}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes().items())
        return f"Dataset({self.name!r}, {sizes}, input={self.input_shape}, classes={self.num_classes})"


def as_loader(data: Any, split: str, *, what: str = "data") -> DataLoader | None:
    """``data`` as an unshuffled loader: a DataLoader as is, a :class:`Dataset`'s ``split``, None as None."""
    if data is None or isinstance(data, DataLoader):
        return data
    if hasattr(data, "loader"):  # a Dataset, or anything shaped like one
        return data.loader(split, shuffle=False)
    raise DataError(f"{what} must be a slimkit Dataset or a DataLoader, got {type(data).__name__}")


def names() -> list[str]:
    """Names accepted by :func:`load` (besides paths to ``.npz`` files)."""
    return _REGISTRY.names()


def load(name: str | Path, *, seed: int = 0, **kwargs: Any) -> Dataset:
    """Load a dataset by registered name or from a user ``.npz`` file.

    Registered names: see :func:`names` (``mnist5k``, ``digits``, ``rotten-tomatoes``,
    ``movielens-100k``, ``synthetic-text``, ``synthetic-recsys``). Splits are stratified and seeded.
    For a ``.npz`` file ``kwargs`` may hold ``max_bytes`` (see :func:`slimkit.data.files.load_npz`).
    """
    text = str(name)
    if text.endswith(".npz") or Path(text).suffix:
        from slimkit.data.files import load_npz

        return load_npz(Path(text), seed=seed, **kwargs)
    return _REGISTRY.get(text)(seed=seed, **kwargs)


def stratified_split(
    x: np.ndarray, y: np.ndarray, *, val: int | float, test: int | float, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Split arrays into train / val / test, stratified by label and seeded."""
    from sklearn.model_selection import train_test_split

    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=test, stratify=y, random_state=seed)
    if isinstance(val, float):
        val = round(val * len(y))
    x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=val, stratify=y_rest, random_state=seed)
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


def to_tensors(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], x_dtype: torch.dtype
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Numpy splits as tensors: shared memory where the dtype already matches, else one converted copy."""
    return {k: (as_tensor(x, x_dtype), as_tensor(y, torch.long)) for k, (x, y) in splits.items()}


_CHUNK_BYTES = 32 << 20


def as_tensor(x: np.ndarray, dtype: torch.dtype, rows: np.ndarray | None = None) -> torch.Tensor:
    """``x`` (or its ``rows``) as a ``dtype`` tensor without intermediate full-size copies.

    An array that already has the tensor's dtype and layout is shared, not copied. Otherwise the
    result is allocated once and filled in chunks of about 32 MB, so converting (float64 to
    float32, say) or selecting rows never holds more than the source, the result and one chunk.
    """
    target = torch.empty(0, dtype=dtype).numpy().dtype
    if rows is None and x.dtype == target and x.flags.c_contiguous and x.flags.writeable:
        return torch.from_numpy(x)
    n = len(x) if rows is None else len(rows)
    out = torch.empty((n, *x.shape[1:]), dtype=dtype)
    view = out.numpy()
    row_bytes = max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * max(x.dtype.itemsize, target.itemsize))
    step = max(1, _CHUNK_BYTES // row_bytes)
    for start in range(0, n, step):
        stop = min(start + step, n)
        view[start:stop] = x[start:stop] if rows is None else x[rows[start:stop]]
    return out


def random_shift(max_shift: int = 2) -> Augment:
    """Batch augmentation: shift each image by up to ``max_shift`` pixels (zero fill).

    Small random shifts are the classic recipe for MNIST-sized training sets.
    """

    def shift(x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        b, _, h, w = x.shape
        p = max_shift
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (b,))
        dx = torch.randint(0, 2 * p + 1, (b,))
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]  # (B, 1, 1, W)
        idx_b = torch.arange(b)[:, None, None, None]
        idx_c = torch.arange(x.shape[1])[None, :, None, None]
        return padded[idx_b, idx_c, rows, cols]

    shift.__name__ = f"random_shift({max_shift})"
    return shift
