"""Datasets by name: real data that ships in packages, synthetic data for fast tests, user files.

>>> import slimkit as sk
>>> data = sk.data.load("digits")
>>> xb, yb = next(iter(data.train))
>>> data.example.shape[1:], data.classes[:3]
(torch.Size([1, 8, 8]), ['0', '1', '2'])
"""

from __future__ import annotations

from slimkit.data import builtin as _builtin  # noqa: F401  (registers the built-in datasets)
from slimkit.data.base import Dataset, Loaders, as_data, as_loader, load, names, random_shift

__all__ = ["Dataset", "Loaders", "as_data", "as_loader", "load", "names", "random_shift"]
