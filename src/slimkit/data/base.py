"""The :class:`Dataset` container, the registry of named datasets and ``load``."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
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
    ``task`` names the :class:`slimkit.task.Task` the labels are for (``classification``,
    ``regression``, ``ranking``...; ``classes`` only for classification).
    """

    name: str
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    classes: list[str] = dataclasses.field(default_factory=list)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    augment: Augment | None = None
    batch_size: int = 64
    source: str = ""
    task: str = "classification"

    def __post_init__(self) -> None:
        for split in SPLITS:
            if split not in self.splits:
                raise DataError(f"dataset {self.name!r} has no {split!r} split")
            x, y = self.splits[split]
            if len(x) != len(y):
                raise DataError(f"dataset {self.name!r}: {split} has {len(x)} inputs but {len(y)} labels")
        if self.classes:
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
        kind = f"classes={self.num_classes}" if self.classes else f"task={self.task}"
        return f"Dataset({self.name!r}, {sizes}, input={self.input_shape}, {kind})"


@dataclasses.dataclass
class Loaders:
    """Data as the user's own loaders: ``train`` / ``val`` / ``test`` are any iterables of batches
    (``torch.utils.data.DataLoader`` over a map-style or an ``IterableDataset``, or a generator
    factory's result), nothing held in memory by slimkit. ``example`` is a small batch of model inputs
    (a tensor, or a tuple / dict of them) for tracing and export; by default the first rows of the
    first ``train`` (else ``val``) batch. ``task`` names the :class:`slimkit.task.Task` the batches are
    for (default classification).

    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> ds = TensorDataset(torch.randn(100, 3), torch.randn(100))
    >>> data = Loaders(train=DataLoader(ds, batch_size=10), val=DataLoader(ds, batch_size=50), task="regression")
    >>> tuple(data.example.shape)
    (4, 3)
    """

    train: Iterable | None = None
    val: Iterable | None = None
    test: Iterable | None = None
    example: Any = None
    task: Any = None
    name: str = "loaders"
    augment: Augment | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.val is None and self.train is None:
            raise DataError("Loaders need at least a train or a val loader")
        if self.example is None:
            from slimkit.graph import map_batch
            from slimkit.task import get_task

            first = self.train if self.train is not None else self.val
            try:
                batch = next(iter(first))
            except StopIteration:
                raise DataError("cannot take an example batch: the first loader is empty") from None
            self.example = map_batch(get_task(self.task).inputs(batch), lambda t: t[:4].clone())

    def loader(self, split: str = "train", batch_size: int | None = None, shuffle: bool | None = None) -> Iterable:
        """The loader of ``split`` as given (``batch_size`` and ``shuffle`` are the loader's own)."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        found = getattr(self, split)
        if found is None:
            raise DataError(f"no {split} data: pass Loaders({split}=...)")
        return found

    def sizes(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for split in SPLITS:
            try:
                out[split] = len(getattr(self, split).dataset)
            except (AttributeError, TypeError):
                out[split] = None
        return out


def as_data(value: Any, *, what: str = "data") -> Dataset | Loaders:
    """Data that slimkit can run on: a :class:`Dataset` or :class:`Loaders` as is, a dict with
    ``train`` / ``val`` / ``test`` (and optionally ``example``, ``task``) loaders, or a tuple
    ``(train, val)`` / ``(train, val, test)`` of loaders."""
    if isinstance(value, Dataset | Loaders):
        return value
    if isinstance(value, dict):
        unknown = set(value) - {f.name for f in dataclasses.fields(Loaders)}
        if unknown:
            raise DataError(
                f"{what} returned a dict with unknown keys {sorted(unknown)}; use train, val, test, example"
            )
        return Loaders(**value)
    if isinstance(value, tuple | list) and len(value) in (2, 3):
        return Loaders(*value)
    raise DataError(
        f"{what} returned a {type(value).__name__}; return a slimkit Dataset or Loaders, a dict of train / val / "
        "test DataLoaders, or a (train, val, test) tuple"
    )


def as_loader(data: Any, split: str, *, what: str = "data", batch_size: int | None = None) -> Iterable | None:
    """``data``'s ``split`` unshuffled: a :class:`Dataset` or :class:`Loaders` split, any other iterable of
    batches (a DataLoader) as is, None as None."""
    if data is None:
        return None
    if hasattr(data, "loader"):  # a Dataset or Loaders, or anything shaped like one
        return data.loader(split, batch_size, shuffle=False)
    if isinstance(data, Iterable) and not isinstance(data, str | bytes | torch.Tensor):
        return data
    raise DataError(f"{what} must be a slimkit Dataset, Loaders or a DataLoader, got {type(data).__name__}")


def names() -> list[str]:
    """Names accepted by :func:`load` (besides paths to ``.npz`` files)."""
    return _REGISTRY.names()


_FUNCTION = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*", re.ASCII)


def load(name: str | Path, *, seed: int = 0, **kwargs: Any) -> Dataset | Loaders:
    """Load a dataset by registered name, from a user ``.npz`` file or from the user's function.

    Registered names: see :func:`names` (``mnist5k``, ``digits``, ``rotten-tomatoes``,
    ``movielens-100k``, ``synthetic-text``, ``synthetic-recsys``). Splits are stratified and seeded.
    For a ``.npz`` file ``kwargs`` may hold ``max_bytes`` (see :func:`slimkit.data.files.load_npz`).
    ``package.module:function`` calls the user's function (same trust rules as a model factory)
    and reads what it returns with :func:`as_data`: the user's own DataLoaders. A folder with one
    sub-folder of images per class is read by :func:`slimkit.data.folder.image_folder` (``kwargs``
    go to it).
    """
    text = str(name)
    if _FUNCTION.fullmatch(text):
        from slimkit.io.checkpoint import user_function

        return as_data(user_function(text, "data function", "data function")(**kwargs), what=text)
    if not text.endswith(".npz") and Path(text).is_dir():
        from slimkit.data.folder import image_folder

        return image_folder(text, seed=seed, **kwargs)
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
    splits: dict[str, tuple[np.ndarray, np.ndarray]], x_dtype: torch.dtype, y_dtype: torch.dtype = torch.long
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Numpy splits as tensors: shared memory where the dtype already matches, else one converted copy."""
    return {k: (as_tensor(x, x_dtype), as_tensor(y, y_dtype)) for k, (x, y) in splits.items()}


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
