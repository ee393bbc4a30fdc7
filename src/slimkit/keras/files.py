"""Atomic ``.keras`` saving and ONNX export of Keras models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimkit.core.errors import SlimkitError
from slimkit.core.files import atomic_path
from slimkit.keras._graph import _call_once

__all__ = ["export_onnx", "is_keras_file", "save"]


def is_keras_file(path: str | Path) -> bool:
    """Whether ``path`` names a Keras 3 model file (by its ``.keras`` suffix)."""
    return Path(path).suffix.lower() == ".keras"


def save(model: Any, path: str | Path, *, force: bool = False) -> Path:
    """``model.save(path)`` written atomically (``path`` must end in ``.keras``)."""
    path = Path(path)
    if not is_keras_file(path):
        raise SlimkitError(f"{path}: a Keras model is saved as a .keras file")
    with atomic_path(path, force=force) as tmp:
        model.save(tmp)
    return path


def export_onnx(model: Any, path: str | Path, *, force: bool = False) -> Path:
    """The model as an ONNX file (Keras' ``model.export(format="onnx")``, dynamic batch), written atomically.

    The ONNX input keeps the Keras layout (channels-last for images); :class:`slimkit.io.OnnxModel`
    also accepts channels-first batches for it.
    """
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise SlimkitError(f"{path}: Keras models export to .onnx files (.pt2 is for PyTorch models)")
    _call_once(model, list(model.inputs))  # Keras refuses to export a model that was never called
    from slimkit.io.onnx import quiet

    with atomic_path(path, force=force) as tmp, quiet():
        model.export(str(tmp), format="onnx", verbose=False)
    return path
