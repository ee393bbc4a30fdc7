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


def check_input(model: nn.Module, x: torch.Tensor) -> None:
    """Raise :class:`ShapeError` naming the problem if ``model`` cannot take the batch ``x``."""
    want = (arch_of(model) or {}).get("input")
    got = f"shape {tuple(x.shape)} and dtype {str(x.dtype).removeprefix('torch.')}"
    if want and list(x.shape[1:]) != list(want["shape"]):
        raise ShapeError(
            f"{model_name(model)} expects inputs of shape (N, {', '.join(map(str, want['shape']))}), got {got}"
        )
    try:
        with eval_mode(model), torch.no_grad():
            model(x[:2])
    except (RuntimeError, IndexError, ValueError, TypeError) as exc:
        reason = first_line(exc)
        raise ShapeError(f"{model_name(model)} cannot run on inputs of {got}: {reason}") from None
