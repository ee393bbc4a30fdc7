"""What slimkit remembers about a model (its architecture description) and input checks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from slimkit.core.errors import ShapeError, first_line

ARCH_ATTR = "_slimkit_arch"


def set_arch(model: nn.Module, arch: dict[str, Any]) -> None:
    """Attach the JSON architecture description that :func:`slimkit.save` writes to spec.json."""
    object.__setattr__(model, ARCH_ATTR, arch)


def arch_of(model: nn.Module) -> dict[str, Any] | None:
    """The architecture description of a model built by slimkit, or None."""
    return getattr(model, ARCH_ATTR, None)


def record_input(model: nn.Module, example: torch.Tensor) -> None:
    """Remember the per-sample input shape and dtype of ``example`` in the model's architecture."""
    arch = arch_of(model)
    if arch is not None:
        dtype = str(example.dtype).removeprefix("torch.")
        set_arch(model, {**arch, "input": {"shape": list(example.shape[1:]), "dtype": dtype}})


def example_input(model: nn.Module, batch: int = 2) -> torch.Tensor | None:
    """A zero batch of the recorded input shape and dtype, or None when none is recorded."""
    want = (arch_of(model) or {}).get("input")
    if not want:
        return None
    return torch.zeros(batch, *want["shape"], dtype=getattr(torch, want["dtype"]))


def model_name(model: object) -> str:
    """A short display name: the zoo name, the factory, or the class name."""
    arch = arch_of(model) if isinstance(model, nn.Module) else None
    if arch:
        return str(arch.get("name") or arch.get("factory"))
    return str(getattr(model, "name", type(model).__name__))


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put ``model`` in eval mode (BatchNorm statistics stay untouched). Afterwards every
    module is back in its own mode, whatever the block did; modules added by the block take the
    model's."""
    modes = {m: m.training for m in model.modules()}
    if any(modes.values()):
        model.eval()
    try:
        yield model
    finally:
        for m in model.modules():
            mode = modes.get(m, modes[model])
            if m.training != mode:
                m.training = mode


def check_input(model: nn.Module, x: Any) -> None:
    """Raise :class:`ShapeError` naming the problem if ``model`` cannot take the batch ``x`` (a tensor,
    or a tuple / dict of them)."""
    from slimkit.graph import map_batch
    from slimkit.graph.trace import call_model, flat_tensors

    want = (arch_of(model) or {}).get("input")
    got = ", ".join(f"shape {tuple(t.shape)} and dtype {str(t.dtype).removeprefix('torch.')}" for t in flat_tensors(x))
    if want and isinstance(x, torch.Tensor) and list(x.shape[1:]) != list(want["shape"]):
        raise ShapeError(
            f"{model_name(model)} expects inputs of shape (N, {', '.join(map(str, want['shape']))}), got {got}"
        )
    try:
        with eval_mode(model), torch.no_grad():
            call_model(model, map_batch(x, lambda t: t[:2]))
    except (RuntimeError, IndexError, ValueError, TypeError) as exc:
        reason = first_line(exc)
        raise ShapeError(f"{model_name(model)} cannot run on inputs of {got}: {reason}") from None


SNAPSHOT_CLONE_BYTES = 64 * 2**20  # parameters up to this size are copied (restored even if changed in place)


class Snapshot:
    """Everything a transform may change about a model, to put it back exactly: every module's
    attributes, parameters, buffers and children (by reference, since transforms replace rather
    than edit them), copies of the buffers, and copies of the parameters when the model is small.
    Parameters of larger models are checked instead: one changed in place cannot be restored."""

    def __init__(self, model: nn.Module, copy_weights: bool | None = None) -> None:
        """``copy_weights``: copy the parameters (None: when they fit in ``SNAPSHOT_CLONE_BYTES``); pass
        False when the caller never changes a parameter in place (pruning replaces them)."""
        self.model = model
        self.modules = [
            (
                m,
                dict(m.__dict__),
                dict(m._parameters),
                dict(m._buffers),
                dict(m._modules),
                set(m._non_persistent_buffers_set),
            )
            for m in _all_modules(model)
        ]
        params = {id(p): p for m, *_ in self.modules for p in m._parameters.values() if p is not None}
        buffers = {id(b): b for m, *_ in self.modules for b in m._buffers.values() if b is not None}
        size = sum(p.numel() * p.element_size() for p in params.values())
        small = size <= SNAPSHOT_CLONE_BYTES if copy_weights is None else copy_weights
        self.tensors = [
            (t, t._version, t.detach().clone() if small or id(t) in buffers else None)
            for t in [*params.values(), *buffers.values()]
        ]

    def restore(self) -> None:
        for m, attrs, params, buffers, children, non_persistent in self.modules:
            m.__dict__.clear()
            m.__dict__.update(attrs)
            m.__dict__.update(_parameters=dict(params), _buffers=dict(buffers), _modules=dict(children))
            m.__dict__["_non_persistent_buffers_set"] = set(non_persistent)
        for t, version, copy in self.tensors:
            if t._version != version:
                if copy is None:
                    raise RuntimeError("a failed transform changed weights in place and they cannot be restored")
                with torch.no_grad():
                    t.copy_(copy)


def _all_modules(model: nn.Module) -> list[nn.Module]:
    return list({id(m): m for _, m in model.named_modules(remove_duplicate=False)}.values())


@contextlib.contextmanager
def transaction(model: nn.Module) -> Iterator[Snapshot]:
    """Run a block that changes ``model`` in place; if it raises, the model is put back exactly as it
    was (same classes, attributes, parameter and buffer objects and values) before the error propagates."""
    snap = Snapshot(model)
    try:
        yield snap
    except BaseException:
        snap.restore()
        raise
