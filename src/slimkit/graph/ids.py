"""Union-find over "dimension ids": every prunable index of every layer gets an integer id, and
ops that tie two indices together (a residual add, a conv reading a BatchNorm's output) record an
edge. Connected components are the units that must be pruned together."""

from __future__ import annotations

import numpy as np
import torch

UNTRACKED = -1  # values that carry no prunable dimension (inputs, constants, index tensors)
_DEDUPE_ABOVE = 4096  # edge lists longer than this are de-duplicated before they are kept
_LABEL_PASSES = 8  # label-propagation passes before a union-find is handed over to scipy


def collapse(*ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Views of same-shape tensors ``ts`` cut to length 1 along every dimension where all of them repeat
    (stride 0, as broadcast per-channel ids do over batch and space): the pairs they form are the same."""
    strides = [t.stride() for t in ts]
    cut = [n > 1 and all(s[d] == 0 for s in strides) for d, n in enumerate(ts[0].shape)]
    if not any(cut):
        return ts
    index = tuple(slice(0, 1) if c else slice(None) for c in cut)
    return tuple(t[index] for t in ts)


class IdSpace:
    def __init__(self) -> None:
        self.size = 0
        self._a: list[np.ndarray] = []
        self._b: list[np.ndarray] = []
        self.reasons: dict[int, str] = {}  # blocker id -> why its component cannot be pruned
        self.notes: dict[int, str] = {}  # an id -> why its component was made one indivisible unit
        self.aligned: list[tuple[np.ndarray, int]] = []  # (ids, multiple): kept counts must be multiples

    def alloc(self, n: int) -> torch.Tensor:
        ids = torch.arange(self.size, self.size + n)
        self.size += n
        return ids

    def unify(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Tie the ids of ``a`` and ``b`` position by position (they must have one shape)."""
        a, b = (t.reshape(-1).numpy() for t in collapse(a, b))
        keep = (a >= 0) & (b >= 0) & (a != b)
        a, b = a[keep], b[keep]
        if len(a) > _DEDUPE_ABOVE:
            pairs = (a << 32) | b
            # activations repeat each pair over every position: drop runs first (cheap), then duplicates
            pairs = np.unique(pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))])
            a, b = pairs >> 32, pairs & 0xFFFFFFFF
        if len(a):
            self._a.append(a)
            self._b.append(b)

    def block(self, ids: torch.Tensor, reason: str) -> None:
        """Mark every tracked id in ``ids`` (and so its whole component) as not prunable."""
        (ids,) = collapse(ids)
        tracked = torch.unique(ids[ids >= 0])
        if len(tracked):
            blocker = int(self.alloc(1)[0])
            self.reasons[blocker] = reason
            self.unify(tracked, torch.full_like(tracked, blocker))

    def align(self, ids: torch.Tensor, multiple: int) -> None:
        """The group holding the components of ``ids`` must keep a multiple of ``multiple`` units (a kernel
        that needs aligned strides)."""
        (ids,) = collapse(ids)
        tracked = torch.unique(ids[ids >= 0])
        if len(tracked):
            self.aligned.append((tracked.numpy(), multiple))

    def note(self, ids: torch.Tensor, reason: str) -> None:
        """Remember why the component of ``ids`` was tied into one unit (reported if that empties a group)."""
        (ids,) = collapse(ids)
        first = ids[ids >= 0]
        if len(first):
            self.notes.setdefault(int(first[0]), reason)

    def components(self) -> np.ndarray:
        """Component label of every id (ids with one label are one component)."""
        a = np.concatenate(self._a) if self._a else np.zeros(0, dtype=np.int64)
        b = np.concatenate(self._b) if self._b else np.zeros(0, dtype=np.int64)
        # min-label propagation with pointer jumping: a few passes on layer graphs, where ids are
        # allocated in data-flow order; scipy finishes the rare graph that needs more
        labels = np.arange(self.size)
        for _ in range(_LABEL_PASSES):
            smaller = np.minimum(labels[a], labels[b])
            new = labels.copy()
            np.minimum.at(new, a, smaller)
            np.minimum.at(new, b, smaller)
            new = new[new]
            if np.array_equal(new, labels):
                return labels
            labels = new
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(self.size, self.size))
        return connected_components(graph, directed=False)[1]
