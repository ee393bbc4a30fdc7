"""slimkit checkpoints: a folder with ``spec.json`` (architecture) and ``weights.safetensors``.

Loading never unpickles: the architecture is rebuilt from the zoo (or from a factory the user
names explicitly) and the weights are read with safetensors.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn
from torch.nn.utils import parametrize

from slimkit.core.errors import ModelFileError
from slimkit.core.files import atomic_path
from slimkit.core.model import arch_of, record_input, set_arch
from slimkit.core.surgery import replay
from slimkit.core.transform import records
from slimkit.io.codecs import decode_state, encode_state
from slimkit.zoo.registry import create

FORMAT = "slimkit.checkpoint"
VERSION = 1
SPEC, WEIGHTS = "spec.json", "weights.safetensors"


def _storage_key(t: torch.Tensor) -> tuple[int, int, tuple[int, ...]]:
    """Equal for tensors that are views of the same memory with one shape (tied weights)."""
    return t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)


def weights_bytes(model: nn.Module, *, compress: bool = True) -> tuple[bytes, dict[str, str], dict[str, Any]]:
    """The model's state as safetensors bytes, the tied names (alias -> stored name) and encodings.

    Tensors shared by several names (tied weights) are stored once. With ``compress``, sparse and
    weight-shared tensors are stored in their smallest exact form (:mod:`slimkit.io.codecs`).
    """
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, t in effective_state(model).items():  # masked weights, not their parametrization
        key = _storage_key(t)
        if t.numel() and key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().contiguous()
    encodings: dict[str, Any] = {}
    if compress:
        tensors, encodings = encode_state(tensors)
    return st_save(tensors), tied, encodings


def effective_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` with parametrized tensors (e.g. sparsity masks) replaced by their effective values."""
    state = model.state_dict(keep_vars=False)
    for prefix, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        dot = f"{prefix}." if prefix else ""
        for name in module.parametrizations:
            head = f"{dot}parametrizations.{name}."
            state = {k: v for k, v in state.items() if not k.startswith(head)}
            state[f"{dot}{name}"] = getattr(module, name).detach()
    return state


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    example: torch.Tensor | None = None,
    force: bool = False,
    compress: bool = True,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write ``path/`` = spec.json + weights.safetensors (+ ``extra_files``), atomically."""
    arch = arch_of(model)
    if arch is None:
        raise ModelFileError(
            f"cannot save {type(model).__name__}: slimkit does not know how to rebuild it; create it with "
            "slimkit.zoo.create(...) or slimkit.load(weights, factory='module:function')"
        )
    if example is not None:
        record_input(model, example)
        arch = arch_of(model)
    data, tied, encodings = weights_bytes(model, compress=compress)
    spec = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "tied": tied,
        "encodings": encodings,
        "history": [r.to_dict() for r in records(model)],
        "slimkit": _version(),
        "torch": torch.__version__,
    }
    with atomic_path(path, force=force) as tmp:
        tmp.mkdir()
        (tmp / WEIGHTS).write_bytes(data)
        (tmp / SPEC).write_text(json.dumps(spec, indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return Path(path)


def load_checkpoint(path: Path, *, factory: str | None = None) -> nn.Module:
    """Rebuild a model from a checkpoint folder. A factory-built model needs ``factory`` to confirm."""
    spec_path = path / SPEC
    if not spec_path.is_file():
        raise ModelFileError(f"{path} is not a slimkit checkpoint: it has no {SPEC}")
    try:
        spec = json.loads(spec_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(
            f"{spec_path} is not valid JSON ({exc}); the checkpoint is damaged, save it again"
        ) from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT or not isinstance(spec.get("arch"), dict):
        raise ModelFileError(f"{spec_path} is not a slimkit checkpoint spec (format {FORMAT!r} with an 'arch' entry)")
    if spec.get("version", 0) > VERSION:
        raise ModelFileError(
            f"{path} was written by a newer slimkit (format version {spec['version']}); upgrade slimkit"
        )
    arch = spec["arch"]
    model = build(arch, factory=factory, where=str(spec_path))
    load_weights(model, path / WEIGHTS, tied=spec.get("tied", {}), encodings=spec.get("encodings", {}))
    set_arch(model, arch)
    return model


def build(arch: dict[str, Any], *, factory: str | None, where: str) -> nn.Module:
    """Instantiate the architecture described by ``arch``."""
    kwargs = arch.get("kwargs", {})
    if arch.get("kind") == "zoo":
        model = create(arch["name"], **kwargs)
    elif arch.get("kind") == "factory":
        if factory is None:
            raise ModelFileError(
                f"{where} was built by {arch.get('factory')!r}; loading it imports that code, so confirm with "
                f"factory={arch.get('factory')!r} (CLI: --factory)"
            )
        model = build_from_factory(factory, kwargs)
    else:
        raise ModelFileError(f"{where}: unknown architecture kind {arch.get('kind')!r} (expected 'zoo' or 'factory')")
    replay(model, arch.get("changes", []), where)
    return model


def build_from_factory(factory: str, kwargs: dict[str, Any]) -> nn.Module:
    """Call ``module.path:function(**kwargs)`` named by the user; the result remembers the factory."""
    module_name, _, attr = factory.partition(":")
    if not module_name or not attr:
        raise ModelFileError(f"factory must look like 'package.module:function', got {factory!r}")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelFileError(f"cannot import factory {factory!r}: {exc}") from None
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelFileError(f"factory {factory!r} returned {type(model).__name__}, not a torch.nn.Module")
    set_arch(model, {"kind": "factory", "factory": factory, "kwargs": kwargs})
    return model


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelFileError(f"missing weights file {path}")
    try:
        return st_load(path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path} is not a valid safetensors file ({exc}); the file is damaged") from None


def load_weights(
    model: nn.Module, path: Path, *, tied: dict[str, str] | None = None, encodings: dict[str, Any] | None = None
) -> None:
    """Load safetensors weights into ``model``, checking every name and shape."""
    state = decode_state(read_safetensors(path), encodings or {})
    for alias, source in (tied or {}).items():
        if source in state:
            state[alias] = state[source]
    expected = model.state_dict()
    stored = {_storage_key(t): name for name, t in expected.items() if name in state}
    for name, t in expected.items():  # a file that stores tied weights once (safetensors.torch.save_model)
        if name not in state and _storage_key(t) in stored:
            state[name] = state[stored[_storage_key(t)]]
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ModelFileError(
            f"{path} does not match the architecture: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    for name, want in expected.items():  # in layer order, so the first mismatch named is the earliest one
        got = state[name]
        if got.shape != want.shape:
            raise ModelFileError(
                f"{path}: tensor {name!r} has shape {tuple(got.shape)}, the architecture expects {tuple(want.shape)}"
            )
    model.load_state_dict(state)
    model.eval()


def _version() -> str:
    from slimkit import __version__

    return __version__
