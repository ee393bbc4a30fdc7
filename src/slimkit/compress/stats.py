"""Calibration statistics for data-aware factorization, gathered with forward hooks in one pass."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from slimkit.graph import map_batch
from slimkit.graph.trace import call_model, flat_tensors

# Modules that act element-wise (or not at all in eval mode): a projection of the units before
# them still means the same units after them.
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Dropout, nn.Identity)


@dataclasses.dataclass
class LayerStats:
    """What one layer saw on calibration data."""

    positions: int = 1  # output positions per sample (tokens, pixels); 1 for a plain Linear
    mid_positions: int = 1  # positions after the first conv of the spatial variant
    rows: int = 0
    total: torch.Tensor | None = None  # (O,) float64 sum of outputs
    outer: torch.Tensor | None = None  # (O, O) float64 sum of output outer products
    chunks: list[torch.Tensor] = dataclasses.field(default_factory=list)
    consumer: str | None = None
    samples: int = 0  # calibration samples seen
    counts: torch.Tensor | None = None  # embedding tables: how often each id was read

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.rows

    @property
    def cov(self) -> torch.Tensor:
        m = self.mean
        return self.outer / self.rows - torch.outer(m, m)

    @property
    def h(self) -> torch.Tensor:
        """The consumer's inputs (N, D) (post-activation units of the producer)."""
        if len(self.chunks) > 1:
            self.chunks[:] = [torch.cat(self.chunks)]
        return self.chunks[0]


def find_pairs(model: nn.Module, names: list[str]) -> dict[str, str]:
    """``{producer: consumer}`` for ``Linear -> element-wise ... -> Linear`` runs in plain ``nn.Sequential``s.

    Inside an ``nn.Sequential`` the data flow is the child order, so the pair is certain; a
    producer that is itself a consumer of an earlier pair is left out (its input width changes).
    """
    wanted, pairs = set(names), {}
    for prefix, seq in model.named_modules():
        if type(seq) is not nn.Sequential:
            continue
        children = list(seq.named_children())
        for i, (child, layer) in enumerate(children):
            name = f"{prefix}.{child}" if prefix else child
            if name not in wanted or not isinstance(layer, nn.Linear) or name in pairs.values():
                continue
            j = i + 1
            while j < len(children) and isinstance(children[j][1], ELEMENTWISE):
                j += 1
            if j < len(children) and isinstance(children[j][1], nn.Linear):
                nxt = children[j][1]
                if nxt.in_features == layer.out_features:
                    pairs[name] = f"{prefix}.{children[j][0]}" if prefix else children[j][0]
    return pairs


def _rows(out: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    if isinstance(layer, nn.Conv2d):
        return out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])  # (B*H*W, O)
    return out.reshape(-1, out.shape[-1])  # (B*T, O)


def collect_stats(
    model: nn.Module, kinds: dict[str, str], pairs: dict[str, str], inputs: Any, batch_size: int
) -> dict[str, LayerStats]:
    """Run ``inputs`` (one batch, run in chunks of ``batch_size`` samples, or a list of batches; a
    batch is a tensor, or a tuple / dict of them) through ``model`` and gather each layer's
    :class:`LayerStats`."""
    stats = {
        name: LayerStats(consumer=pairs.get(name) if kind == "pca-units" else None) for name, kind in kinds.items()
    }
    handles = []

    def on_output(name: str, kind: str):  # noqa: ANN202
        def hook(layer: nn.Module, args: tuple, out: torch.Tensor) -> None:
            st = stats[name]
            x = args[0]
            st.samples += len(out)
            if isinstance(layer, nn.Embedding):
                used = torch.bincount(x.reshape(-1), minlength=layer.num_embeddings)
                st.counts = used if st.counts is None else st.counts + used
            if isinstance(layer, nn.Conv2d):
                st.positions = out.shape[2] * out.shape[3]
                st.mid_positions = out.shape[2] * x.shape[3]
            else:
                st.positions = out[0].numel() // out.shape[-1]
            if kind == "pca-factor":
                rows = _rows(out, layer).double()
                st.total = rows.sum(0) if st.total is None else st.total + rows.sum(0)
                st.outer = rows.T @ rows if st.outer is None else st.outer + rows.T @ rows
                st.rows += len(rows)

        return hook

    def on_consumer_input(name: str):  # noqa: ANN202
        def hook(layer: nn.Module, args: tuple) -> None:
            h = args[0].reshape(-1, args[0].shape[-1])  # (B*T, D)
            stats[name].chunks.append(h.detach().clone())
            stats[name].rows += len(h)

        return hook

    try:
        for name, kind in kinds.items():
            handles.append(model.get_submodule(name).register_forward_hook(on_output(name, kind)))
            if kind == "pca-units":
                consumer = model.get_submodule(pairs[name])
                handles.append(consumer.register_forward_pre_hook(on_consumer_input(name)))
        if not isinstance(inputs, list):
            rows = len(next(iter(flat_tensors(inputs))))
            inputs = [
                map_batch(inputs, lambda t, s=start: t[s : s + batch_size]) for start in range(0, rows, batch_size)
            ]
        for batch in inputs:
            call_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    return stats
