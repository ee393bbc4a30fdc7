"""ONNX export (PyTorch's exporter) and ONNX models run by ONNX Runtime or OpenVINO, which slimkit can evaluate."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.core.errors import ModelFileError, ShapeError, SlimkitError, first_line
from slimkit.core.model import eval_mode
from slimkit.core.optional import available, require
from slimkit.io.transposes import drop_transposes


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' warnings and log chatter (they are not the user's problem)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


@contextlib.contextmanager
def exporting(model: nn.Module) -> Iterator[None]:
    """What an export runs in: eval mode, the exporters :func:`quiet` and, in a Hugging Face model,
    ``config.use_cache`` off (a decoder's key / value cache is not a tensor a program can return:
    GPT-2, Llama or Qwen2 classifiers otherwise fail to export) and mixture-of-experts layers run as
    plain matmuls (:func:`slimkit.io.pretrained.dense_experts`: ONNX has no grouped matmul, and the
    loop of the eager experts depends on the data)."""
    cached = {id(c): c for m in model.modules() if getattr(c := getattr(m, "config", None), "use_cache", False)}
    experts = {  # layers transformers' ``use_experts_implementation`` made switchable (it sets ``has_gate``)
        id(c): (c, c._experts_implementation_internal)
        for m in model.modules()
        if hasattr(m, "has_gate")
        and isinstance(getattr(c := getattr(m, "config", None), "_experts_implementation_internal", None), str)
    }
    if experts:
        from transformers.integrations.moe import ExpertsInterface

        from slimkit.io import pretrained

        ExpertsInterface.register(pretrained.DENSE_EXPERTS, pretrained.dense_experts)
        for config, _ in experts.values():
            config._experts_implementation_internal = pretrained.EXPORT_EXPERTS
    for config in cached.values():
        config.use_cache = False
    try:
        with eval_mode(model), quiet():
            yield
    finally:
        for config in cached.values():
            config.use_cache = True
        for config, implementation in experts.values():
            config._experts_implementation_internal = implementation


TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def export_inputs(model: nn.Module, example: Any) -> tuple[tuple, dict[str, torch.Tensor], Any]:
    """``(args, kwargs, dynamic_shapes)`` for ``torch.export`` / ``torch.onnx.export`` of ``model`` on
    ``example``: a tensor, a tuple of tensors (positional inputs) or a dict (keyword inputs), on the
    model's device, grown to at least 2 rows (size 1 would be specialised) with a dynamic batch
    dimension; the token inputs of a dict (``input_ids``, ``attention_mask``...) get a dynamic length too."""
    from torch.export import Dim

    from slimkit.core.device import model_device, to_device
    from slimkit.evaluate.cost import batch_of
    from slimkit.graph.trace import flat_tensors

    rows = len(next(iter(flat_tensors(example))))
    x = to_device(batch_of(example, max(2, rows)), model_device(model))
    batch = Dim("batch")
    if isinstance(x, dict):
        token = {0: batch, 1: Dim.DYNAMIC}
        return (), x, {k: token if k in TOKEN_INPUTS and v.dim() == 2 else {0: batch} for k, v in x.items()}
    if isinstance(x, tuple | list):
        return tuple(x), {}, tuple({0: batch} for _ in x)
    return (x,), {}, ({0: batch},)


def export_onnx(model: nn.Module, path: Path, example: Any) -> None:
    """Export to a single self-contained ONNX file with a dynamic batch dimension (``example``: a
    tensor, a tuple or a dict of input tensors, see :func:`export_inputs`), without the transposes
    ONNX Runtime would run as copies (see :mod:`slimkit.io.transposes`)."""
    require("onnxscript", extra="onnx")
    args, kwargs, dynamic = export_inputs(model, example)
    with exporting(model):
        try:
            torch.onnx.export(
                model, args, str(path), kwargs=kwargs, dynamo=True, external_data=False, dynamic_shapes=dynamic
            )
        except Exception as exc:  # the exporter raises many types; name the model and the innermost cause
            cause = exc
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise SlimkitError(f"ONNX export of {type(model).__name__} failed: {first_line(cause)}") from exc
    onnx = require("onnx", extra="onnx")
    proto = onnx.load(str(path))
    drop_transposes(proto)
    _strip(proto)
    onnx.save(proto, str(path))


def strip_debug_info(path: Path, *, rename: bool = False) -> None:
    """Drop what only debugging needs from an ONNX file, in place: per-node metadata (the exporter's
    stack traces, which name the user's source files), doc strings, intermediate shape annotations
    and the exporter's graph notes. ``rename`` also replaces internal tensor and node names by short
    ones (the graph's inputs and outputs keep theirs): on a small quantized model the generated
    names are ~5% of the file. ONNX Runtime needs none of it."""
    onnx = require("onnx", extra="onnx")
    model = onnx.load(str(path))
    _strip(model, rename)
    onnx.save(model, str(path))


def _strip(model: Any, rename: bool = False) -> None:
    """:func:`strip_debug_info` on an ``onnx.ModelProto``, in place."""
    graph = model.graph
    del graph.value_info[:]
    del graph.metadata_props[:]
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    nested = any(a.type in (a.GRAPH, a.GRAPHS) for n in graph.node for a in n.attribute)  # outer-scope names
    if rename and not nested and not graph.sparse_initializer:
        keep = {v.name for v in (*graph.input, *graph.output)}
        names: dict[str, str] = {}

        def short(name: str) -> str:
            return name if not name or name in keep else names.setdefault(name, f"t{len(names)}")

        for init in graph.initializer:
            init.name = short(init.name)
        for i, node in enumerate(graph.node):
            node.name = f"n{i}"
            node.input[:] = [short(n) for n in node.input]
            node.output[:] = [short(n) for n in node.output]


RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
RUNTIMES = tuple(RUNTIME_NAMES)  # the runtimes slimkit runs and times ONNX files on


def runtimes() -> list[str]:
    """The runtimes installed here (of :data:`RUNTIMES`), without importing them."""
    return [r for r in RUNTIMES if available(r)]


def check_runtime(runtime: str) -> str:
    """``runtime`` if it is known and installed, else a one-line error saying what to do."""
    if runtime not in RUNTIMES:
        raise SlimkitError(f"unknown runtime {runtime!r}: choose {' or '.join(RUNTIMES)}")
    require(runtime, extra="onnx" if runtime == "onnxruntime" else "openvino")
    return runtime


class _Input:
    def __init__(self, name: str, shape: list[int | str]) -> None:
        self.name, self.shape = name, shape


class OpenVinoSession:
    """An OpenVINO model compiled for the CPU behind ONNX Runtime's session interface (``run``,
    ``get_inputs``), so that everything that runs an ONNX file runs it on either runtime.

    OpenVINO reads ONNX files and its own IR (``.xml`` + ``.bin``). It computes in fp32 here: on CPUs
    with bfloat16 units its default is bf16, which changes the model's outputs (~1e-3 on the demo CNN);
    ``precision="bf16"`` asks for that.
    """

    def __init__(self, path: Path, threads: int, precision: str = "f32") -> None:
        ov = require("openvino", extra="openvino")
        core = ov.Core()
        with self._reason():
            self.model = core.read_model(str(path))
            config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision}
            self.compiled = core.compile_model(self.model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    @staticmethod
    @contextlib.contextmanager
    def _reason() -> Iterator[None]:
        """OpenVINO's errors as their last line (the cause: "No conversion rule found for operations:
        com.example.Foo"), not the first (the C++ source file that raised)."""
        try:
            yield
        except Exception as exc:  # OpenVINO raises RuntimeError and its own types
            lines = [line.strip().removeprefix("-- ") for line in str(exc).splitlines() if line.strip()]
            raise RuntimeError(lines[-1] if lines else type(exc).__name__) from None

    def get_inputs(self) -> list[_Input]:
        return [
            _Input(i.any_name, [d.get_length() if d.is_static else "?" for d in i.get_partial_shape()])
            for i in self.model.inputs
        ]

    def run(self, output_names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._reason():
            out = self.request.infer(feeds)
        return [np.asarray(out[o]) for o in self.compiled.outputs]

    def params(self) -> int:
        """Weights in the graph's float constants (what ``OnnxModel.params`` counts in an ONNX file)."""
        return sum(
            int(np.prod(list(op.get_output_shape(0))))
            for op in self.model.get_ops()
            if op.get_type_name() == "Constant" and op.get_output_element_type(0).is_real()
        )


def open_session(path: Path, runtime: str = "onnxruntime", threads: int | None = None) -> Any:
    """A session running the ONNX file (or OpenVINO IR) at ``path`` on ``runtime`` on the CPU; a
    file the runtime cannot load or run is a one-line :class:`ModelFileError` naming the cause."""
    check_runtime(runtime)
    threads = threads or torch.get_num_threads()
    if path.suffix.lower() == ".xml" and runtime != "openvino":
        raise ModelFileError(f"{path} is an OpenVINO IR: run it with runtime openvino")
    try:
        if runtime == "openvino":
            return OpenVinoSession(path, threads)
        ort = require("onnxruntime", extra="onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # each runtime raises its own exception types
        raise ModelFileError(f"{path} cannot run on {runtime}: {first_line(exc)}") from None


class OnnxModel:
    """An ONNX file (or an OpenVINO IR ``.xml``) run by ONNX Runtime or OpenVINO; callable on a torch
    batch like a module.

    Example: ``OnnxModel("model.onnx")(torch.zeros(1, 1, 28, 28))`` gives the logits;
    ``OnnxModel("model.onnx", runtime="openvino")`` runs the same file on OpenVINO.
    """

    def __init__(self, path: str | Path, threads: int | None = None, runtime: str = "onnxruntime") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"no such ONNX file: {self.path}")
        self.runtime = runtime
        self.bytes = self.path.stat().st_size
        if self.path.suffix.lower() == ".xml":  # OpenVINO IR: the weights are in the .bin beside it
            self.session = open_session(self.path, runtime, threads)
            self.params = self.session.params()
            weights = self.path.with_suffix(".bin")
            self.bytes += weights.stat().st_size if weights.is_file() else 0
        else:
            onnx = require("onnx", extra="onnx")
            try:
                proto = onnx.load(str(self.path))
            except Exception as exc:  # onnx raises its own exception types
                raise ModelFileError(f"{self.path} is not a loadable ONNX model ({first_line(exc)})") from None
            self.session = open_session(self.path, runtime, threads)
            index_types = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)  # shapes and axes, not weights
            self.params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer if t.data_type not in index_types)
        self.name = self.path.stem
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_name = self.input_names[0]
        self.input_shape = list(self.session.get_inputs()[0].shape)  # ints, or names for dynamic dims

    def __call__(self, x: torch.Tensor | None = None, *more: torch.Tensor, **named: torch.Tensor) -> torch.Tensor:
        """The (first) output for one input tensor, for several (positional: the graph's input order)
        or for named inputs (``input_ids=..., attention_mask=...``)."""
        if more or named or x is None:
            return self._run_many((() if x is None else (x,)) + more, named)
        if x.dim() == 4 and not self._fits(x.shape) and self._fits(x.permute(0, 2, 3, 1).shape):
            x = x.permute(0, 2, 3, 1)  # a channels-last model (e.g. exported from Keras) fed NCHW data
        got = f"shape {tuple(x.shape)} and dtype {str(x.dtype).removeprefix('torch.')}"
        if not self._fits(x.shape):
            want = ", ".join(
                "N" if i == 0 and not isinstance(d, int) else str(d) for i, d in enumerate(self.input_shape)
            )
            raise ShapeError(f"{self.name} expects inputs of shape ({want}), got {got}")
        try:
            out = self.session.run(None, {self.input_name: x.detach().cpu().numpy()})[0]
        except Exception as exc:  # the runtimes raise their own types (wrong dtype, a dimension it cannot take)
            raise ShapeError(f"{self.name} cannot run on inputs of {got}: {first_line(exc)}") from None
        return torch.from_numpy(out)

    def _run_many(self, args: tuple, named: dict[str, torch.Tensor]) -> torch.Tensor:
        feeds = dict(zip(self.input_names, args, strict=False)) | named
        if len(args) > len(self.input_names) or set(feeds) != set(self.input_names):
            raise ShapeError(
                f"{self.name} takes the inputs {', '.join(self.input_names)}; got "
                f"{len(args)} positional and {', '.join(named) or 'no'} named"
            )
        try:
            out = self.session.run(None, {k: v.detach().cpu().numpy() for k, v in feeds.items()})[0]
        except Exception as exc:  # the runtimes raise their own types
            raise ShapeError(f"{self.name} cannot run on these inputs: {first_line(exc)}") from None
        return torch.from_numpy(out)

    def _fits(self, shape: torch.Size) -> bool:
        return len(shape) == len(self.input_shape) and all(
            not isinstance(want, int) or want == got for want, got in zip(self.input_shape, shape, strict=True)
        )


def onnx_agreement(model: nn.Module, path: Path, inputs: Any, batch_size: int = 256) -> dict[str, float]:
    """How closely ONNX Runtime reproduces ``model`` on ``inputs`` (a tensor, or a tuple / dict of
    them: several model inputs): the largest absolute output difference, and for class scores (an
    output of shape ``(N, K)``, ``K > 1``) the share of samples with the same top-1 class."""
    from slimkit.graph import map_batch
    from slimkit.graph.trace import call_model, flat_tensors
    from slimkit.task import output_tensor

    onnx_model = OnnxModel(path)
    rows = len(next(iter(flat_tensors(inputs))))
    same, diff, classes = 0, 0.0, True
    with eval_mode(model), torch.no_grad():
        for start in range(0, rows, batch_size):
            xb = map_batch(inputs, lambda t, s=start: t[s : s + batch_size])
            a = output_tensor(call_model(model, xb))
            b = call_model(onnx_model, xb)
            classes = classes and a.dim() == 2 and a.shape[1] > 1
            if classes:
                same += int((a.argmax(1) == b.argmax(1)).sum())
            diff = max(diff, float((a - b).abs().max()))
    return {"top1_agreement": same / rows, "max_abs_diff": diff} if classes else {"max_abs_diff": diff}
