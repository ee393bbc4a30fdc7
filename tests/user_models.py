"""Architectures written only for testing that slimkit handles models it did not write (issue 8).

Each is a factory target (``tests.user_models:InceptionNet``) with an example input in ``EXAMPLES``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


class InceptionNet(nn.Module):
    """Two branches concatenated along channels, then a conv reading the concatenation."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.b1 = nn.Conv2d(16, 12, 1)
        self.b2 = nn.Sequential(nn.Conv2d(16, 8, 1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1))
        self.bn = nn.BatchNorm2d(24)
        self.mix = nn.Conv2d(24, 32, 3, padding=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = torch.cat([F.relu(self.b1(x)), F.relu(self.b2(x))], dim=1)
        x = F.relu(self.mix(F.relu(self.bn(x))))
        return self.head(x.mean((2, 3)))


class GroupedNet(nn.Module):
    """ResNeXt-style block: 1x1 -> grouped 3x3 (4 groups) -> 1x1, with a residual."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.reduce = nn.Conv2d(32, 32, 1)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.expand = nn.Conv2d(32, 32, 1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = self.expand(F.relu(self.grouped(F.relu(self.reduce(x)))))
        return self.head(F.relu(x + y).mean((2, 3)))


class BiGRUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 24)
        self.gru = nn.GRU(24, 32, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(64, 3)

    def forward(self, x):
        out, _ = self.gru(self.emb(x))
        return self.head(out[:, -1])


class MHANet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        h = self.emb(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        h = self.norm(h + a)
        h = h + self.ff(h)
        return self.head(h.mean(1))


class TwoTower(nn.Module):
    """User and item towers; the score is the dot product of their outputs."""

    def __init__(self):
        super().__init__()
        self.user_emb = nn.Embedding(50, 16)
        self.item_emb = nn.Embedding(80, 16)
        self.user = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32))
        self.item = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32))

    def forward(self, x):
        u = self.user(self.user_emb(x[:, 0]))
        i = self.item(self.item_emb(x[:, 1]))
        return (u * i).sum(1, keepdim=True)


class SharedLayerNet(nn.Module):
    """One Linear applied twice (weights shared between two positions in the graph)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(20, 32)
        self.shared = nn.Linear(32, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        h = F.relu(self.inp(x))
        h = F.relu(self.shared(h))
        h = F.relu(self.shared(h))
        return self.head(h)


class TiedLM(nn.Module):
    """Embedding tied to the output projection (weight sharing across modules)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        self.body = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))
        self.out = nn.Linear(32, 100, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x):
        return self.out(self.body(self.emb(x)).mean(1))


EXAMPLES: dict[type[nn.Module], Callable[[], torch.Tensor]] = {
    InceptionNet: lambda: torch.rand(2, 3, 16, 16),
    GroupedNet: lambda: torch.rand(2, 3, 16, 16),
    BiGRUNet: lambda: torch.randint(0, 100, (2, 12)),
    MHANet: lambda: torch.randint(0, 100, (2, 12)),
    TwoTower: lambda: torch.stack([torch.randint(0, 50, (4,)), torch.randint(0, 80, (4,))], 1),
    SharedLayerNet: lambda: torch.rand(2, 20),
    TiedLM: lambda: torch.randint(0, 100, (2, 12)),
}
