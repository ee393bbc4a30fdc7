"""Dependency analysis: which dimensions of which layers must be pruned together.

>>> import torch, slimkit as sk
>>> from slimkit.graph import analyze
>>> g = analyze(sk.zoo.create("seed_cnn"), torch.zeros(1, 1, 28, 28))
>>> [(grp.name, len(grp.units)) for grp in g.groups]
[('conv1.out', 64), ('conv2.out', 64), ('fc1.out', 1024)]
>>> print(g.skipped["fc2"])
feeds the model output (its size is part of the model's interface)

The model is traced with ``torch.fx`` and run once on ``example`` while every tensor carries a
tensor of *dimension ids* (see :mod:`slimkit.graph.trace`). Indices tied by any op (a conv reading
a BatchNorm's output, a residual add, a concatenation, a flatten feeding a Linear, the dot products
of a recommender's embedding tables) end up in one connected component: a *unit* that is removed
from every member layer at once. Units with the same members form a :class:`Group`. Anything the
rules cannot prove safe is left out and reported in :attr:`DependencyGraph.skipped` with the reason.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import torch
from torch import nn

from slimkit.core.model import eval_mode
from slimkit.core.transform import select
from slimkit.graph.ids import IdSpace
from slimkit.graph.trace import DimTracer, Slot, is_attention_block

__all__ = ["DependencyGraph", "Group", "Slot", "analyze", "is_attention_block"]


@dataclasses.dataclass
class Group:
    """Units pruned together. ``units[u][k]`` are the indices unit ``u`` removes from ``slots[k]``."""

    slots: list[Slot]
    units: list[list[np.ndarray]]

    @property
    def name(self) -> str:
        producer = next(s for s in self.slots if s.producer)
        return f"{producer.module}.{producer.kind}"

    @property
    def modules(self) -> list[str]:
        return sorted({s.module for s in self.slots})

    def __repr__(self) -> str:
        return f"Group({self.name}, units={len(self.units)}, members={[f'{s.module}.{s.kind}' for s in self.slots]})"


@dataclasses.dataclass
class DependencyGraph:
    """Prunable groups of a model plus the layers left alone and why."""

    groups: list[Group]
    skipped: dict[str, str]
    slots: dict[tuple[str, str], Slot]

    def group_of(self, module: str) -> Group | None:
        """The group in which ``module`` produces units (e.g. a conv's output channels)."""
        for g in self.groups:
            if any(s.module == module and s.producer for s in g.slots):
                return g
        return None


def analyze(model: nn.Module, example: torch.Tensor, protected: list[str] | None = None) -> DependencyGraph:
    """Find the coupled prunable dimensions of ``model`` by tracing it on ``example`` (a batch).

    ``protected`` layers (names or ``re:`` patterns) keep all their dimensions.
    """
    space = IdSpace()
    tracer = DimTracer(model, space)
    with eval_mode(model):
        tracer.run(example[:1])
    for name in select(model, protected) if protected else []:
        tracer.block_module(name, "protected by the user")
    labels = space.components()
    reason_of = {int(labels[b]): why for b, why in space.reasons.items()}

    members: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)  # comp -> (slot#, index)
    slots = list(tracer.slots.values())
    for k, slot in enumerate(slots):
        for i, comp in enumerate(labels[slot.ids.numpy()]):
            members[int(comp)].append((k, i))

    by_signature: dict[tuple, list[int]] = collections.defaultdict(list)
    unprunable: dict[int, str] = {}
    for comp, items in members.items():
        if comp in reason_of:
            unprunable[comp] = reason_of[comp]
        elif not any(slots[k].producer for k, _ in items):
            unprunable[comp] = "no layer produces this dimension (it is read from the model input)"
        else:
            by_signature[tuple(sorted(collections.Counter(k for k, _ in items).items()))].append(comp)

    groups = []
    for signature, comps in by_signature.items():
        order = [k for k, _ in signature]
        units = []
        for comp in comps:
            per_slot: dict[int, list[int]] = collections.defaultdict(list)
            for k, i in members[comp]:
                per_slot[k].append(i)
            units.append([np.array(sorted(per_slot[k])) for k in order])
        units.sort(key=lambda u: int(u[0][0]))
        groups.append(Group(slots=[slots[k] for k in order], units=units))
    groups.sort(key=lambda g: min(int(s.ids[0]) for s in g.slots))

    skipped: dict[str, str] = dict(tracer.unsupported)
    for slot in slots:
        if not slot.producer:
            continue
        comps = {int(c) for c in labels[slot.ids.numpy()]}
        if all(c in unprunable for c in comps):
            skipped.setdefault(slot.module, unprunable[min(comps)])
    seen = {s.module for s in slots}
    for name, m in model.named_modules():
        inside_seen = any(name.startswith(f"{s}.") for s in seen)
        if (
            any(True for _ in m.parameters(recurse=False))
            and name not in seen
            and name not in skipped
            and not inside_seen
        ):
            skipped[name] = "not reached by the analysis (it runs inside an operation the pruner cannot see into)"
    return DependencyGraph(groups=groups, skipped=skipped, slots=tracer.slots)
