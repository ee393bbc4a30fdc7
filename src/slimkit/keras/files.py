"""Reading ``.keras`` files with one-line errors, atomic ``.keras`` saving and ONNX export of Keras models."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

from slimkit.core.errors import ModelFileError, SlimkitError, first_line
from slimkit.core.files import atomic_path
from slimkit.keras._graph import _call_once, keras_module

__all__ = ["export_onnx", "is_keras_file", "load_file", "save"]


def is_keras_file(path: str | Path) -> bool:
    """Whether ``path`` names a Keras 3 model file (by its ``.keras`` suffix)."""
    return Path(path).suffix.lower() == ".keras"


def load_file(path: str | Path) -> Any:
    """The model in a ``.keras`` file, loaded in Keras' safe mode (no Python code from the file).

    Every problem is a one-line :class:`ModelFileError`: a missing file, a file that is not a
    Keras archive (empty, truncated, another format), or a model Keras refuses to rebuild (custom
    classes, lambdas).
    """
    path = Path(path)
    if not is_keras_file(path):
        raise ModelFileError(f"{path}: expected a .keras file (Keras 3 format)")
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as archive:
            valid = "config.json" in archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        valid = False
    if not valid:
        raise ModelFileError(
            f"{path}: cannot load: not a valid Keras archive (a .keras file is a zip holding config.json); "
            "the file is empty or damaged, save the model again with model.save('model.keras')"
        )
    keras = keras_module()
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # keras raises ValueError/TypeError/... with multi-line config dumps
        raise ModelFileError(f"{path}: cannot load this .keras file ({_refusal(exc)})") from None


def _refusal(exc: Exception) -> str:
    """One line saying why Keras refused a model (its messages embed whole configs over many lines)."""
    text = str(exc)
    found = re.search(r"Could not locate (class|function) '([^']+)'", text)
    if found:
        kind, name = found.groups()
        return (
            f"it uses the {kind} {name!r}, which is not built into Keras; slimkit loads built-in layers only, "
            "so rebuild the model from Keras layers"
        )
    if "Lambda" in text and "safe_mode" in text:
        return "it holds a Lambda layer with Python code, which is not loaded from files; rebuild it without Lambda"
    line = first_line(exc)
    return line if len(line) <= 200 else f"{line[:197]}..."


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
