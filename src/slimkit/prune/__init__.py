"""Pruning: structured (channels, neurons, heads, hidden units, physically removed), unstructured
magnitude sparsity and N:M sparsity (weights zeroed, file compressed).

See :class:`ChannelPruneConfig` / :func:`prune_channels`, :class:`MagnitudePruneConfig`,
:class:`NMSparsityConfig`; importance methods are in :mod:`slimkit.prune.importance`, the
dependency analysis in :mod:`slimkit.graph`.
"""

from __future__ import annotations

from slimkit.prune.schedule import StepResult, prune_iteratively
from slimkit.prune.structured import ChannelPruneConfig, prune_channels
from slimkit.prune.unstructured import MagnitudePruneConfig, NMSparsityConfig, bake, sparsity

__all__ = [
    "ChannelPruneConfig",
    "MagnitudePruneConfig",
    "NMSparsityConfig",
    "StepResult",
    "bake",
    "prune_channels",
    "prune_iteratively",
    "sparsity",
]
