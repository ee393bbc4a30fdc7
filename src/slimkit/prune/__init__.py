"""Pruning: structured (channels, neurons, heads, hidden units, physically removed).

See :class:`ChannelPruneConfig` and :func:`prune_channels`; importance methods are in
:mod:`slimkit.prune.importance`, the dependency analysis in :mod:`slimkit.graph`.
"""

from __future__ import annotations

from slimkit.prune.structured import ChannelPruneConfig, prune_channels

__all__ = ["ChannelPruneConfig", "prune_channels"]
