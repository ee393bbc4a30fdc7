"""Weight sharing (Han et al. 2016, "Deep Compression"): k-means per layer, tied fine-tuning.

After :class:`ClusterConfig` each selected weight takes at most ``k`` distinct values (its
centroids). slimkit checkpoints store such tensors as a palette (the centroids) plus bit-packed
indices (:mod:`slimkit.io.codecs`), so with ``k = 16`` a weight costs 4 bits instead of 32 and
the file really shrinks. :func:`tied` fine-tunes with the weights held on their centroids: each
centroid moves by the summed gradient of its members.

>>> import torch, slimkit as sk
>>> from slimkit.compress import ClusterConfig
>>> model = sk.zoo.create("lenet5")
>>> _ = sk.apply_(model, ClusterConfig(k=16))
>>> len(torch.unique(model.fc1.weight))
16
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
from torch import nn

from slimkit.core.errors import SlimkitError
from slimkit.core.transform import Config, TransformRecord, records, register_config, register_transform, select

LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)
INITS = ("linear", "quantile")


@register_config
@dataclasses.dataclass(frozen=True, kw_only=True)
class ClusterConfig(Config):
    """Share ``k`` (2..256) weight values per layer. ``layers``: names or ``re:`` patterns
    (default: every Linear, Conv and Embedding). ``init``: ``"linear"`` (evenly spaced between
    the extremes, which keeps the rare large weights; best in Deep Compression) or ``"quantile"``.
    """

    k: int = 16
    layers: tuple[str, ...] | None = None
    init: str = "linear"
    iterations: int = 50

    def __post_init__(self) -> None:
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        if not 2 <= self.k <= 256:
            raise SlimkitError(f"k must be between 2 and 256 (a palette holds at most 256 values), got {self.k}")
        if self.init not in INITS:
            raise SlimkitError(f"unknown init {self.init!r}; choose linear or quantile")
        if self.iterations < 1:
            raise SlimkitError(f"iterations must be at least 1, got {self.iterations}")


def kmeans_1d(
    values: torch.Tensor, k: int, init: str = "linear", iterations: int = 50
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on scalars: centroids (k,) ascending and each value's cluster index.

    In 1-D the clusters are intervals between centroid midpoints, so assignment is a bucketize.
    """
    v = values.detach().reshape(-1).double()  # (N,)
    if init == "linear":
        c = torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float64)
    else:
        c = torch.quantile(v[:: max(1, len(v) // 100_000)], torch.linspace(0, 1, k, dtype=torch.float64))
    for _ in range(iterations):
        c = torch.sort(c).values
        idx = torch.bucketize(v, (c[1:] + c[:-1]) / 2)  # (N,) in [0, k)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, idx, v)
        counts = torch.bincount(idx, minlength=k).double()
        new = torch.where(counts > 0, sums / counts.clamp_min(1), c)  # an empty cluster keeps its centroid
        if torch.allclose(new, c, rtol=0, atol=1e-12):
            break
        c = new
    c = torch.sort(c).values
    return c, torch.bucketize(v, (c[1:] + c[:-1]) / 2)


@register_transform(ClusterConfig)
def cluster_(model: nn.Module, cfg: ClusterConfig, example_inputs: torch.Tensor | None = None) -> TransformRecord:
    """Replace each selected weight by its nearest of ``k`` k-means centroids (in place)."""
    record = TransformRecord("ClusterConfig", cfg.to_dict())
    names = select(model, cfg.layers, LAYER_TYPES)
    if not names:
        raise SlimkitError("the model has no Linear, Conv or Embedding layer to cluster")
    details = {}
    for name in names:
        w = model.get_submodule(name).weight
        distinct = len(torch.unique(w))
        if distinct <= cfg.k:
            record.skipped[name] = f"already has {distinct} distinct values (k={cfg.k})"
            continue
        centroids, idx = kmeans_1d(w, cfg.k, cfg.init, cfg.iterations)
        with torch.no_grad():
            new = centroids.to(w.dtype)[idx].reshape(w.shape)
            err = float((new - w).pow(2).mean() / w.pow(2).mean().clamp_min(1e-30))
            w.copy_(new)
        record.changed.append(name)
        details[name] = {"k": cfg.k, "values": len(torch.unique(w)), "relative_mse": err}
    record.details["layers"] = details
    return record


def clustered_layers(model: nn.Module) -> list[str]:
    """Layers changed by the :class:`ClusterConfig` transforms applied to ``model``."""
    out: list[str] = []
    for rec in records(model):
        if rec.transform == "ClusterConfig":
            out += [n for n in rec.changed if n not in out]
    return out


@contextlib.contextmanager
def tied(model: nn.Module, layers: list[str] | None = None) -> Iterator[nn.Module]:
    """Fine-tune inside this block with clustered weights tied to their centroids.

    Each weight's gradient is replaced by the summed gradient of its cluster, so all members move
    together (use an element-wise optimizer such as Adam, :func:`slimkit.train.fit`'s default).
    On exit the hooks are removed and every cluster is set exactly to its members' mean, so each
    layer again has at most ``k`` values. ``layers`` defaults to the layers clustered so far::

        sk.apply_(model, ClusterConfig(k=16))
        with tied(model):
            sk.train.fit(model, data.train, epochs=2, lr=1e-4)
    """
    names = clustered_layers(model) if layers is None else list(layers)
    if not names:
        raise SlimkitError("no clustered layers: apply ClusterConfig first or name the layers")
    groups, handles = [], []
    for name in names:
        w = model.get_submodule(name).weight
        values, inverse = torch.unique(w.detach(), return_inverse=True)
        if len(values) > 256:
            raise SlimkitError(f"{name} is not clustered ({len(values)} distinct values)")
        flat = inverse.reshape(-1)

        def hook(grad: torch.Tensor, flat: torch.Tensor = flat, k: int = len(values)) -> torch.Tensor:
            sums = torch.zeros(k, dtype=grad.dtype).index_add_(0, flat, grad.reshape(-1))  # (k,)
            return sums[flat].reshape(grad.shape)

        groups.append((w, flat, len(values)))
        handles.append(w.register_hook(hook))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for w, flat, k in groups:
                sums = torch.zeros(k, dtype=torch.float64).index_add_(0, flat, w.detach().reshape(-1).double())
                means = (sums / torch.bincount(flat, minlength=k).double()).to(w.dtype)
                w.copy_(means[flat].reshape(w.shape))
