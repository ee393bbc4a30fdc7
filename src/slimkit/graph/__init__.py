"""Dependency analysis: which dimensions of which layers must be pruned together.

>>> import torch, slimkit as sk
>>> from slimkit.graph import analyze
>>> g = analyze(sk.zoo.create("seed_cnn"), torch.zeros(1, 1, 28, 28))
>>> [(grp.name, len(grp)) for grp in g.groups]
[('conv1.out', 64), ('conv2.out', 64), ('fc1.out', 1024)]
>>> print(g.skipped["fc2"])
feeds the model output (its size is part of the model's interface)

The model is run once on ``example`` (its forward as written) while every tensor carries a
tensor of *dimension ids* (see :mod:`slimkit.graph.trace`). Indices tied by any op (a conv reading
a BatchNorm's output, a residual add, a concatenation, a flatten feeding a Linear, the dot products
of a recommender's embedding tables) end up in one connected component: a *unit* that is removed
from every member layer at once. Units with the same members form a :class:`Group`. Anything the
rules cannot prove safe is left out and reported in :attr:`DependencyGraph.skipped` with the reason.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.core.model import eval_mode
from slimkit.core.transform import select
from slimkit.graph.ids import IdSpace
from slimkit.graph.layers import LayerPruner, ParamLayout, is_attention_block, pruner_for, register_pruner
from slimkit.graph.trace import DimTracer, Slot

__all__ = [
    "DependencyGraph",
    "Group",
    "LayerPruner",
    "ParamLayout",
    "Slot",
    "analyze",
    "first_sample",
    "map_batch",
    "is_attention_block",
    "pruner_for",
    "register_pruner",
]


@dataclasses.dataclass
class Group:
    """Units pruned together.

    Unit ``u`` removes ``index[k][offsets[k][u]:offsets[k][u + 1]]`` from ``slots[k]`` (a unit is
    usually one index per slot, but e.g. a flatten gives a conv channel a block of Linear inputs).
    """

    slots: list[Slot]
    index: list[np.ndarray]
    offsets: list[np.ndarray]
    labels: np.ndarray  # the component (see slimkit.graph.ids) of each unit
    align: int = 1  # kept unit counts must be multiples of this (e.g. experts read by ``grouped_mm``)

    def __len__(self) -> int:
        """The number of units."""
        return len(self.offsets[0]) - 1

    @property
    def name(self) -> str:
        producer = next(s for s in self.slots if s.producer)
        return f"{producer.module}.{producer.kind}"

    @property
    def producer(self) -> str:
        """The layer whose produced units the group removes (its first producing slot's)."""
        return next(s.module for s in self.slots if s.producer)

    def layout(self) -> list[tuple[str, str]]:
        """``(layer, slot kind)`` of every slot, the producer's first."""
        return [(s.module, s.kind) for s in sorted(self.slots, key=lambda s: not s.producer)]

    @property
    def modules(self) -> list[str]:
        return sorted({s.module for s in self.slots})

    def unit(self, u: int) -> list[np.ndarray]:
        """The indices unit ``u`` removes from each slot."""
        return [idx[off[u] : off[u + 1]] for idx, off in zip(self.index, self.offsets, strict=True)]

    def indices(self, units: np.ndarray) -> list[np.ndarray]:
        """The indices the given units remove from each slot (sorted)."""
        chosen = np.zeros(len(self), dtype=bool)
        chosen[units] = True
        return [
            np.sort(idx[np.repeat(chosen, np.diff(off))]) for idx, off in zip(self.index, self.offsets, strict=True)
        ]

    def __repr__(self) -> str:
        return f"Group({self.name}, units={len(self)}, members={[f'{s.module}.{s.kind}' for s in self.slots]})"


@dataclasses.dataclass
class DependencyGraph:
    """Prunable groups of a model plus the layers left alone and why."""

    groups: list[Group]
    skipped: dict[str, str]
    slots: dict[tuple[str, str], Slot]
    shared: list[list[tuple[str, str]]] = dataclasses.field(default_factory=list)  # tied parameters' owners
    # (layer, attribute, components): an integer attribute that counts the kept ones of these components
    bindings: list[tuple[str, str, np.ndarray]] = dataclasses.field(default_factory=list)
    output_shapes: list[tuple[int, ...]] = dataclasses.field(default_factory=list)  # on the first sample

    def group_of(self, module: str) -> Group | None:
        """The group in which ``module`` produces units (e.g. a conv's output channels)."""
        for g in self.groups:
            if any(s.module == module and s.producer for s in g.slots):
                return g
        return None


def map_batch(example: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` applied to every batched tensor of an example (a tensor, or a tuple / dict of them)."""
    if isinstance(example, torch.Tensor):
        return fn(example) if example.dim() else example
    if isinstance(example, dict):
        return {k: map_batch(v, fn) for k, v in example.items()}
    if isinstance(example, tuple | list):
        return type(example)(map_batch(v, fn) for v in example)
    return example


def first_sample(example: Any) -> Any:
    """The first sample of a batch: a tensor, or a tuple / dict of tensors (every tensor cut to one row)."""
    return map_batch(example, lambda t: t[:1])


def analyze(model: nn.Module, example: Any, protected: list[str] | None = None) -> DependencyGraph:
    """Find the coupled prunable dimensions of ``model`` by running it on ``example`` (a batch: a
    tensor, a tuple of positional inputs or a dict of keyword inputs).

    ``protected`` layers (names or ``re:`` patterns) keep all their dimensions.
    """
    space = IdSpace()
    tracer = DimTracer(model, space)
    with eval_mode(model):
        tracer.run(first_sample(example))
    shared = tracer.tie_shared_parameters()
    for name in select(model, protected) if protected else []:
        tracer.block_module(name, "protected by the user")
    labels = space.components()
    slots = list(tracer.slots.values())
    # every (slot, index) entry with its component, slot number and index, in slot order
    comp = labels[np.concatenate([s.ids.numpy() for s in slots])] if slots else np.zeros(0, dtype=np.int64)
    slot_no = np.repeat(np.arange(len(slots)), [len(s.ids) for s in slots])
    bounds = np.concatenate([[0], np.cumsum([len(s.ids) for s in slots])])

    reason_of = {int(labels[b]): why for b, why in space.reasons.items()}
    prunable = np.zeros(len(labels), dtype=bool)
    prunable[comp[np.array([s.producer for s in slots], dtype=bool)[slot_no]]] = True
    prunable[list(reason_of)] = False

    groups = [
        _group(slots, comp, bounds, members)
        for members in _by_signature(comp, slot_no, len(slots), np.flatnonzero(prunable))
    ]
    groups.sort(key=lambda g: min(int(s.ids[0]) for s in g.slots))
    align = np.ones(len(labels), dtype=np.int64)
    for ids, multiple in space.aligned:
        np.maximum.at(align, labels[ids], multiple)
    for g in groups:
        g.align = int(align[g.labels].max(initial=1))

    skipped: dict[str, str] = dict(tracer.unsupported)
    noted = {int(labels[i]): why for i, why in space.notes.items()}
    for g in groups:  # one indivisible unit: nothing can be removed
        if len(g) == 1 and any(len(idx) > 1 for idx in g.index):
            label = int(labels[int(g.slots[0].ids[g.index[0][0]])])
            skipped.setdefault(g.producer, noted.get(label, "its units cannot be split"))
    no_producer = "no layer produces this dimension (it is read from the model input)"
    for k, slot in enumerate(slots):
        comps = comp[bounds[k] : bounds[k + 1]]
        if slot.producer and not prunable[comps].any():
            skipped.setdefault(slot.module, reason_of.get(int(comps.min()), no_producer))
    seen = {s.module for s in slots}
    for name, m in model.named_modules():
        parents = itertools.accumulate(name.split(".")[:-1], lambda a, b: f"{a}.{b}")
        if (
            any(True for _ in m.parameters(recurse=False))
            and name not in seen
            and name not in skipped
            and not any(p in seen for p in parents)
        ):
            skipped[name] = "not reached by the analysis (it runs inside an operation the pruner cannot see into)"
    bindings = [(layer, attr, labels[ids.numpy()]) for layer, attr, ids in tracer.bindings]
    return DependencyGraph(
        groups=groups,
        skipped=skipped,
        slots=tracer.slots,
        shared=shared,
        bindings=bindings,
        output_shapes=tracer.output_shapes,
    )


def _by_signature(comp: np.ndarray, slot_no: np.ndarray, n_slots: int, prunable: np.ndarray) -> list[np.ndarray]:
    """Split the prunable components by signature (how many indices each slot gives them).

    Components with one signature are the units of one group. The signature is hashed to group
    in bulk; each component is then checked to have its group's signature exactly.
    """
    if not len(prunable):
        return []
    pairs, counts = np.unique(comp * n_slots + slot_no, return_counts=True)
    pair_comp, pair_slot = np.divmod(pairs, n_slots)
    weights = np.random.default_rng(0).integers(1, 2**63, size=n_slots, dtype=np.uint64) | np.uint64(1)
    hashes = np.zeros(int(comp.max(initial=-1)) + 1, dtype=np.uint64)
    np.add.at(hashes, pair_comp, weights[pair_slot] * (counts.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + 1))
    _, first, which = np.unique(hashes[prunable], return_index=True, return_inverse=True)
    # every component must have exactly the signature of its group's first one (else: a collision)
    starts = np.searchsorted(pair_comp, np.arange(len(hashes) + 1))
    ref, sizes = prunable[first][which], np.diff(starts)
    n = sizes[prunable]
    same = np.array_equal(n, sizes[ref])
    if same:
        step = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)  # position within each signature
        mine, theirs = np.repeat(starts[prunable], n) + step, np.repeat(starts[ref], n) + step
        same = np.array_equal(pair_slot[mine], pair_slot[theirs]) and np.array_equal(counts[mine], counts[theirs])
    if not same:
        raise RuntimeError("internal error: dimension groups collided; please report this model")
    order = np.argsort(which, kind="stable")
    return np.split(prunable[order], np.cumsum(np.bincount(which))[:-1])


def _group(slots: list[Slot], comp: np.ndarray, bounds: np.ndarray, members: np.ndarray) -> Group:
    """The group whose units are the components ``members``, ordered by their first index."""
    in_group = np.zeros(int(comp.max()) + 1, dtype=bool)
    in_group[members] = True
    entries = np.flatnonzero(in_group[comp])  # in slot order, indices ascending within a slot
    first = np.unique(comp[entries], return_index=True)[1]  # first entry: lowest slot, lowest index
    rank = np.zeros(len(in_group), dtype=np.int64)
    rank[comp[entries[first]][np.argsort(entries[first], kind="stable")]] = np.arange(len(members))
    used, index, offsets = [], [], []
    for k in np.unique(np.searchsorted(bounds, entries, side="right") - 1):
        positions = np.flatnonzero(in_group[comp[bounds[k] : bounds[k + 1]]])
        units = rank[comp[bounds[k] + positions]]
        order = np.argsort(units, kind="stable")
        used.append(slots[k])
        index.append(positions[order])
        offsets.append(np.concatenate([[0], np.cumsum(np.bincount(units, minlength=len(members)))]))
    unit_labels = np.empty(len(members), dtype=np.int64)
    unit_labels[rank[members]] = members
    return Group(slots=used, index=index, offsets=offsets, labels=unit_labels)
