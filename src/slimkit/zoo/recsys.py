"""A DLRM-like click model: one embedding table per categorical field, then MLPs."""

from __future__ import annotations

import torch
from torch import nn

from slimkit.core.errors import SlimkitError
from slimkit.zoo.registry import register


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RecsysMLP(nn.Module):
    def __init__(self, cardinalities: list[int], num_classes: int, embed_dim: int, hidden: list[int], interaction: str):
        super().__init__()
        if interaction not in ("dot", "cat"):
            raise SlimkitError(f"recsys_mlp interaction must be 'dot' or 'cat', got {interaction!r}")
        self.interaction = interaction
        self.embeddings = nn.ModuleList([nn.Embedding(n, embed_dim) for n in cardinalities])
        f = len(cardinalities)
        features = f * embed_dim + (f * (f - 1) // 2 if interaction == "dot" else 0)
        self.top = _mlp([features, *hidden, num_classes])
        self.register_buffer("_pairs", torch.triu_indices(f, f, offset=1), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, F) int64, one column per field
        embs = torch.stack([table(ids[:, i]) for i, table in enumerate(self.embeddings)], dim=1)  # (B, F, E)
        x = embs.flatten(1)  # (B, F * E)
        if self.interaction == "dot":
            dots = embs @ embs.transpose(1, 2)  # (B, F, F): pairwise field interactions
            x = torch.cat([x, dots[:, self._pairs[0], self._pairs[1]]], dim=1)
        return self.top(x)


@register("recsys_mlp")
def recsys_mlp(
    cardinalities: list[int] | None = None,
    num_classes: int = 2,
    embed_dim: int = 16,
    hidden: list[int] | None = None,
    interaction: str = "dot",
) -> RecsysMLP:
    """Embedding tables (``cardinalities`` rows each) -> concat + pairwise dots (DLRM) -> MLP."""
    return RecsysMLP(cardinalities or [1000, 500, 20, 4], num_classes, embed_dim, hidden or [128, 64], interaction)
