"""Model files without pickle: slimkit checkpoints, safetensors + factory, ``.pt2``, ONNX.

>>> import tempfile, slimkit as sk
>>> path = sk.save(sk.zoo.create("lenet5"), f"{tempfile.mkdtemp()}/ckpt")  # spec.json + weights.safetensors
>>> type(sk.load(path)).__name__
'Sequential'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.core.errors import ModelFileError, SlimkitError, UnknownModelError, first_line
from slimkit.core.files import atomic_path
from slimkit.core.model import check_input, example_input
from slimkit.io.checkpoint import build_from_factory, load_checkpoint, load_weights, save_checkpoint
from slimkit.io.onnx import OnnxModel, export_inputs, export_onnx, exporting, onnx_agreement
from slimkit.io.pretrained import find_pretrained, is_pretrained_folder, load_pretrained, save_pretrained
from slimkit.io.pt2 import load_program

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
ACCEPTED = (
    "a checkpoint folder, .safetensors (with factory=), .pt2, .onnx, an OpenVINO .xml, "
    "or a pickle (.pt/.pth, trust_pickle=True)"
)

__all__ = ["OnnxModel", "export", "load", "onnx_agreement", "save", "save_pretrained"]


def save(
    model: nn.Module,
    path: str | Path,
    *,
    example: torch.Tensor | None = None,
    force: bool = False,
    compress: bool = True,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Save ``model`` as a slimkit checkpoint folder (``spec.json`` + ``weights.safetensors``).

    ``example`` records the input shape so that the checkpoint can be exported later without data.
    ``compress`` stores sparse and weight-shared tensors in an exact compact form (a pruned or
    clustered model's file really shrinks). An existing ``path`` is only replaced with
    ``force=True``; the write is atomic. A Hugging Face ``transformers`` model (no zoo name or
    factory) is written as a ``save_pretrained`` folder instead (:func:`save_pretrained`, checked
    against ``example``), which :func:`load` and its own class read back.
    """
    try:
        return save_checkpoint(model, path, example=example, force=force, compress=compress, extra_files=extra_files)
    except UnknownModelError:
        if find_pretrained(model) is None:
            raise
        return save_pretrained(model, path, example, force=force, extra_files=extra_files)


def load(
    path: str | Path, *, factory: str | None = None, kwargs: dict[str, Any] | None = None, trust_pickle: bool = False
) -> Any:
    """Load a model from ``path``; never unpickles unless ``trust_pickle=True``.

    - checkpoint folder: rebuilt from its spec (zoo models need nothing else);
    - Hugging Face model folder (``config.json`` + ``.safetensors``): the ``transformers`` class its
      config names (:func:`slimkit.io.pretrained.load_pretrained`; no code from the folder runs);
    - ``.safetensors``: weights for ``factory`` (``"package.module:function"``, called with ``kwargs``);
    - ``.pt2``: a ``torch.export`` program (returned as a module that evaluates and exports); an
      archive that would unpickle (or load compiled code) is refused unless ``trust_pickle=True``;
    - ``.onnx``: an :class:`OnnxModel` run by ONNX Runtime (for evaluation); ``.xml``: an OpenVINO IR,
      an :class:`OnnxModel` run by OpenVINO;
    - ``.pt``/``.pth``/...: a ``torch.save`` pickle, refused unless ``trust_pickle=True`` (then
      ``weights_only=True`` is tried first).
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"no such model file or checkpoint: {path}")
    suffix = path.suffix.lower()
    if path.is_dir():
        return load_pretrained(path) if is_pretrained_folder(path) else load_checkpoint(path, factory=factory)
    if suffix == ".safetensors":
        if factory is None:
            raise ModelFileError(f"{path} holds weights only; name the architecture with factory='module:function'")
        model = build_from_factory(factory, kwargs or {})
        load_weights(model, path)
        return model
    if suffix == ".pt2":
        return load_program(path, trust_pickle=trust_pickle)
    if suffix == ".onnx":
        return OnnxModel(path)
    if suffix == ".xml":
        return OnnxModel(path, runtime="openvino")
    if suffix in PICKLE_SUFFIXES:
        return _load_pickle(path, factory=factory, kwargs=kwargs or {}, trust=trust_pickle)
    raise ModelFileError(f"cannot load {path}: unknown file type {suffix!r}; accepted: {ACCEPTED}")


def _load_pickle(path: Path, *, factory: str | None, kwargs: dict[str, Any], trust: bool) -> nn.Module:
    if not trust:
        raise ModelFileError(
            f"{path} is a pickle, and loading a pickle can run arbitrary code; convert it to safetensors, "
            "or if you trust its source pass trust_pickle=True (CLI: --trust-pickle)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a plain state dict: the user vouched for the file, so unpickle fully
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ModelFileError(f"{path} is not a readable torch.save file ({first_line(exc)})") from None
    if isinstance(obj, nn.Module):
        return obj.eval()
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if factory is None:
            raise ModelFileError(f"{path} holds a state dict; name the architecture with factory='module:function'")
        model = build_from_factory(factory, kwargs)
        try:
            model.load_state_dict(obj)
        except RuntimeError as exc:
            raise ModelFileError(f"{path} does not fit {factory}: {first_line(exc)}") from None
        return model.eval()
    raise ModelFileError(f"{path} holds a {type(obj).__name__}, not a module or a state dict")


def export(model: nn.Module, path: str | Path, example: Any = None, *, force: bool = False) -> Path:
    """Export ``model`` to ONNX (``.onnx``) or ``torch.export`` (``.pt2``) with a dynamic batch size.

    ``example`` is an input batch (a tensor, a tuple or a dict of tensors); if omitted, the input
    shape recorded in the model is used.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".onnx", ".pt2"):
        raise ModelFileError(f"cannot export to {path}: use a .onnx or .pt2 file name")
    if example is None:
        example = example_input(model)
        if example is None:
            raise ModelFileError("pass an example input batch: this model has no recorded input shape")
    check_input(model, example)
    with atomic_path(path, force=force) as tmp:
        if suffix == ".onnx":
            export_onnx(model, tmp, example)
        else:
            args, kwargs, dynamic = export_inputs(model, example)
            with exporting(model):
                try:
                    program = torch.export.export(model, args, kwargs, dynamic_shapes=dynamic)
                except Exception as exc:  # torch.export raises many types; name the model and the cause
                    raise SlimkitError(f"torch.export of {type(model).__name__} failed: {first_line(exc)}") from exc
                torch.export.save(program, str(tmp))
    return path
