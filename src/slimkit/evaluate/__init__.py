"""Measure a model: quality on a data split and cost (params, MACs, file size, latency).

>>> import slimkit as sk
>>> data = sk.data.load("digits")
>>> model = sk.zoo.create_for("resnet_cifar", data, depth=8)
>>> report = sk.evaluate(model, data, latency_runs=3)
>>> sorted(report.metrics)
['accuracy', 'f1', 'precision', 'recall']
"""

from __future__ import annotations

import contextlib
import platform
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from slimkit.core.errors import SlimkitError
from slimkit.core.model import check_input, eval_mode, model_name
from slimkit.core.optional import available
from slimkit.evaluate.cost import batch_of, count_macs, count_params, measure_latency, torch_latency
from slimkit.evaluate.fidelity import docstring_sentences, fidelity
from slimkit.evaluate.metrics import classification_metrics
from slimkit.evaluate.report import Comparison, Report, compare

__all__ = [
    "Comparison",
    "Report",
    "accuracy",
    "compare",
    "count_macs",
    "count_params",
    "docstring_sentences",
    "evaluate",
    "fidelity",
    "predict",
]


def predict(model: Any, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (N, K) and labels (N,) of ``model`` (a module or OnnxModel) over ``loader``."""
    probs, labels = [], []
    ctx = eval_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext()
    with ctx, torch.inference_mode():
        for x, y in loader:
            probs.append(torch.softmax(model(x).float(), dim=1).numpy())
            labels.append(y.numpy())
    return np.concatenate(probs), np.concatenate(labels)


def accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy of ``model`` over ``loader`` (eval mode, no gradients): the quick check used
    inside search loops (soups, layer-drop); :func:`evaluate` gives the full report."""
    correct, n = 0, 0
    with eval_mode(model), torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            n += len(y)
    if not n:
        raise SlimkitError("cannot measure accuracy: the data is empty")
    return correct / n


def evaluate(
    model: Any,
    data: Any,
    *,
    split: str = "test",
    batch_size: int = 256,
    latency: bool = True,
    batch_sizes: tuple[int, ...] = (1, 64),
    latency_runs: int = 30,
    onnx: bool | None = None,
) -> Report:
    """Evaluate ``model`` (an ``nn.Module`` or :class:`slimkit.io.OnnxModel`) on ``data``.

    ``data`` is a :class:`slimkit.data.Dataset` (its ``split`` is used) or a DataLoader of
    ``(x, y)`` batches. Latency is the median of ``latency_runs`` timed calls after warm-up, per
    batch size, in torch eager mode; ``onnx=True`` also measures ONNX Runtime on an exported copy
    (default: when the ``onnx`` extra is installed).
    """
    from slimkit.io.onnx import OnnxModel

    if hasattr(data, "loader"):
        loader, data_name, num_classes = data.loader(split, batch_size, shuffle=False), data.name, data.num_classes
    elif isinstance(data, DataLoader):
        loader, data_name, num_classes = data, "data", None
    else:
        raise SlimkitError(f"data must be a slimkit Dataset or a DataLoader, got {type(data).__name__}")
    example = next(iter(loader))[0]
    is_module = isinstance(model, nn.Module)
    if is_module:
        check_input(model, example)
    elif not isinstance(model, OnnxModel):
        raise SlimkitError(f"cannot evaluate a {type(model).__name__}: pass a torch.nn.Module or an OnnxModel")

    probs, labels = predict(model, loader)
    metrics, confusion = classification_metrics(probs, labels, num_classes or probs.shape[1])
    times: dict[str, float] = {}
    if is_module:
        params, macs = count_params(model), count_macs(model, example)
        from slimkit.io.checkpoint import weights_bytes

        size = len(weights_bytes(model)[0])  # the checkpoint's weights file
        if latency:
            times = torch_latency(model, example, batch_sizes, runs=latency_runs)
            if onnx or (onnx is None and available("onnxruntime") and available("onnxscript")):
                times |= _onnx_latency(model, example, batch_sizes, latency_runs)
    else:
        params, macs, size = model.params, None, model.bytes
        if latency:
            times = _ort_times(model, example, batch_sizes, latency_runs)
    return Report(
        model=model_name(model),
        data=data_name,
        split=split,
        samples=len(labels),
        metrics=metrics,
        confusion=confusion,
        params=params,
        macs=macs,
        bytes=size,
        latency_ms=times,
        env={"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine()},
    )


def _ort_times(model: Any, example: torch.Tensor, batch_sizes: tuple[int, ...], runs: int) -> dict[str, float]:
    out = {}
    for b in batch_sizes:
        x = batch_of(example, b)
        out[f"onnxruntime/b{b}"] = measure_latency(lambda x=x: model(x), runs=runs)
    return out


def _onnx_latency(model: nn.Module, example: torch.Tensor, batch_sizes: tuple[int, ...], runs: int) -> dict[str, float]:
    """ONNX Runtime latency of a temporary export of ``model``."""
    import tempfile
    from pathlib import Path

    from slimkit.io.onnx import OnnxModel, export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, path, example)
        return _ort_times(OnnxModel(path), example, batch_sizes, runs)
