"""Where a model trains and evaluates: the device, mixed precision, and moving batches there.

``device`` is ``"auto"`` (CUDA, else Apple's MPS, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``
or ``"mps"``; None keeps the model where it is. ``amp`` is ``"bf16"``, ``"fp16"`` (CUDA only, with
a gradient scaler) or None. Models and teachers move once; batches move per step (:func:`to_device`).
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import torch
from torch import nn

from slimkit.core.errors import SlimkitError

__all__ = [
    "AMP",
    "autocast",
    "check_amp",
    "grad_scaler",
    "model_device",
    "resolve_device",
    "same_device",
    "to_device",
]

AMP = ("bf16", "fp16")
_DEVICE = re.compile(r"(auto|cpu|mps|cuda)(:\d+)?")


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for anything else."""
    if isinstance(model, nn.Module):
        for t in model.parameters():
            return t.device
        for t in model.buffers():
            return t.device
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None, model: Any = None) -> torch.device:
    """The ``torch.device`` that ``device`` names (None: where ``model`` is), checked to exist here."""
    if device is None:
        return model_device(model)
    if isinstance(device, torch.device):
        device = str(device)
    found = _DEVICE.fullmatch(str(device).strip().lower())
    if found is None or (found[2] and found[1] != "cuda"):
        raise SlimkitError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    kind = found[1]
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise SlimkitError(f"device {device!r}: this machine has no CUDA device; use cpu (or auto)")
        index = int(found[2][1:]) if found[2] else 0
        if index >= count:
            raise SlimkitError(
                f"device {device!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise SlimkitError(f"device {device!r}: Apple's MPS is not available here; use cpu (or auto)")
    return torch.device(str(device).strip().lower())


def check_amp(amp: str | None, device: torch.device) -> str | None:
    """``amp`` checked against ``device``: bf16 anywhere it runs, fp16 on CUDA only."""
    if amp is None or amp == "none":
        return None
    if amp not in AMP:
        raise SlimkitError(f"unknown mixed precision {amp!r}; use bf16, fp16 or none")
    if amp == "fp16" and device.type != "cuda":
        raise SlimkitError(
            f"fp16 mixed precision needs a CUDA device (training on {device.type}); use bf16 there, or none"
        )
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SlimkitError("this CUDA device has no bfloat16 support; use fp16 mixed precision")
    return amp


def autocast(amp: str | None, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of ``amp`` on ``device`` (nothing without ``amp``)."""
    if amp is None:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(amp: str | None, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (its small range underflows gradients); None otherwise."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def to_device(batch: Any, device: torch.device) -> Any:
    """Every tensor of a batch (a tensor, or nested tuples / lists / dicts of them) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch if batch.device == device else batch.to(device, non_blocking=True)
    if isinstance(batch, dict) or hasattr(batch, "keys") and hasattr(batch, "items"):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


@contextlib.contextmanager
def same_device(what: str) -> Any:
    """Turn PyTorch's device-mismatch error inside the block into a one-line :class:`SlimkitError`
    (e.g. a model whose layers sit on different devices, or a forward that makes tensors on another)."""
    try:
        yield
    except RuntimeError as exc:
        text = str(exc)
        if "same device" not in text and "expected device" not in text:
            raise
        line = text.strip().splitlines()[0]
        raise SlimkitError(
            f"{what} failed: the model and its inputs are on different devices ({line}); put the whole model "
            "on one device (model.to(...)) or pass device="
        ) from None
