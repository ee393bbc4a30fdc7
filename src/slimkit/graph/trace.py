"""Run a model once on a real example and propagate dimension ids through every torch operation.

The forward pass runs as written (Python shape and dtype checks simply run) under a
``TorchFunctionMode`` that sees each torch function and tensor method with its real arguments.
Every tensor is paired with an id tensor of its shape. Parameters are recognised by identity and
mapped to their layer's *slots* (``fc.out``, ``conv.in``, ``norm.feat``...) through the layer
registry (:mod:`slimkit.graph.layers`); data-movement ops (view, transpose, cat, indexing) are
replayed on the ids; element-wise ops tie their operands' ids; a dimension that must stay whole
(an attention head sliced by a rotary embedding, a head size fixed in a reshape) has its indices
tied into one unit; anything the rules cannot prove safe blocks the ids it touches, with a reason.
Layers whose pruner is a *leaf* (recurrent layers, slimkit's attention blocks) are not looked into.
"""

from __future__ import annotations

import dataclasses
import itertools
import traceback
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from slimkit.core.device import model_device, to_device
from slimkit.core.errors import SlimkitError, first_line
from slimkit.graph.ids import UNTRACKED, IdSpace, collapse
from slimkit.graph.layers import ConvPruner, is_attention_block, pruner_for

__all__ = ["DimTracer", "Slot", "call_model", "channel_ids", "flat_tensors", "is_attention_block", "untracked"]


@dataclasses.dataclass
class Slot:
    """One prunable dimension of one layer: ``ids[i]`` is the id of index ``i``."""

    module: str
    kind: str  # out, in, ch (depthwise in = out), feat (norms), dim (embedding), hidden, heads, weight.0...
    size: int
    ids: torch.Tensor
    producer: bool  # removing an index here removes a produced feature (not just a read one)


_POINTWISE = set(
    "relu relu_ relu6 gelu silu sigmoid tanh softmax log_softmax dropout dropout1d dropout2d dropout3d "
    "alpha_dropout feature_alpha_dropout leaky_relu elu selu celu hardswish hardsigmoid hardtanh mish "
    "softplus softsign exp log neg abs sqrt rsqrt square reciprocal sign erf sin cos clamp clamp_ "
    "clamp_min clamp_max clip float half double bfloat16 to type type_as detach contiguous clone "
    "logical_not bool long int nan_to_num __neg__ __invert__ __abs__ tanh_ sigmoid_ exp_ requires_grad_ "
    "cpu cuda silu_ gelu_ normalize sqrt_ rsqrt_ threshold softmin log_sigmoid logsigmoid tanhshrink "
    "hardshrink softshrink round floor ceil trunc isnan isinf isfinite erfc expm1 log1p".split()
)
_BINARY = set(
    "add sub mul div true_divide floor_divide maximum minimum where eq ne gt lt ge le logical_and "
    "logical_or pow masked_fill masked_fill_ add_ sub_ mul_ div_ fmod remainder lerp addcmul addcdiv "
    "copysign atan2 bitwise_and bitwise_or rsub __add__ __radd__ __iadd__ __sub__ __rsub__ __isub__ "
    "__mul__ __rmul__ __imul__ __truediv__ __rtruediv__ __itruediv__ __floordiv__ __rfloordiv__ __pow__ "
    "__rpow__ __and__ __or__ __xor__ __eq__ __ne__ __gt__ __lt__ __ge__ __le__ __mod__ __iand__ __ior__".split()
)
_MOVES = set(
    "flatten transpose swapaxes swapdims permute unsqueeze squeeze expand expand_as t view reshape "
    "view_as reshape_as unflatten movedim moveaxis cat concat concatenate stack T mT flip roll".split()
)
_REDUCE = set("sum mean amax amin any all norm logsumexp std var prod max min nansum nanmean".split())
_PERMUTES = {"T", "t", "mT", "transpose", "swapaxes", "swapdims", "permute", "movedim", "moveaxis"}
GROUPED_MM_ALIGN = 8  # units: ``grouped_mm`` strides are whole 16 bytes (8 16-bit or 4 fp32 values)
_SPLITS = {"split", "chunk", "unbind", "tensor_split", "split_with_sizes"}
_INDEXING = {"__getitem__", "narrow", "select", "index_select", "gather", "take_along_dim"}
_PER_CHANNEL = set(
    "avg_pool1d avg_pool2d avg_pool3d max_pool1d max_pool2d max_pool3d adaptive_avg_pool1d "
    "adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d interpolate upsample "
    "lp_pool2d max_pool1d_with_indices max_pool2d_with_indices".split()
)
_UNTRACKED_RESULTS = set(
    "size dim numel shape dtype device is_floating_point is_contiguous ndim ndimension arange zeros ones "
    "full empty eye tensor as_tensor zeros_like ones_like full_like empty_like rand randn randint "
    "rand_like randn_like triu_indices tril_indices linspace requires_grad is_leaf grad_fn data_ptr "
    "element_size stride storage_offset item tolist __len__ __bool__ __int__ __float__ __index__ "
    "__format__ __repr__ __hash__ get_device is_cuda layout names is_sparse is_quantized is_meta "
    "is_nested __array__ numpy __reduce_ex__ __deepcopy__ has_names is_complex _version output_nr "
    "is_inference argmax argmin count_nonzero __contains__ __iter__ untyped_storage get_default_dtype is_grad_enabled "
    "is_autocast_enabled triu tril new_zeros new_ones new_full new_empty new_tensor".split()
)


def _name(func: Any) -> str:
    name = getattr(func, "__name__", None)
    if name == "__get__":  # a property of Tensor (shape, T, mT, dtype...)
        name = getattr(getattr(func, "__self__", None), "__name__", "__get__")
    return name or str(func)


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def untracked(value: Any) -> Any:
    """Ids for a value that carries no prunable dimension."""
    if _is_tensor(value):
        return torch.full((), UNTRACKED, dtype=torch.long).expand(value.shape)
    if isinstance(value, tuple | list) and not isinstance(value, torch.Size):
        return tuple(untracked(v) for v in value)
    return None


def channel_ids(ids: torch.Tensor, dim: int, shape: torch.Size) -> torch.Tensor:
    """Broadcast per-channel ``ids`` (C,) along ``dim`` of a tensor of ``shape``."""
    view = [1] * len(shape)
    view[dim] = -1
    return ids.view(view).expand(shape)


def varies(ids: torch.Tensor, dim: int) -> bool:
    """Whether ``ids`` holds different ids along ``dim`` (i.e. ``dim`` is a feature dimension)."""
    if ids.shape[dim] <= 1 or ids.stride(dim) == 0:
        return False
    first = ids.narrow(dim, 0, 1)
    return bool(((ids != first) & (ids >= 0)).any())


def tracked(ids: Any) -> bool:
    return _is_tensor(ids) and bool((collapse(ids)[0] >= 0).any())


class _Size(int):
    """A size read from a tensor (``x.size(-1)``, ``x.shape``): it follows pruning, unlike a literal."""


def _tag_sizes(value: Any) -> Any:
    if isinstance(value, torch.Size):
        return torch.Size(_Size(v) for v in value)
    return _Size(value) if isinstance(value, int) and not isinstance(value, bool) else value


class _Mode(TorchFunctionMode):
    def __init__(self, tracer: DimTracer) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        value = func(*args, **kwargs)
        tracer = self.tracer
        if tracer.leaf_depth == 0:
            if _name(func) in ("size", "shape"):
                return _tag_sizes(value)
            try:
                ids = tracer.propagate(func, args, kwargs, value)
            except Exception as exc:  # noqa: BLE001  (a rule that cannot follow an odd call: block, never crash)
                ids = exc
            if not _fits(ids, value):
                where = f"{_name(func)} in {tracer.stack[-1] if tracer.stack else 'the model'}"
                tracer.block_all(args, kwargs, f"slimkit could not follow {where}")
                ids = untracked(value)
            tracer.remember(value, ids)
        return value


class DimTracer:
    """Runs the model once on an example, building slots and id edges."""

    def __init__(self, model: nn.Module, space: IdSpace) -> None:
        self.model = model
        self.space = space
        self.slots: dict[tuple[str, str], Slot] = {}
        self.unsupported: dict[str, str] = {}  # layer -> why it was left alone
        self.modules = dict(model.named_modules())
        self.owner: dict[int, tuple[str, str]] = {}  # id(parameter or buffer) -> (layer, attribute)
        for name, m in model.named_modules(remove_duplicate=False):
            for attr, t in itertools.chain(m.named_parameters(recurse=False), m.named_buffers(recurse=False)):
                self.owner.setdefault(id(t), (name, attr))
        self._ids: dict[int, tuple[Any, torch.Tensor]] = {}  # id(tensor) -> (weak reference, ids)
        self.pruners = {name: pruner_for(m) for name, m in self.modules.items()}
        self.stack: list[str] = []  # layers running, innermost last
        self._leaf_inputs: tuple = ((), [])
        self.bindings: list[tuple[str, str, torch.Tensor]] = []  # (layer, attribute, ids its value counts)
        # id(a view of a parameter: w.T, experts[e]) -> (weak reference, parameter, its dim of each view dim)
        self.views: dict[int, tuple[Any, nn.Parameter, tuple[int | None, ...]]] = {}
        self.leaf_depth = 0
        self.output_shapes: list[tuple[int, ...]] = []

    # ------------------------------------------------------------------ slots
    def slot(self, module: str, kind: str, size: int, producer: bool) -> Slot:
        key = (module, kind)
        if key not in self.slots:
            self.slots[key] = Slot(module, kind, size, self.space.alloc(size), producer)
        elif producer:
            self.slots[key].producer = True
        return self.slots[key]

    def owner_of(self, t: torch.Tensor) -> tuple[str, str] | None:
        """(layer, attribute) of a parameter or buffer: the running layer's own if it holds ``t``
        (a tied output layer uses the embedding's weight as its own), else its first owner."""
        if self.stack:
            running = self.modules[self.stack[-1]]
            for attr, own in itertools.chain(running._parameters.items(), running._buffers.items()):
                if own is t:
                    return self.stack[-1], attr
        return self.owner.get(id(t))

    def weight_view(self, x: Any) -> tuple[nn.Parameter, tuple[int | None, ...]] | None:
        """``(parameter, dims)`` when ``x`` is an owned parameter or a view of one (``w.T``, the weights of
        one expert ``w[e]``, of every token's expert ``w[ids]``); ``dims[d]`` is the parameter dimension
        that dimension ``d`` of ``x`` indexes (None: a new one)."""
        if isinstance(x, nn.Parameter) and self.owner_of(x) is not None:
            return x, tuple(range(x.dim()))
        entry = self.views.get(id(x))
        return (entry[1], entry[2]) if entry is not None and entry[0]() is x else None

    def remember_view(self, value: Any, source: Any, dims: list[int | None]) -> None:
        """``value`` views the (viewed) parameter ``source``: its dimension ``d`` is ``source``'s ``dims[d]``."""
        base = self.weight_view(source)
        if base is not None and _is_tensor(value) and len(dims) == value.dim():
            key = id(value)
            mapped = tuple(None if d is None else base[1][d] for d in dims)
            self.views[key] = (weakref.ref(value, lambda _, k=key: self.views.pop(k, None)), base[0], mapped)

    def param_slot(self, t: torch.Tensor, dim: int, producer: bool) -> Slot | None:
        """The slot that dimension ``dim`` of parameter / buffer ``t`` indexes (None: not prunable)."""
        owner = self.owner_of(t)
        if owner is None:
            return None
        module, attr = owner
        kind = self.pruners[module].kind(self.modules[module], attr, dim)
        return None if kind is None else self.slot(module, kind, t.shape[dim], producer)

    def block_module(self, name: str, reason: str) -> None:
        for (mod, _), slot in self.slots.items():
            if mod == name:
                self.space.block(slot.ids, reason)

    def tie_shared_parameters(self) -> list[list[tuple[str, str]]]:
        """Parameters held by several layers (tied weights, a layer registered twice): the slots that
        index one dimension of the shared tensor are tied; a dimension only some of them can change
        is blocked. Returns the owners of each shared parameter as ``[(module, attribute), ...]``."""
        owners: dict[int, list[tuple[str, str]]] = {}
        for module_name, m in self.model.named_modules(remove_duplicate=False):
            for attr, p in m.named_parameters(recurse=False):
                owners.setdefault(id(p), []).append((module_name, attr))
        shared = [o for o in owners.values() if len(o) > 1]
        for group in shared:
            names = " and ".join(f"{m}.{a}" for m, a in group)
            p = self.model.get_submodule(group[0][0]).get_parameter(group[0][1])
            for dim in range(p.dim()):
                kinds = []
                for m, a in group:
                    layer = self.modules.get(m) or self.model.get_submodule(m)
                    kinds.append(pruner_for(layer).kind(layer, a, dim))
                slots = [self.slots.get((m, k)) if k else None for (m, _), k in zip(group, kinds, strict=True)]
                if all(slots):
                    for other in slots[1:]:
                        self.space.unify(other.ids, slots[0].ids)
                else:
                    for slot in filter(None, slots):
                        self.space.block(slot.ids, f"a dimension of a shared parameter ({names}) is fixed")
        return shared

    # ------------------------------------------------------------------ ids of values
    def ids_of(self, x: Any) -> Any:
        """Ids of a value: tensors from the table, parameters from their slots, containers element-wise."""
        if _is_tensor(x):
            entry = self._ids.get(id(x))
            if entry is not None and entry[0]() is x:
                return entry[1]
            if isinstance(x, nn.Parameter) and id(x) in self.owner:
                return self._param_ids(x)
            return untracked(x)
        if isinstance(x, tuple | list) and not isinstance(x, torch.Size):
            return [self.ids_of(v) for v in x]
        return x

    def _param_ids(self, p: torch.Tensor) -> torch.Tensor:
        """Ids of a parameter used as a value (a layer scale, a class token): its slot along its last
        dimension of size > 1 (the channel dimension of per-channel and channels-last parameters)."""
        dims = [d for d in range(p.dim()) if p.shape[d] > 1]
        slot = self.param_slot(p, dims[-1], False) if dims else None
        return untracked(p) if slot is None else channel_ids(slot.ids, dims[-1], p.shape)

    def remember(self, value: Any, ids: Any) -> None:
        if _is_tensor(value):
            if _is_tensor(ids) and ids.shape == value.shape:
                key = id(value)
                self._ids[key] = (weakref.ref(value, lambda _, k=key: self._ids.pop(k, None)), ids)
        elif isinstance(value, tuple | list) and isinstance(ids, tuple | list) and len(ids) == len(value):
            for v, i in zip(value, ids, strict=True):
                self.remember(v, i)

    # ------------------------------------------------------------------ run
    def run(self, example: Any) -> None:
        handles = []
        for name, m in self.modules.items():
            handles.append(m.register_forward_pre_hook(self._enter(name), with_kwargs=True))
            handles.append(m.register_forward_hook(self._leave(name), with_kwargs=True, always_call=True))
        try:
            with torch.no_grad(), _Mode(self):
                out = call_model(self.model, example)
        except SlimkitError:
            raise
        except Exception as exc:  # the user's forward raised on the example: say where
            raise SlimkitError(
                f"cannot analyse {type(self.model).__name__}: its forward failed on the example input at "
                f"{_user_frame(exc)}: {first_line(exc)}"
            ) from None
        finally:
            for h in handles:
                h.remove()
        self.output_shapes = [tuple(t.shape) for t in flat_tensors(out)]
        for ids in flat_tensors(self.ids_of(flat_tensors(out))):
            self.space.block(ids, "feeds the model output (its size is part of the model's interface)")

    def _enter(self, name: str) -> Any:
        def hook(m: nn.Module, args: tuple, kwargs: dict) -> None:
            self.stack.append(name)
            if self.pruners[name].leaf:
                self.leaf_depth += 1
                if self.leaf_depth == 1:
                    self._leaf_inputs = (args, [self.ids_of(a) for a in args])

        return hook

    def _leave(self, name: str) -> Any:
        def hook(m: nn.Module, args: tuple, kwargs: dict, value: Any) -> None:
            self.stack.pop()
            if not self.pruners[name].leaf:
                return
            self.leaf_depth -= 1
            if self.leaf_depth == 0 and value is not None:
                inputs, ids = self._leaf_inputs
                self.remember(value, self.pruners[name].trace(self, name, m, inputs, tuple(ids), value))

        return hook

    # ------------------------------------------------------------------ rules
    def propagate(self, func: Any, args: tuple, kwargs: dict, value: Any) -> Any:
        name = _name(func)
        if name in _UNTRACKED_RESULTS or not flat_tensors(value):
            return untracked(value)
        where = f"{name} in {self.stack[-1] if self.stack else 'the model'}"
        rule = _RULES.get(name)
        if rule is not None:
            return rule(self, name, args, kwargs, value, where)
        if name in _POINTWISE:
            ids = self.ids_of(args[0]) if args else None
            return (
                ids if _is_tensor(ids) and ids.shape == value.shape else self._elementwise(args, kwargs, value, where)
            )
        if name in _BINARY:
            return self._elementwise(args, kwargs, value, where)
        if name in _MOVES:
            return self._move(name, func, args, kwargs, value, where)
        if name in _REDUCE:
            return self._reduce(args, kwargs, value, where)
        if name in _SPLITS:
            return self._split(func, args, kwargs, value, where)
        if name in _INDEXING:
            return self._index(func, name, args, kwargs, value, where)
        if name in _PER_CHANNEL:
            return self._per_channel(args[0], value, where)
        self.block_all(args, kwargs, f"used by an operation slimkit cannot analyse: {where}")
        return untracked(value)

    def block_all(self, args: Any, kwargs: dict, reason: str) -> None:
        """Block every tensor argument of a call (and report the layers whose parameters it reads)."""
        for t in flat_tensors(self.ids_of([*args, *kwargs.values()])):
            self.space.block(t, reason)
        for t in flat_tensors([*args, *kwargs.values()]):
            owner = self.owner.get(id(t))
            if owner is not None:
                self.unsupported.setdefault(owner[0], reason)

    def keep_whole(self, ids: torch.Tensor, dim: int, reason: str) -> torch.Tensor:
        """Tie every index along ``dim`` (for each position of the other dimensions) into one unit:
        the dimension may only be removed entirely. Returns ids with the representative along ``dim``."""
        first = ids.narrow(dim, 0, 1).expand(ids.shape)
        self.space.unify(ids, first)
        self.space.note(first, reason)
        return first

    def _elementwise(self, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
        if not _is_tensor(value):
            return untracked(value)
        shape = value.shape
        operands = [(a, self.ids_of(a)) for a in [*args, *kwargs.values()] if _is_tensor(a) and a.dim() > 0]
        ids = [i.expand(shape) if tracked(i) else None for _, i in operands]
        ids = self.drop_spread([a.shape for a, _ in operands], ids, where)
        for k, (a, _) in enumerate(operands):
            lead = len(shape) - a.dim()
            for d in range(a.dim()):
                if a.shape[d] <= 1:
                    continue
                for j, t in enumerate(ids):
                    mine = ids[k]
                    # the other operand has a feature dimension here that this one does not index by
                    # slot: the dimension must stay whole (e.g. a rotary table over a head's dims)
                    if (
                        t is not None
                        and j != k
                        and varies(t, lead + d)
                        and (mine is None or not varies(mine, lead + d))
                    ):
                        ids[j] = self.keep_whole(
                            t, lead + d, f"combined with a fixed tensor of shape {tuple(a.shape)}: {where}"
                        )
        live = [i for i in ids if i is not None]
        if not live:
            return untracked(value)
        out, *rest = collapse(*live)  # per-channel ids stay per-channel (broadcast) through the op
        for t in rest:
            self.space.unify(out, t)
            out = torch.maximum(out, t)
        return out.expand(shape)

    def drop_spread(self, shapes: list[torch.Size], ids: list[torch.Tensor | None], where: str) -> list:
        """``ids`` (expanded to one output shape) of operands of the given ``shapes``, without those
        broadcast over another one's features: a gate of shape (N, 1) scaling (N, C), a
        per-head-dimension norm weight (D,) over every head, has one id for many features and must not
        tie them together (its own dimensions are blocked). When each operand is broadcast over the
        other's features (stream weights (N, 1) times a hidden state (1, D)), the richer one stays."""
        out = next((i.shape for i in ids if i is not None), None)
        if out is None:
            return ids

        def spread(k: int) -> bool:
            lead = len(out) - len(shapes[k])
            return any(
                (e < lead or shapes[k][e - lead] == 1)
                and any(t is not None and j != k and varies(t, e) for j, t in enumerate(ids))
                for e in range(len(out))
                if out[e] > 1
            )

        alive = [k for k, i in enumerate(ids) if i is not None]
        drop = {k for k in alive if spread(k)}
        if drop and len(drop) == len(alive):
            drop.discard(max(alive, key=lambda k: len(torch.unique(collapse(ids[k])[0]))))
        for k in drop:
            self.space.block(ids[k], f"broadcast over the features of another operand: {where}")
        return [None if k in drop else i for k, i in enumerate(ids)]

    def _move(self, name: str, func: Any, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
        if not _is_tensor(value):
            return untracked(value)
        src = self.ids_of(args[0])
        if name in ("view", "reshape") and _is_tensor(src):
            sizes = args[1] if len(args) == 2 and isinstance(args[1], tuple | list) else args[1:]
            sizes = kwargs.get("shape", sizes)
            return self._reshape(src, list(sizes), value, where)
        if name in ("view_as", "reshape_as", "flatten", "unflatten"):  # sizes follow the input / the donor
            return self._reshape(src, None, value, where)
        if name == "roll":
            dims = kwargs.get("dims", args[2] if len(args) > 2 else None)
            for d in [dims] if isinstance(dims, int) else list(dims or range(src.dim())):
                if varies(src, d):
                    self.space.block(src, f"rolled along a feature dimension: {where}")
        if name in _PERMUTES and self.weight_view(args[0]) is not None:  # x @ w.T reads w like F.linear does
            # replay the op on a tensor whose sizes name its dimensions
            probe = func(torch.empty(tuple(range(2, 2 + src.dim())), device="meta"), *args[1:], **kwargs)
            self.remember_view(value, args[0], [n - 2 for n in probe.shape])
        if name in ("squeeze", "unsqueeze") and self.weight_view(args[0]) is not None:  # conv(x, w.squeeze(1)...)
            self.remember_view(value, args[0], _squeeze_dims(args[0].shape, value.shape))
        if name == "T":
            return src.permute(*reversed(range(src.dim())))
        if name == "mT":
            return src.mT
        # tensors (and tensor lists, for cat / stack) are replaced by their ids and the op replayed
        id_args = [self.ids_of(a) if (_is_tensor(a) or _is_tensor_list(a)) else a for a in args]
        if name == "expand_as":
            id_args[1] = args[1]
        if name in ("view", "reshape"):
            func = torch.Tensor.reshape
        out = func(*id_args, **kwargs)
        return out if _is_tensor(out) and out.shape == value.shape else untracked(value)

    def _reshape(self, src: torch.Tensor, sizes: list[int] | None, value: Any, where: str) -> Any:
        """A reshape keeps working after pruning when every feature dimension it produces is either
        written as -1 (its size follows the input) or the inner factor of a split whose outer factor
        is -1 (a head size): those inner factors are kept whole."""
        out = src.reshape(value.shape)
        varying_in = [d for d in range(src.dim()) if varies(src, d)]
        if not varying_in:
            return out
        pieces = _split_pieces(src, value.shape)
        for d in range(out.dim()):
            if not varies(out, d):
                continue
            if pieces.get(d) == "inner":  # the inner factor of a split feature dimension: keep each slice whole
                out = self.keep_whole(out, d, f"a fixed size in a reshape to {list(value.shape)}: {where}")
                continue
            if sizes is None or d >= len(sizes) or sizes[d] == -1 or isinstance(sizes[d], _Size):
                continue  # the size follows the input
            if self._sized_by_layer(out, d):
                continue
            # a literal size held by an attribute of the running layer (num_heads, hidden_size) is updated
            prefer = ("head",) if pieces.get(d) == "outer" else ("size", "dim")
            if not self._bind_size(sizes[d], prefer, _along(out, d)):
                self.space.block(out, f"reshaped to a fixed size {list(value.shape)}: {where}")
                return out
        return out

    def _sized_by_layer(self, ids: torch.Tensor, dim: int) -> bool:
        """Whether dimension ``dim`` of ``ids`` is exactly a slot of the running layer whose size one
        of its attributes holds (GPT-2's ``Conv1D`` reshapes its output to ``self.nf``): resizing
        the layer updates that attribute."""
        if not self.stack:
            return False
        layer = self.stack[-1]
        along = _along(ids, dim)
        size_of = getattr(self.pruners[layer], "size_of", {})
        for kind in size_of.values():
            slot = self.slots.get((layer, kind))
            if slot is not None and slot.size == len(along) and torch.equal(slot.ids, along):
                return True
        return False

    def _index(self, func: Any, name: str, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
        src = args[0]
        ids = self.ids_of(src)
        if not _is_tensor(src):
            return ids[args[1]] if isinstance(ids, tuple | list) and name == "__getitem__" else untracked(value)
        if name == "__getitem__":
            index = args[1]
            items = list(index) if isinstance(index, tuple) else [index]
            self._index_view(src, items, value)
            if any(_is_tensor(i) and i.dtype == torch.bool and i.dim() > 1 for i in items):
                self.block_all(args, kwargs, f"masked along several dimensions: {where}")
                return untracked(value)
            if Ellipsis in items:
                at = items.index(Ellipsis)
                explicit = sum(1 for i in items if i is not None and i is not Ellipsis)
                items[at : at + 1] = [slice(None)] * (src.dim() - explicit)
            dim = 0
            for item in items:
                if item is None:
                    continue
                full = isinstance(item, slice) and item == slice(None)
                if not full and dim < src.dim() and varies(ids, dim):
                    ids = self.keep_whole(ids, dim, f"indexed along a feature dimension: {where}")
                dim += 1
            out = ids[tuple(_ids_index(i) for i in items)] if isinstance(index, tuple) else ids[_ids_index(items[0])]
            return out if out.shape == value.shape else untracked(value)
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        if isinstance(dim, int) and varies(ids, dim):
            ids = self.keep_whole(ids, dim, f"indexed along a feature dimension: {where}")
        try:
            out = func(ids, *args[1:], **kwargs)
        except (RuntimeError, TypeError, IndexError):
            return untracked(value)
        return out if _is_tensor(out) and out.shape == value.shape else untracked(value)

    def _index_view(self, src: torch.Tensor, items: list, value: torch.Tensor) -> None:
        """``w[e]`` / ``w[ids]`` / ``w[e, :, :]`` of a parameter: the weights of one expert or of each token's."""
        if self.weight_view(src) is None:
            return
        dims: list[int | None] = []
        for d, item in enumerate(items):
            if isinstance(item, int) or (_is_tensor(item) and item.dim() == 0 and not item.is_floating_point()):
                continue  # one index: the dimension is gone
            if _is_tensor(item) and item.dim() == 1 and item.dtype == torch.long and d == 0:
                dims.append(None)  # a gathered leading dimension
            elif isinstance(item, slice) and item == slice(None):
                dims.append(d)
            else:
                return
        self.remember_view(value, src, [*dims, *range(len(items), src.dim())])

    def _split(self, func: Any, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
        ids = self.ids_of(args[0])
        name = _name(func)
        at = 1 if name == "unbind" else 2
        dim = kwargs.get("dim", args[at] if len(args) > at else 0)
        if not isinstance(dim, int) or not _is_tensor(ids):
            return untracked(value)
        dim %= ids.dim()
        if varies(ids, dim):
            sizes = [v.shape[dim] for v in value] if name != "unbind" else []
            size = args[1] if len(args) > 1 else kwargs.get("split_size", kwargs.get("split_size_or_sections"))
            # a fixed piece size held by an attribute of the running layer (GPT-2's split_size) is updated
            equal = len(set(sizes)) == 1
            first = _along(ids.narrow(dim, 0, sizes[0]), dim) if equal else None
            if equal and (
                name == "chunk"
                or isinstance(size, _Size)
                or (name == "split" and self._bind_size(size, ("split", "chunk"), first))
            ):
                # equal pieces stay equal when each unit removes the same positions from every piece
                parts = ids.unflatten(dim, (len(sizes), sizes[0]))
                self.space.unify(parts, parts.narrow(dim, 0, 1).expand(parts.shape))
            else:
                self.space.block(ids, f"split by fixed sizes along a feature dimension: {where}")
        try:
            return tuple(func(ids, *args[1:], **kwargs))
        except (RuntimeError, TypeError):
            return untracked(value)

    def _bind_size(self, size: int, prefer: tuple[str, ...], ids: torch.Tensor) -> bool:
        """Record that the integer attribute of the running layer holding ``size`` counts the kept ``ids``
        (when several hold it: those whose name contains a word of ``prefer``, e.g. ``num_heads`` and
        ``num_key_value_heads`` of multi-head attention). False if no attribute holds it."""
        if not self.stack or type(size) is not int:
            return False
        layer = self.stack[-1]
        names = [a for a, v in vars(self.modules[layer]).items() if type(v) is int and v == size and a[0] != "_"]
        if len(names) > 1:
            names = [a for a in names if any(word in a for word in prefer)]
        self.bindings.extend((layer, name, ids) for name in names)
        return bool(names)

    def _reduce(self, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
        if len(args) > 1 and _is_tensor(args[1]):  # torch.max(a, b): element-wise
            return self._elementwise(args, kwargs, value, where)
        ids = self.ids_of(args[0])
        dims = kwargs.get("dim", args[1] if len(args) > 1 and not isinstance(args[1], bool) else None)
        if dims is None or not _is_tensor(ids) or not ids.dim():
            return untracked(value)
        dims = [dims] if isinstance(dims, int) else list(dims)
        keep = kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False)
        lo, hi = ids, ids
        for d in sorted((d % ids.dim() for d in dims), reverse=True):
            lo, hi = lo.amin(dim=d, keepdim=True), hi.amax(dim=d, keepdim=True)
        out = torch.where(lo == hi, lo, torch.full_like(lo, UNTRACKED))
        if not keep:
            for d in sorted((d % ids.dim() for d in dims), reverse=True):
                out = out.squeeze(d)
        values = value if _is_tensor(value) else value[0]
        out = out.reshape(values.shape)
        return out if _is_tensor(value) else (out, untracked(value[1]))

    def _per_channel(self, x: torch.Tensor, value: Any, where: str) -> Any:
        """A spatial op on (N, C, ...) that reads channel c for output channel c (pooling, resizing)."""
        ids = self.ids_of(x)
        out = value[0] if isinstance(value, tuple) else value
        if not tracked(ids):
            return untracked(value)
        per_channel = ids.flatten(2) if ids.dim() > 2 else ids.unsqueeze(-1)
        lo, hi = per_channel.amin(2), per_channel.amax(2)
        if bool((lo != hi).any()) or ids.dim() < 2:
            self.space.block(ids, f"mixes channels: {where}")
            return untracked(value)
        ch = lo.view(*lo.shape, *([1] * (out.dim() - 2))).expand(out.shape)
        return (ch, untracked(value[1])) if isinstance(value, tuple) else ch

    def matmul_ids(self, a: torch.Tensor, b: torch.Tensor, where: str) -> torch.Tensor:
        """``a @ b`` on ids: column k of ``a`` pairs with row k of ``b``; the output keeps the ids of
        ``a``'s rows and ``b``'s columns where they do not vary along k (e.g. per-head ids)."""
        if a.dim() < 2 or b.dim() < 2:
            for t in (a, b):
                if tracked(t):
                    self.space.block(t, f"vector product: {where}")
            return untracked(torch.empty(0))
        a_k, b_k = a.unsqueeze(-1), b.unsqueeze(-3)  # (..., n, k, 1), (..., 1, k, m)
        shape = torch.broadcast_shapes(a_k.shape, b_k.shape)
        # ids that vary along a's rows / b's columns only are the output's features, not the contracted
        # ones; ids that vary along both (a stack of embedding tables times its transpose: pairwise dot
        # products) are contracted: every row's k-th feature meets every column's, so they are one unit
        a_k = a if not varies(a, -2) or varies(a, -1) else untracked(a)
        b_k = b if not varies(b, -1) or varies(b, -2) else untracked(b)
        if varies(a, -1) and not tracked(b_k):
            a_k = a = self.keep_whole(a, -1, f"multiplied with a fixed tensor: {where}")
        if varies(b, -2) and not tracked(a_k):
            b_k = b = self.keep_whole(b, -2, f"multiplied with a fixed tensor: {where}")
        self.space.unify(*collapse(a_k.unsqueeze(-1).expand(shape), b_k.unsqueeze(-3).expand(shape)))
        rows = a[..., :, :1] if not varies(a, -1) else torch.full_like(a[..., :, :1], UNTRACKED)
        cols = b[..., :1, :] if not varies(b, -2) else torch.full_like(b[..., :1, :], UNTRACKED)
        out_shape = (*shape[:-3], shape[-3], shape[-1])
        if not (tracked(rows) and tracked(cols)):
            return torch.maximum(rows.expand(out_shape), cols.expand(out_shape))
        kept = self.drop_spread([rows.shape, cols.shape], [rows.expand(out_shape), cols.expand(out_shape)], where)
        live = [i for i in kept if i is not None]
        if len(live) == 2:  # per-head ids on both sides: the same heads
            self.space.unify(*collapse(*live))
        return torch.maximum(*live) if len(live) == 2 else live[0]


# ---------------------------------------------------------------------- rules with layers
def _bias(t: DimTracer, b: Any, slot_out: Any, where: str) -> None:
    """A bias ``b`` (if any) is pruned with the outputs of ``slot_out``; one that is not a parameter pins them."""
    if b is None:
        return
    slot_b = t.param_slot(b, 0, False) if isinstance(b, nn.Parameter) else None
    if slot_b is None:
        t.space.block(slot_out.ids, f"a bias that is not a parameter: {where}")
    else:
        t.space.unify(slot_b.ids, slot_out.ids)


def _weight_rule(
    t: DimTracer, x: Any, w: Any, b: Any, value: torch.Tensor, out_dim: int, in_dim: int, where: str, out_at: int = -1
) -> Any:
    """``x @ w`` (+ b): dimension ``in_dim`` of ``w`` (a parameter or a view of one) reads x's last
    dimension, ``out_dim`` makes the output's; ``out_at=-2``: ``w @ x``, reading x's dimension -2."""
    x_ids = t.ids_of(x)
    view = t.weight_view(w)
    if view is None:
        t.block_all((x, w, b), {}, f"a weight computed in the forward: {where}")
        return untracked(value)
    p, dims = view
    slot_in = t.param_slot(p, dims[in_dim], False) if dims[in_dim] is not None else None
    slot_out = t.param_slot(p, dims[out_dim], True) if dims[out_dim] is not None else None
    x_dim = -1 if out_at == -1 else -2  # the dimension of x that the weight's input dimension reads
    if slot_in is not None:
        t.space.unify(x_ids, channel_ids(slot_in.ids, x_dim, x_ids.shape))
    elif tracked(x_ids):
        t.space.block(x_ids, f"read by a weight whose input dimension is fixed: {where}")
    if slot_out is None:
        return untracked(value)
    _bias(t, b, slot_out, where)
    return channel_ids(slot_out.ids, out_at, value.shape)


def _linear(t: DimTracer, name: str, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
    x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
    b = args[2] if len(args) > 2 else kwargs.get("bias")
    return _weight_rule(t, x, w, b, value, 0, 1, where)


def _addmm(t: DimTracer, name: str, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
    b, x, w = args[:3]
    if t.owner_of(w) is None or kwargs.get("beta", 1) != 1 or kwargs.get("alpha", 1) != 1:
        t.block_all(args, kwargs, f"used by an operation slimkit cannot analyse: {where}")
        return untracked(value)
    return _weight_rule(t, x, w, b, value, 1, 0, where)


def _matmul(t: DimTracer, name: str, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
    a, b = (args[1], args[0]) if name == "__rmatmul__" else (args[0], args[1])
    if t.weight_view(b) is not None and b.dim() >= 2:  # x @ w, x @ w.T, bmm(x, experts[ids])
        return _weight_rule(t, a, b, None, value, -1, -2, where)
    if t.weight_view(a) is not None and a.dim() >= 2 and b.dim() >= 2:  # bmm(experts[ids], x)
        return _weight_rule(t, b, a, None, value, -2, -1, where, out_at=-2)
    a_ids, b_ids = t.ids_of(a), t.ids_of(b)
    if a.dim() == 1 or b.dim() == 1:
        t.matmul_ids(a_ids, b_ids, where)
        return untracked(value)
    out = t.matmul_ids(a_ids, b_ids, where)
    return out.expand(value.shape) if out.dim() and out.shape != value.shape else out


def _squeeze_dims(before: torch.Size, after: torch.Size) -> list[int | None]:
    """For each dimension of a squeezed / unsqueezed tensor of shape ``after``, the dimension of the
    ``before`` tensor it is (None: a new size-1 one), matching sizes from the left."""
    dims: list[int | None] = []
    k = 0
    for n in after:
        while k < len(before) and before[k] == 1 and n != 1:
            k += 1  # a squeezed size-1 dimension
        if len(after) > len(before) and n == 1 and (k >= len(before) or before[k] != 1):
            dims.append(None)  # an unsqueezed one
        else:
            dims.append(k)
            k += 1
    return dims


def _grouped_mm(t: DimTracer, name: str, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
    """``grouped_mm(x (S, K), w (experts, K, N), offs)``: every expert's weights read x's last dimension.

    Its kernel needs strides of whole 16 bytes, so K and N stay multiples of 8 (16-bit weights; fp32 needs 4)."""
    x, w = args[0], args[1] if len(args) > 1 else kwargs["mat_b"]
    out = _weight_rule(t, x, w, None, value, -1, -2, where)
    for ids in (t.ids_of(x), out):
        t.space.align(ids, GROUPED_MM_ALIGN)
    return out


def _conv(t: DimTracer, name: str, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
    x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
    b = args[2] if len(args) > 2 else kwargs.get("bias")
    groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
    ids = t.ids_of(x)
    view = t.weight_view(w)  # the parameter itself, or a view with its shape (Mamba: w.squeeze(1).unsqueeze(1))
    if view is not None and view[0].shape == w.shape and all(d in (k, None) for k, d in enumerate(view[1])):
        w = view[0]
    owner = t.owner_of(w)
    if owner is None:
        t.block_all((x, w, b), {}, f"a convolution weight computed in the forward: {where}")
        return untracked(value)
    layer_name = owner[0]
    if not isinstance(t.pruners[layer_name], ConvPruner):  # a custom layer: its weight's dimensions
        if groups != 1:
            t.block_all((x, w, b), {}, f"a grouped convolution of a custom layer: {where}")
            return untracked(value)
        slot_in, slot_out = t.param_slot(w, 1, False), t.param_slot(w, 0, True)
        t.space.unify(ids, channel_ids(slot_in.ids, 1, ids.shape))
        if b is not None and t.param_slot(b, 0, False) is not None:
            t.space.unify(t.param_slot(b, 0, False).ids, slot_out.ids)
        return channel_ids(slot_out.ids, 1, value.shape)
    c_in = x.shape[1]
    if groups == 1:
        t.space.unify(ids, channel_ids(t.slot(layer_name, "in", c_in, False).ids, 1, ids.shape))
        return channel_ids(t.slot(layer_name, "out", w.shape[0], True).ids, 1, value.shape)
    if groups == c_in == w.shape[0]:
        ch = t.slot(layer_name, "ch", w.shape[0], True).ids
        t.space.unify(ids, channel_ids(ch, 1, ids.shape))
        if bool((collapse(ids)[0] < 0).any()):  # it reads channels nobody can remove (e.g. the model input)
            t.space.block(ch, f"depthwise convolution {layer_name} reads channels that cannot be pruned")
        return channel_ids(ch, 1, value.shape)
    # grouped: a unit is one channel position in every group, so the groups stay equal in size
    inp = t.slot(layer_name, "in", c_in, False)
    out = t.slot(layer_name, "out", w.shape[0], True)
    for slot in (inp, out):
        per_group = slot.ids.view(groups, -1)
        t.space.unify(per_group[1:], per_group[:1].expand(groups - 1, -1))
    t.space.unify(ids, channel_ids(inp.ids, 1, ids.shape))
    return channel_ids(out.ids, 1, value.shape)


def _conv_transpose(t: DimTracer, name: str, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
    """A transposed convolution (U-Net up-sampling): weight ``(in, out, *kernel)``; grouped ones stay whole."""
    x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
    b = args[2] if len(args) > 2 else kwargs.get("bias")
    groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
    slot_in = t.param_slot(w, 0, False) if t.weight_view(w) is not None else None
    slot_out = t.param_slot(w, 1, True) if slot_in is not None else None
    if groups != 1 or slot_in is None or slot_out is None:
        t.block_all((x, w, b), {}, f"a grouped or computed transposed convolution: {where}")
        return untracked(value)
    ids = t.ids_of(x)
    t.space.unify(ids, channel_ids(slot_in.ids, 1, ids.shape))
    _bias(t, b, slot_out, where)
    return channel_ids(slot_out.ids, 1, value.shape)


def _norm_params(t: DimTracer, x_ids: torch.Tensor, dim: int, params: list[Any], where: str) -> torch.Tensor:
    """Tie the per-channel parameters / buffers of a norm to dimension ``dim`` of its input."""
    feat = None
    for p in params:
        if p is None:
            continue
        slot = t.param_slot(p, 0, False)
        if slot is None:
            t.space.block(x_ids, f"normalised with a tensor that is not a parameter: {where}")
            return x_ids
        if feat is not slot.ids:  # a norm's weight, bias and statistics usually index one slot: tie it once
            t.space.unify(x_ids, channel_ids(slot.ids, dim, x_ids.shape))
        feat = slot.ids if feat is None else feat
    return x_ids if feat is None else channel_ids(feat, dim, x_ids.shape)


def _layer_norm(t: DimTracer, name: str, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
    x, shape = args[0], args[1] if len(args) > 1 else kwargs["normalized_shape"]
    w = args[2] if len(args) > 2 else kwargs.get("weight")
    b = args[3] if len(args) > 3 else kwargs.get("bias")
    ids = t.ids_of(x)
    if len(shape) != 1:
        t.block_all((x, w, b), {}, f"normalised over several dimensions: {where}")
        return untracked(value)
    return _norm_params(t, ids, -1, [w, b], where)


def _rms_norm(t: DimTracer, name: str, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
    x, shape = args[0], args[1] if len(args) > 1 else kwargs["normalized_shape"]
    w = args[2] if len(args) > 2 else kwargs.get("weight")
    if len(shape) != 1:
        t.block_all((x, w), {}, f"normalised over several dimensions: {where}")
        return untracked(value)
    return _norm_params(t, t.ids_of(x), -1, [w], where)


def _group_norm(t: DimTracer, name: str, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
    x, groups = args[0], args[1] if len(args) > 1 else kwargs["num_groups"]
    w = args[2] if len(args) > 2 else kwargs.get("weight")
    b = args[3] if len(args) > 3 else kwargs.get("bias")
    ids = t.ids_of(x)
    if groups > 1 and tracked(ids):  # every group must lose as many channels: one position in every group
        per_group = ids.movedim(1, -1).unflatten(-1, (groups, -1))
        t.space.unify(per_group, per_group.narrow(-2, 0, 1).expand(per_group.shape))
    return _norm_params(t, ids, 1, [w, b], where)


def _batch_norm(t: DimTracer, name: str, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
    x = args[0]
    names = ("running_mean", "running_var", "weight", "bias")
    params = [args[i + 1] if len(args) > i + 1 else kwargs.get(n) for i, n in enumerate(names)]
    return _norm_params(t, t.ids_of(x), 1, params, where)


def _embedding(t: DimTracer, name: str, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
    w = args[1] if len(args) > 1 else kwargs["weight"]
    slot = t.param_slot(w, 1, True)
    if slot is None:
        t.block_all((w,), {}, f"an embedding table that is not a parameter: {where}")
        return untracked(value)
    return channel_ids(slot.ids, -1, value.shape)


def _sdpa(t: DimTracer, name: str, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
    q, k, v = (t.ids_of(a) for a in args[:3])
    if kwargs.get("enable_gqa") and k.shape[-3] != q.shape[-3]:  # key / value heads shared by query heads
        k, v = (x.repeat_interleave(q.shape[-3] // x.shape[-3], dim=-3) for x in (k, v))
    scores = t.matmul_ids(q, k.transpose(-2, -1), where)
    mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
    if _is_tensor(mask) and tracked(t.ids_of(mask)):  # an additive per-head bias (e.g. relative positions)
        shape = torch.broadcast_shapes(scores.shape, mask.shape)
        t.space.unify(*collapse(scores.expand(shape), t.ids_of(mask).expand(shape)))
    return t.matmul_ids(scores, v, where).expand(value.shape)


def _pad(t: DimTracer, name: str, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
    x, pad = args[0], args[1] if len(args) > 1 else kwargs["pad"]
    ids = t.ids_of(x)
    padded = range(ids.dim() - len(pad) // 2, ids.dim())
    if any(varies(ids, d) for d in padded):
        t.space.block(ids, f"padded along a feature dimension: {where}")
        return untracked(value)
    fixed = ids
    for d in padded:
        fixed = fixed.narrow(d, 0, 1)
    return fixed.expand(value.shape) if all(fixed.shape[d] == 1 for d in padded) else untracked(value)


def _setitem(t: DimTracer, name: str, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
    target, src = args[0], args[2]
    if tracked(t.ids_of(target)) or (_is_tensor(src) and tracked(t.ids_of(src))):
        t.block_all((target, src), {}, f"written into in place: {where}")
    return None


def _index_add(t: DimTracer, name: str, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
    """``target.index_add_(dim, index, source)``: rows of ``source`` added into rows of ``target`` (the
    experts' outputs summed per token); every other dimension of the two is one."""
    target, dim = args[0], args[1] if len(args) > 1 else kwargs["dim"]
    source = args[3] if len(args) > 3 else kwargs["source"]
    pair = [t.ids_of(target), t.ids_of(source)]
    dim %= target.dim()
    if source.dim() != target.dim() or any(tracked(i) and varies(i, dim) for i in pair):
        t.block_all((target, source), {}, f"added along a feature dimension: {where}")
        return untracked(value)
    rows = [i.narrow(dim, 0, 1) for i in pair]
    if all(tracked(r) for r in rows):
        t.space.unify(*collapse(*rows))
    return torch.maximum(*rows).expand(value.shape)


def _repeat_interleave(t: DimTracer, name: str, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
    """Rows repeated along a dimension (each token once per chosen expert)."""
    ids = t.ids_of(args[0])
    dim = kwargs.get("dim", args[2] if len(args) > 2 else None)
    if not _is_tensor(args[0]) or dim is None or varies(ids, dim):
        t.block_all(args, kwargs, f"repeated along a feature dimension: {where}")
        return untracked(value)
    return ids.narrow(dim, 0, 1).expand(value.shape) if ids.shape[dim] else untracked(value)


def _repeat(t: DimTracer, name: str, args: tuple, kwargs: dict, value: Any, where: str) -> Any:
    """``x.repeat(*sizes)``: tiling along a feature dimension would need every copy pruned alike."""
    ids = t.ids_of(args[0])
    sizes = args[1] if len(args) == 2 and isinstance(args[1], tuple | list) else args[1:]
    lead = len(sizes) - ids.dim()
    if any(int(n) > 1 and d >= lead and varies(ids, d - lead) for d, n in enumerate(sizes)):
        t.block_all(args, kwargs, f"repeated along a feature dimension: {where}")
        return untracked(value)
    return ids.repeat(*[int(n) for n in sizes])


_RULES = {
    "linear": _linear,
    "repeat": _repeat,
    "index_add": _index_add,
    "index_add_": _index_add,
    "repeat_interleave": _repeat_interleave,
    "addmm": _addmm,
    "matmul": _matmul,
    "mm": _matmul,
    "bmm": _matmul,
    "grouped_mm": _grouped_mm,
    "_grouped_mm": _grouped_mm,
    "__matmul__": _matmul,
    "__rmatmul__": _matmul,
    "conv1d": _conv,
    "conv2d": _conv,
    "conv_transpose1d": _conv_transpose,
    "conv_transpose2d": _conv_transpose,
    "layer_norm": _layer_norm,
    "rms_norm": _rms_norm,
    "group_norm": _group_norm,
    "batch_norm": _batch_norm,
    "embedding": _embedding,
    "scaled_dot_product_attention": _sdpa,
    "pad": _pad,
    "__setitem__": _setitem,
}


# ---------------------------------------------------------------------- helpers
def call_model(model: nn.Module, example: Any) -> Any:
    """``model(example)``, ``model(*example)`` for a tuple, ``model(**example)`` for a dict; the
    example's tensors are moved to a module's device first."""
    if isinstance(model, nn.Module):
        example = to_device(example, model_device(model))
    if isinstance(example, dict):
        return model(**example)
    if isinstance(example, tuple | list):
        return model(*example)
    return model(example)


def _user_frame(exc: BaseException) -> str:
    """``file:line`` of the innermost traceback frame outside torch and slimkit (the user's code)."""
    here = Path(__file__).resolve().parents[1]
    torch_dir = Path(torch.__file__).resolve().parent
    where = "an unknown place"
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename).resolve()
        if not (path.is_relative_to(here) or path.is_relative_to(torch_dir)):
            where = f"{frame.filename}:{frame.lineno}"
    return where


def _along(ids: torch.Tensor, dim: int) -> torch.Tensor:
    """The ids along ``dim`` (at position 0 of every other dimension), as a vector."""
    return ids.movedim(dim, -1).reshape(-1, ids.shape[dim])[0]


def _split_pieces(ids: torch.Tensor, out_shape: torch.Size) -> dict[int, str]:
    """Output dimensions made by splitting an input feature dimension into several: ``"outer"`` for
    the first factor (e.g. heads), ``"inner"`` for the others (e.g. the head size)."""
    src = [(d, n) for d, n in enumerate(ids.shape) if n > 1]
    dst = [(d, n) for d, n in enumerate(out_shape) if n > 1]
    inner: dict[int, str] = {}
    i = j = 0
    while i < len(src) and j < len(dst):
        dims, outs = [src[i][0]], [dst[j][0]]
        p_in, p_out = src[i][1], dst[j][1]
        while p_in != p_out:
            if p_in < p_out:
                i += 1
                if i >= len(src):
                    return inner
                p_in *= src[i][1]
                dims.append(src[i][0])
            else:
                j += 1
                if j >= len(dst):
                    return inner
                p_out *= dst[j][1]
                outs.append(dst[j][0])
        if len(outs) > 1 and any(varies(ids, d) for d in dims):
            inner[outs[0]] = "outer"
            for d in outs[1:]:
                inner[d] = "inner"
        i, j = i + 1, j + 1
    return inner


def _ids_index(item: Any) -> Any:
    return item.to(torch.long) if _is_tensor(item) and item.dtype not in (torch.bool, torch.long) else item


def _is_tensor_list(x: Any) -> bool:
    return isinstance(x, tuple | list) and len(x) > 0 and all(_is_tensor(v) for v in x)


def flat_tensors(obj: Any) -> list[torch.Tensor]:
    """The tensors in a value (nested tuples, lists and dicts such as a model output)."""
    if _is_tensor(obj):
        return [obj]
    if isinstance(obj, tuple | list):
        return [t for o in obj for t in flat_tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in flat_tensors(o)]
    return []


def _fits(ids: Any, value: Any) -> bool:
    """Whether ``ids`` has the structure of ``value`` (a tensor of its shape per tensor)."""
    if _is_tensor(value):
        return _is_tensor(ids) and ids.shape == value.shape
    if isinstance(value, tuple | list) and not isinstance(value, torch.Size):
        return isinstance(ids, tuple | list) and len(ids) == len(value) and all(map(_fits, ids, value))
    return not isinstance(ids, BaseException)
