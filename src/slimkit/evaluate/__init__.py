"""Measure a model: quality on a data split and cost (params, MACs, file size, latency).

>>> import slimkit as sk
>>> data = sk.data.load("digits")
>>> model = sk.zoo.create_for("resnet_cifar", data, depth=8)
>>> report = sk.evaluate(model, data, latency_runs=3)
>>> sorted(report.metrics)
['accuracy', 'f1', 'loss', 'precision', 'recall']
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.core.errors import SlimkitError
from slimkit.core.model import check_input, eval_mode, model_name
from slimkit.core.optional import available
from slimkit.evaluate.cost import batch_of, count_macs, count_params, measure_latency, torch_latency
from slimkit.evaluate.fidelity import docstring_sentences, fidelity
from slimkit.evaluate.report import Comparison, Report, compare
from slimkit.graph.trace import call_model
from slimkit.task import Classification, Task, get_task

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


def predict(model: Any, loader: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (N, K) and labels (N,) of a classifier (a module or OnnxModel) over ``loader``."""
    task = Classification()
    probs, labels = [], []
    ctx = eval_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext()
    with ctx, torch.inference_mode():
        for batch in loader:
            x, y = task.split(batch)
            probs.append(torch.softmax(task.predict(model, x), dim=1).cpu().numpy())
            labels.append(torch.as_tensor(y).cpu().numpy())
    return np.concatenate(probs), np.concatenate(labels)


def accuracy(model: nn.Module, loader: Iterable) -> float:
    """Top-1 accuracy of a classifier over ``loader`` (eval mode, no gradients): the quick check used
    inside search loops (soups, layer-drop); :func:`evaluate` gives the full report."""
    return Classification().evaluate(model, loader)["accuracy"]


def data_task(data: Any, task: Task | str | None = None) -> Task:
    """The task to score ``data`` with: ``task`` if given, else the one the data names, else classification."""
    return get_task(task if task is not None else getattr(data, "task", None))


def evaluate(
    model: Any,
    data: Any,
    *,
    task: Task | str | None = None,
    split: str = "test",
    batch_size: int = 256,
    max_batches: int | None = None,
    latency: bool = True,
    batch_sizes: tuple[int, ...] = (1, 64),
    latency_runs: int = 30,
    onnx: bool | None = None,
    runtime: str = "onnxruntime",
    metrics: dict[str, float] | None = None,
    example_inputs: Any = None,
) -> Report:
    """Evaluate ``model`` (an ``nn.Module`` or :class:`slimkit.io.OnnxModel`) on ``data``.

    ``data`` is a :class:`slimkit.data.Dataset` or :class:`slimkit.data.Loaders` (its ``split`` is
    used) or any iterable of batches (a DataLoader). ``task`` (default: the data's, else
    classification) reads the batches and gives the metrics; ``max_batches`` bounds the batches
    scored. Latency is the median of ``latency_runs`` timed calls after warm-up, per batch size, in
    torch eager mode; ``onnx=True`` also measures ``runtime`` (``"onnxruntime"`` or ``"openvino"``)
    on an exported copy (default: when the ``onnx`` extra is installed and the model takes one
    tensor). An :class:`~slimkit.io.OnnxModel` is timed on the runtime it was opened with.

    ``metrics`` measured elsewhere (the user's own evaluation) replace the scoring: then ``data`` may
    be None and ``example_inputs`` (a batch of model inputs) times and counts the model.
    """
    from slimkit.data import as_loader
    from slimkit.io.onnx import OnnxModel, check_runtime

    task = data_task(data, task)
    data_name = getattr(data, "name", "data" if metrics is None else "the user's evaluate")
    loader = None
    if metrics is None or example_inputs is None:
        loader = as_loader(data, split, batch_size=batch_size)
        if loader is None:
            raise SlimkitError("evaluate needs data (a Dataset, Loaders or DataLoader), or metrics and example_inputs")
    if example_inputs is None:
        try:
            example_inputs = task.inputs(next(iter(loader)))
        except StopIteration:
            raise SlimkitError(f"cannot evaluate: the {split} data is empty") from None
    example = example_inputs
    if runtime != "onnxruntime":  # the default is optional (measured when installed); another must be there
        check_runtime(runtime)
    is_module = isinstance(model, nn.Module)
    if is_module:
        check_input(model, example)
    elif not isinstance(model, OnnxModel):
        raise SlimkitError(f"cannot evaluate a {type(model).__name__}: pass a torch.nn.Module or an OnnxModel")

    meter = None
    if metrics is None:
        meter = task.run(model, loader, max_batches=max_batches)
        metrics = meter.result()
    times: dict[str, float] = {}
    if is_module:
        params, macs = count_params(model), count_macs(model, example)
        from slimkit.io.checkpoint import weights_bytes

        size = len(weights_bytes(model)[0])  # the checkpoint's weights file
        if latency:
            times = torch_latency(model, example, batch_sizes, runs=latency_runs)
            single = isinstance(example, torch.Tensor)
            if onnx or (onnx is None and single and available(runtime) and available("onnxscript")):
                times |= _onnx_latency(model, example, batch_sizes, latency_runs, runtime)
    else:
        params, macs, size = model.params, None, model.bytes
        if latency:
            times = _runtime_times(model, example, batch_sizes, latency_runs)
    return Report(
        model=model_name(model),
        data=data_name,
        split=split,
        samples=0 if meter is None else meter.samples,
        metrics=metrics,
        confusion=getattr(meter, "confusion", np.zeros((0, 0))).tolist(),
        params=params,
        macs=macs,
        bytes=size,
        latency_ms=times,
        env={"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine()},
        task=task.name if meter is not None else "user",
        metric=task.metric,
    )


def _runtime_times(model: Any, example: Any, batch_sizes: tuple[int, ...], runs: int) -> dict[str, float]:
    """``{"<runtime>/b<batch>": ms}`` of an :class:`~slimkit.io.OnnxModel`."""
    out = {}
    for b in batch_sizes:
        x = batch_of(example, b)
        out[f"{model.runtime}/b{b}"] = measure_latency(lambda x=x: call_model(model, x), runs=runs)
    return out


def _onnx_latency(
    model: nn.Module, example: torch.Tensor, batch_sizes: tuple[int, ...], runs: int, runtime: str
) -> dict[str, float]:
    """``runtime``'s latency of a temporary ONNX export of ``model``."""
    import tempfile
    from pathlib import Path

    from slimkit.io.onnx import OnnxModel, export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, path, example)
        return _runtime_times(OnnxModel(path, runtime=runtime), example, batch_sizes, runs)
