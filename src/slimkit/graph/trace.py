"""Trace a model with ``torch.fx`` and propagate dimension ids through every op.

Each tensor in the traced graph is paired with an id tensor of the same shape. Layers with
weights own *slots* (``conv.out``, ``conv.in``, ``bn.feat``...), each a range of ids; data-movement
ops (view, flatten, cat, transpose, indexing) are replayed on the id tensors; element-wise ops tie
their operands' ids; anything the rules cannot prove safe blocks the ids it touches, with a reason.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from slimkit.core.errors import SlimkitError, first_line
from slimkit.graph.ids import UNTRACKED, IdSpace, collapse


@dataclasses.dataclass
class Slot:
    """One prunable dimension of one layer: ``ids[i]`` is the id of index ``i``."""

    module: str
    kind: str  # out, in, ch (depthwise in = out), feat (norms), dim (embedding), hidden, heads
    size: int
    ids: torch.Tensor
    producer: bool  # removing an index here removes a produced feature (not just a read one)


def is_attention_block(m: nn.Module) -> bool:
    """Attention written with separate q/k/v/out ``nn.Linear`` projections and an int ``heads``."""
    return all(isinstance(getattr(m, p, None), nn.Linear) for p in ("q_proj", "k_proj", "v_proj", "out_proj")) and (
        isinstance(getattr(m, "heads", None), int)
    )


_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Hardswish, nn.Hardsigmoid,
    nn.Mish, nn.Softplus, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.Softmax, nn.LogSoftmax,
)  # fmt: skip
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
          nn.AdaptiveMaxPool2d)  # fmt: skip
_POINTWISE_FUNCS = {
    F.relu, F.relu6, F.gelu, F.silu, F.sigmoid, F.tanh, F.softmax, F.log_softmax, F.dropout, F.leaky_relu, F.elu,
    F.hardswish, torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.neg, torch.abs, torch.sqrt, torch.rsqrt,
    torch.softmax, torch.clamp, operator.neg, operator.invert, torch.logical_not,
}  # fmt: skip
_POINTWISE_METHODS = {
    "relu", "sigmoid", "tanh", "softmax", "log_softmax", "exp", "neg", "abs", "sqrt", "rsqrt", "clamp", "clamp_min",
    "clamp_max", "float", "half", "double", "to", "type_as", "detach", "contiguous", "clone", "pow", "masked_fill",
    "logical_not", "bool", "long", "int",
}  # fmt: skip
_BINARY = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.and_, operator.or_, operator.ne,
    operator.eq, operator.gt, operator.lt, operator.ge, operator.le, operator.pow, operator.iadd, operator.imul,
    torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum, torch.where,
}  # fmt: skip
_BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "mul_", "maximum", "minimum", "eq", "ne", "gt", "lt"}
_MOVES_FUNCS = {torch.flatten, torch.transpose, torch.permute, torch.unsqueeze, torch.squeeze, torch.cat, torch.stack,
                torch.concat, torch.t}  # fmt: skip
_MOVES_METHODS = {"flatten", "transpose", "permute", "unsqueeze", "squeeze", "expand", "expand_as", "t", "view",
                  "reshape", "view_as", "reshape_as", "repeat"}  # fmt: skip
_REDUCE_METHODS = {"sum", "mean", "amax", "amin", "any", "all", "norm", "logsumexp"}
_REDUCE_FUNCS = {torch.sum, torch.mean, torch.amax, torch.amin, torch.any, torch.all, torch.logsumexp}
_FACTORIES = {torch.arange, torch.zeros, torch.ones, torch.full, torch.triu_indices, torch.tril_indices, torch.eye,
              torch.zeros_like, torch.ones_like, torch.rand, torch.randn, torch.tensor}  # fmt: skip


# blocks with a rule of their own (PyTorch's transformer layers branch on tensors, so fx cannot trace them)
_RULE_BLOCKS = (nn.RNNBase, nn.MultiheadAttention, nn.TransformerEncoder, nn.TransformerEncoderLayer)


_PLAIN = (int, float, bool, str, type(None))


class _Tracer(fx.Tracer):
    """Traces into every module with children (torch.nn containers like TransformerEncoder
    included), except the blocks that have a rule of their own.

    ``math_on_proxies=False`` skips fx's wrapping of the ``math`` module (56 functions patched and
    restored per trace, ~10% of tracing a small model); models that apply ``math`` functions to
    traced values need it, so tracing falls back to it on failure."""

    def __init__(self, math_on_proxies: bool = True) -> None:
        super().__init__(autowrap_modules=(math,) if math_on_proxies else ())

    def create_arg(self, a: Any) -> Any:
        """fx's own, with the common cases first (it runs ~20 type checks per argument)."""
        if type(a) in _PLAIN:
            return a
        if isinstance(a, fx.Proxy):
            return a.node
        if type(a) in (tuple, list):
            return type(a)(self.create_arg(x) for x in a)
        return super().create_arg(a)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if is_attention_block(m) or isinstance(m, _RULE_BLOCKS):
            return True
        return not any(True for _ in m.children()) and m.__module__.startswith("torch.nn")


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _untracked(value: Any) -> Any:
    if _is_tensor(value):
        return torch.full(value.shape, UNTRACKED, dtype=torch.long)
    if isinstance(value, tuple | list) and not isinstance(value, torch.Size):
        return type(value)(_untracked(v) for v in value)
    return None


def _channel_ids(ids: torch.Tensor, dim: int, shape: torch.Size) -> torch.Tensor:
    """Broadcast per-channel ``ids`` (C,) along ``dim`` of a tensor of ``shape``."""
    view = [1] * len(shape)
    view[dim] = -1
    return ids.view(view).expand(shape)


def _param_dims(m: nn.Module, attr: str) -> list[str | None] | None:
    """The slot kind indexing each dimension of parameter ``attr`` of ``m`` (None: a dimension the
    pruner never changes); None if the layer is not one whose parameters it understands."""
    conv = isinstance(m, nn.Conv1d | nn.Conv2d) and type(m) in (nn.Conv1d, nn.Conv2d)
    if type(m) is nn.Linear or (conv and m.groups == 1):
        return {"weight": ["out", "in"] + [None] * (m.weight.dim() - 2), "bias": ["out"]}.get(attr)
    if conv and m.groups == m.in_channels == m.out_channels:
        return {"weight": ["ch"] + [None] * (m.weight.dim() - 1), "bias": ["ch"]}.get(attr)
    if type(m) is nn.Embedding and attr == "weight":
        return [None, "dim"]
    if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm) and attr in ("weight", "bias"):
        return ["feat"]
    return None


def varies(ids: torch.Tensor, dim: int) -> bool:
    """Whether ``ids`` holds different ids along ``dim`` (i.e. ``dim`` is a feature dimension)."""
    if ids.shape[dim] <= 1:
        return False
    first = ids.narrow(dim, 0, 1)
    return bool(((ids != first) & (ids >= 0)).any())


class DimTracer:
    """Runs the traced graph on an example, building slots and id edges."""

    def __init__(self, model: nn.Module, space: IdSpace) -> None:
        self.model = model
        self.space = space
        self.slots: dict[tuple[str, str], Slot] = {}
        self.unsupported: dict[str, str] = {}  # layer -> why it was left alone
        self.modules = dict(model.named_modules())
        before = set(vars(model))
        try:
            try:
                self.graph = _Tracer(math_on_proxies=False).trace(model)
            except Exception:  # noqa: BLE001  (e.g. math.sqrt on a traced size: retry with math wrapped)
                self.graph = _Tracer().trace(model)
        except Exception as exc:  # torch.fx raises many types on untraceable Python
            raise SlimkitError(
                f"cannot trace {type(model).__name__} with torch.fx ({first_line(exc)}); "
                "pruning needs a model without data-dependent Python control flow"
            ) from None
        finally:  # fx stores the forward's tensor constants as attributes of the model: keep them here
            self.constants = {k: model.__dict__.pop(k) for k in set(vars(model)) - before}

    # ------------------------------------------------------------------ slots
    def slot(self, module: str, kind: str, size: int, producer: bool) -> Slot:
        key = (module, kind)
        if key not in self.slots:
            self.slots[key] = Slot(module, kind, size, self.space.alloc(size), producer)
        return self.slots[key]

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
            dims = [_param_dims(self.modules.get(m) or self.model.get_submodule(m), a) for m, a in group]
            if any(d is None for d in dims) or len({len(d) for d in dims}) > 1:
                for m, _ in group:
                    self.block_module(m, f"shares a parameter ({names}) in a way the pruner cannot follow")
                continue
            for kinds in zip(*dims, strict=True):
                slots = [self.slots.get((m, k)) if k else None for (m, _), k in zip(group, kinds, strict=True)]
                if all(slots):
                    for other in slots[1:]:
                        self.space.unify(other.ids, slots[0].ids)
                else:
                    for slot in filter(None, slots):
                        self.space.block(slot.ids, f"a dimension of a shared parameter ({names}) is fixed")
        return shared

    # ------------------------------------------------------------------ run
    def run(self, example: torch.Tensor) -> None:
        env: dict[fx.Node, tuple[Any, Any]] = {}
        inputs = iter([example])

        def load(a: Any) -> Any:
            return fx.node.map_arg(a, lambda n: env[n][0])

        def load_ids(a: Any) -> Any:
            return fx.node.map_arg(a, lambda n: env[n][1])

        with torch.no_grad():
            for node in self.graph.nodes:
                if node.op == "placeholder":
                    value = next(inputs, None)
                    env[node] = (value, _untracked(value))
                elif node.op == "get_attr":
                    value = self.constants.get(node.target)
                    value = _fetch(self.model, node.target) if value is None else value
                    env[node] = (value, _untracked(value))
                elif node.op == "output":
                    for ids in _flat_tensors(load_ids(node.args[0])):
                        self.space.block(ids, "feeds the model output (its size is part of the model's interface)")
                else:
                    args, kwargs = load(node.args), load(node.kwargs)
                    ids_args, ids_kwargs = load_ids(node.args), load_ids(node.kwargs)
                    value = self._execute(node, args, kwargs)
                    ids = self._propagate(node, args, kwargs, ids_args, ids_kwargs, value)
                    env[node] = (value, ids)

    def _execute(self, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        self_obj, *rest = args
        return getattr(self_obj, node.target)(*rest, **kwargs)

    def _propagate(
        self, node: fx.Node, args: tuple, kwargs: dict, ids_args: tuple, ids_kwargs: dict, value: Any
    ) -> Any:
        where = f"node {node.name} ({node.op} {getattr(node.target, '__name__', node.target)})"
        if node.op == "call_module":
            return self._module_rule(node.target, self.modules[node.target], args, ids_args, value)
        target = node.target
        fn_name = target if node.op == "call_method" else getattr(target, "__name__", str(target))
        if node.op == "call_function" and target in _FACTORIES or fn_name in ("size", "dim", "numel"):
            return _untracked(value)
        if node.op == "call_function" and target is getattr:
            return _untracked(value)
        if (node.op == "call_function" and target in _POINTWISE_FUNCS) or (
            node.op == "call_method" and target in _POINTWISE_METHODS
        ):
            return self._pointwise(args, ids_args, value)
        if (node.op == "call_function" and target in _BINARY) or (
            node.op == "call_method" and target in _BINARY_METHODS
        ):
            return self._elementwise(args, ids_args, kwargs, ids_kwargs, value, where)
        if (node.op == "call_function" and target in _MOVES_FUNCS) or (
            node.op == "call_method" and target in _MOVES_METHODS
        ):
            return self._move(node, args, kwargs, ids_args, ids_kwargs, value, where)
        if node.op == "call_function" and target is operator.getitem:
            return self._getitem(args, ids_args, value, where)
        if (node.op == "call_method" and target in ("chunk", "split")) or (
            node.op == "call_function" and target in (torch.chunk, torch.split)
        ):
            return self._split(node, args, kwargs, ids_args, value, where)
        if (node.op == "call_method" and target in _REDUCE_METHODS) or (
            node.op == "call_function" and target in _REDUCE_FUNCS
        ):
            return self._reduce(node, args, kwargs, ids_args, value)
        if target in (torch.matmul, operator.matmul, torch.bmm) or (
            node.op == "call_method" and target in ("matmul", "bmm")
        ):
            return self._matmul(args, ids_args, value, where)
        if target is F.scaled_dot_product_attention:
            q, k = ids_args[0], ids_args[1]
            self.space.unify(q[..., :1, :].expand_as(k[..., :1, :]), k[..., :1, :])
            v = ids_args[2]
            lo, hi = v.amin(-2, keepdim=True), v.amax(-2, keepdim=True)  # attention mixes over keys
            return torch.where(lo == hi, lo, torch.full_like(lo, UNTRACKED)).expand(value.shape)
        for ids in _flat_tensors((ids_args, ids_kwargs)):
            self.space.block(ids, f"used by an operation slimkit cannot analyse: {where}")
        return _untracked(value)

    # ------------------------------------------------------------------ op rules
    def _pointwise(self, args: tuple, ids_args: tuple, value: Any) -> Any:
        ids = ids_args[0]
        if _is_tensor(ids) and _is_tensor(value) and ids.shape == value.shape:
            return ids
        return _untracked(value)

    def _elementwise(self, args: tuple, ids_args: tuple, kwargs: dict, ids_kwargs: dict, value: Any, where: str) -> Any:
        if not _is_tensor(value):
            return None
        operands = [(a, i) for a, i in zip([*args, *kwargs.values()], [*ids_args, *ids_kwargs.values()], strict=True)]
        tensors = [(a, i) for a, i in operands if _is_tensor(a) and a.dim() > 0]
        shape = value.shape
        is_tracked = [bool((collapse(i)[0] >= 0).any()) for _, i in tensors]
        tracked = [i.expand(shape) for (_, i), yes in zip(tensors, is_tracked, strict=True) if yes]
        for (a, _), yes in zip(tensors, is_tracked, strict=True):
            if yes:
                continue
            # a constant (parameter, input) broadcast against a feature dimension would need slicing too
            lead = len(shape) - a.dim()
            for d in range(a.dim()):
                if a.shape[d] > 1:
                    for t in tracked:
                        if varies(t, lead + d):
                            self.space.block(t, f"combined with an untracked tensor of shape {tuple(a.shape)}: {where}")
        if not tracked:
            return _untracked(value)
        out, *rest = collapse(*tracked)  # per-channel ids stay per-channel (broadcast) through the op
        for t in rest:
            self.space.unify(out, t)
            out = torch.maximum(out, t)
        return out.expand(shape)

    def _move(
        self, node: fx.Node, args: tuple, kwargs: dict, ids_args: tuple, ids_kwargs: dict, value: Any, where: str
    ) -> Any:
        name = node.target if node.op == "call_method" else node.target.__name__
        if name in ("view", "reshape"):
            sizes = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], tuple | list) else node.args[1:]
            literal = [s for s in sizes if isinstance(s, int) and s > 1]
            src_ids = ids_args[0]
            # fixed sizes break once a dimension shrinks, and splitting a feature dimension ties its
            # indices together in a way the pruner does not model: only flatten-like reshapes pass
            if (literal and any(varies(src_ids, d) for d in range(src_ids.dim()))) or _splits_feature(
                src_ids, value.shape
            ):
                self.space.block(src_ids, f"reshaped to {list(value.shape)}: {where}")
        if name == "repeat":
            self.space.block(ids_args[0], f"repeated: {where}")
            return _untracked(value)

        def replay_arg(a: Any, ids: Any) -> Any:  # tensors (and tensor lists, for cat) become their ids
            tensors = _is_tensor(a) or (isinstance(a, list | tuple) and a and all(_is_tensor(t) for t in a))
            return ids if tensors else a

        fn = getattr(torch.Tensor, name) if node.op == "call_method" else node.target
        id_args = [replay_arg(a, i) for a, i in zip(args, ids_args, strict=True)]
        if name in ("expand_as", "view_as", "reshape_as"):
            id_args[1] = args[1]  # the shape donor stays a real tensor
        return fn(*id_args, **kwargs)

    def _getitem(self, args: tuple, ids_args: tuple, value: Any, where: str) -> Any:
        src, index = args
        ids = ids_args[0]
        if not _is_tensor(src):  # a tuple from a module (an LSTM's output) or a shape
            return ids[index] if isinstance(ids, tuple | list) else None
        items = list(index) if isinstance(index, tuple) else [index]
        if Ellipsis in items:
            at = items.index(Ellipsis)
            explicit = sum(1 for i in items if i is not None and i is not Ellipsis)
            items[at : at + 1] = [slice(None)] * (src.dim() - explicit)
        dim = 0
        for item in items:
            if item is None:
                continue
            if not (isinstance(item, slice) and item == slice(None)) and dim < src.dim() and varies(ids, dim):
                self.space.block(ids, f"indexed along a feature dimension: {where}")
            dim += 1
        return ids[index]

    def _split(self, node: fx.Node, args: tuple, kwargs: dict, ids_args: tuple, value: Any, where: str) -> Any:
        dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
        if varies(ids_args[0], dim):
            self.space.block(ids_args[0], f"split along a feature dimension: {where}")
        fn = getattr(torch.Tensor, node.target) if node.op == "call_method" else node.target
        return fn(ids_args[0], *args[1:], **kwargs)

    def _reduce(self, node: fx.Node, args: tuple, kwargs: dict, ids_args: tuple, value: Any) -> Any:
        if not _is_tensor(value):
            return _untracked(value)
        dims = kwargs.get("dim", args[1] if len(args) > 1 and not isinstance(args[1], bool) else None)
        if dims is None or not _is_tensor(ids_args[0]):
            return _untracked(value)
        ids = ids_args[0]
        dims = [dims] if isinstance(dims, int) else list(dims)
        keep = kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False)
        lo, hi = ids, ids
        for d in sorted((d % ids.dim() for d in dims), reverse=True):
            lo, hi = lo.amin(dim=d, keepdim=True), hi.amax(dim=d, keepdim=True)
        out = torch.where(lo == hi, lo, torch.full_like(lo, UNTRACKED))
        if not keep:
            for d in sorted((d % ids.dim() for d in dims), reverse=True):
                out = out.squeeze(d)
        return out.reshape(value.shape)

    def _matmul(self, args: tuple, ids_args: tuple, value: Any, where: str) -> Any:
        a, b = ids_args
        if a.dim() < 2 or b.dim() < 2:
            self.space.block(a, f"vector product: {where}")
            self.space.block(b, f"vector product: {where}")
            return _untracked(value)
        # out[..., n, m] = sum_k a[..., n, k] * b[..., k, m]: a's column k pairs with b's row k
        a_k = a.unsqueeze(-1)  # (..., n, k, 1)
        b_k = b.unsqueeze(-3)  # (..., 1, k, m)
        shape = torch.broadcast_shapes(a_k.shape, b_k.shape)
        for mine, other in ((a, b), (b, a)):
            if not (other >= 0).any():
                self.space.block(mine, f"multiplied with an untracked tensor: {where}")
        self.space.unify(a_k.expand(shape), b_k.expand(shape))
        return _untracked(value)

    # ------------------------------------------------------------------ layers
    def _module_rule(self, name: str, m: nn.Module, args: tuple, ids_args: tuple, value: Any) -> Any:
        x, ids = (args[0], ids_args[0]) if args else (None, None)
        if isinstance(m, nn.Conv1d | nn.Conv2d) and type(m) in (nn.Conv1d, nn.Conv2d):
            if m.groups == 1:
                self.space.unify(ids, _channel_ids(self.slot(name, "in", m.in_channels, False).ids, 1, ids.shape))
                return _channel_ids(self.slot(name, "out", m.out_channels, True).ids, 1, value.shape)
            if m.groups == m.in_channels == m.out_channels:
                ch = self.slot(name, "ch", m.out_channels, True).ids
                self.space.unify(ids, _channel_ids(ch, 1, ids.shape))
                if bool((ids < 0).any()):  # it reads channels nobody can remove (e.g. the model input)
                    self.space.block(ch, f"depthwise convolution {name} reads channels that cannot be pruned")
                return _channel_ids(ch, 1, value.shape)
            # grouped: a unit is one channel position in every group, so the groups stay equal in size
            inp = self.slot(name, "in", m.in_channels, False)
            out = self.slot(name, "out", m.out_channels, True)
            for slot in (inp, out):
                per_group = slot.ids.view(m.groups, -1)
                self.space.unify(per_group[1:], per_group[:1].expand(m.groups - 1, -1))
            self.space.unify(ids, _channel_ids(inp.ids, 1, ids.shape))
            return _channel_ids(out.ids, 1, value.shape)
        if type(m) is nn.Linear:
            self.space.unify(ids, _channel_ids(self.slot(name, "in", m.in_features, False).ids, -1, ids.shape))
            return _channel_ids(self.slot(name, "out", m.out_features, True).ids, -1, value.shape)
        if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d):
            feat = self.slot(name, "feat", m.num_features, False).ids
            self.space.unify(ids, _channel_ids(feat, 1, ids.shape))
            return _channel_ids(feat, 1, value.shape)
        if type(m) is nn.LayerNorm:
            if len(m.normalized_shape) != 1:
                self.space.block(ids, f"LayerNorm {name} over several dimensions")
                return _untracked(value)
            if not m.elementwise_affine:
                return ids
            feat = self.slot(name, "feat", m.normalized_shape[0], False).ids
            self.space.unify(ids, _channel_ids(feat, -1, ids.shape))
            return _channel_ids(feat, -1, value.shape)
        if type(m) is nn.Embedding:
            return _channel_ids(self.slot(name, "dim", m.embedding_dim, True).ids, -1, value.shape)
        if isinstance(m, nn.RNNBase) and type(m) in (nn.LSTM, nn.GRU, nn.RNN):
            return self._rnn(name, m, args, ids, value)
        if is_attention_block(m):
            # self-attention reads one input; nn.MultiheadAttention-style blocks read query, key, value
            sources = ids_args[:3] if len(ids_args) >= 3 and all(_is_tensor(a) for a in args[:3]) else [ids] * 3
            for proj, src in zip(("q_proj", "k_proj", "v_proj"), sources, strict=True):
                size = getattr(m, proj).in_features
                self.space.unify(src, _channel_ids(self.slot(name, f"{proj}.in", size, False).ids, -1, src.shape))
            self.slot(name, "heads", m.heads, True)
            out = value[0] if isinstance(value, tuple) else value
            out_ids = _channel_ids(self.slot(name, "out_proj.out", m.out_proj.out_features, True).ids, -1, out.shape)
            return (out_ids, _untracked(value[1])) if isinstance(value, tuple) else out_ids
        if isinstance(m, nn.TransformerEncoder):
            for i, layer in enumerate(m.layers):
                x, ids = self._encoder_layer(f"{name}.layers.{i}", layer, x, ids)
            if m.norm is not None:
                x, ids = self._child(name, "norm", m, x, ids)
            return ids
        if isinstance(m, nn.TransformerEncoderLayer):
            return self._encoder_layer(name, m, x, ids)[1]
        if isinstance(m, _POINTWISE_MODULES) or type(m).__name__ == "Skip":
            return ids if _is_tensor(value) and ids is not None and ids.shape == value.shape else _untracked(value)
        if isinstance(m, nn.Flatten):
            return ids.flatten(m.start_dim, m.end_dim)
        if isinstance(m, _POOLS):
            # per-channel spatial op: each output channel reads the same input channel
            per_channel = ids.flatten(2)
            lo, hi = per_channel.amin(2), per_channel.amax(2)
            if bool((lo != hi).any()):
                self.space.block(ids, f"pooled input with mixed channels at {name}")
                return _untracked(value)
            return lo.view(*lo.shape, *([1] * (value.dim() - 2))).expand(value.shape)
        reason = f"layer {name} of type {type(m).__name__} is not supported by the pruner"
        if any(True for _ in m.parameters()):
            self.unsupported[name] = f"{type(m).__name__} layers are not supported by the pruner"
        for t in _flat_tensors(ids_args):
            self.space.block(t, reason)
        out = _untracked(value)
        return out

    def _child(self, name: str, child: str, parent: nn.Module, x: torch.Tensor, ids: torch.Tensor) -> tuple:
        m = parent.get_submodule(child)
        value = m(x)
        return value, self._module_rule(f"{name}.{child}", m, (x,), (ids,), value)

    def _encoder_layer(self, name: str, layer: nn.TransformerEncoderLayer, x: torch.Tensor, ids: torch.Tensor) -> tuple:
        """The data flow of ``nn.TransformerEncoderLayer`` (attention and feed-forward blocks with residuals)."""

        def attention(v: torch.Tensor, i: torch.Tensor) -> tuple:
            out = layer.self_attn(v, v, v, need_weights=False)
            out_ids = self._module_rule(f"{name}.self_attn", layer.self_attn, (v, v, v), (i, i, i), out)
            return out[0], out_ids[0] if isinstance(out_ids, tuple) else out_ids

        def feed_forward(v: torch.Tensor, i: torch.Tensor) -> tuple:
            v, i = self._child(name, "linear1", layer, v, i)
            v = layer.activation(v)  # element-wise: ids unchanged
            v, i = self._child(name, "linear2", layer, v, i)
            return v, i

        def add(a: tuple, b: tuple) -> tuple:
            self.space.unify(a[1], b[1])
            return a[0] + b[0], torch.maximum(a[1], b[1])

        if layer.norm_first:
            state = add((x, ids), attention(*self._child(name, "norm1", layer, x, ids)))
            return add(state, feed_forward(*self._child(name, "norm2", layer, *state)))
        state = self._child(name, "norm1", layer, *add((x, ids), attention(x, ids)))
        return self._child(name, "norm2", layer, *add(state, feed_forward(*state)))

    def _rnn(self, name: str, m: nn.RNNBase, args: tuple, ids: torch.Tensor, value: Any) -> Any:
        hidden = self.slot(name, "hidden", m.hidden_size, True).ids
        self.space.unify(ids, _channel_ids(self.slot(name, "in", m.input_size, False).ids, -1, ids.shape))
        if getattr(m, "proj_size", 0) or (len(args) > 1 and args[1] is not None):
            why = "projected LSTM" if getattr(m, "proj_size", 0) else "initial state passed in"
            self.space.block(hidden, f"{name}: {why} is not supported")
        dirs = 2 if m.bidirectional else 1
        out, state = value
        out_ids = _channel_ids(hidden.repeat(dirs), -1, out.shape)
        state_ids = tuple(_channel_ids(hidden, -1, s.shape) for s in (state if isinstance(state, tuple) else (state,)))
        return (out_ids, state_ids if isinstance(state, tuple) else state_ids[0])


def _splits_feature(ids: torch.Tensor, out_shape: torch.Size) -> bool:
    """Whether reshaping ``ids`` to ``out_shape`` splits a feature dimension into several."""
    src = [(d, n) for d, n in enumerate(ids.shape) if n > 1]
    dst = [n for n in out_shape if n > 1]
    i = j = 0
    while i < len(src) and j < len(dst):
        dims, pieces = [src[i][0]], 1
        p_in, p_out = src[i][1], dst[j]
        while p_in != p_out:
            if p_in < p_out:
                i += 1
                if i >= len(src):
                    return False
                p_in *= src[i][1]
                dims.append(src[i][0])
            else:
                j += 1
                if j >= len(dst):
                    return False
                p_out *= dst[j]
                pieces += 1
        if pieces > 1 and any(varies(ids, d) for d in dims):
            return True
        i, j = i + 1, j + 1
    return False


def _fetch(model: nn.Module, target: str) -> Any:
    obj: Any = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _flat_tensors(obj: Any) -> list[torch.Tensor]:
    if _is_tensor(obj):
        return [obj]
    if isinstance(obj, tuple | list):
        return [t for o in obj for t in _flat_tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _flat_tensors(o)]
    return []
