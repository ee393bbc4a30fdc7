"""int8 and int4 quantization with ONNX Runtime (static QDQ, dynamic, int4 weight-only) and PyTorch dynamic int8.

:func:`quantize` exports a model to ONNX, pre-processes it (``quant_pre_process``) and quantizes it:

- ``static``: QDQ format, per-channel int8 weights, uint8 activations whose ranges come from
  real calibration batches (MinMax, Entropy or Percentile). Right for convolution-heavy graphs.
  uint8 activations x int8 weights (U8S8) use ONNX Runtime's fast x86 kernels; its default
  (int8 activations, S8S8) ran a ResNet-20 2.4x *slower* than fp32 on a 2-core AVX-512 VNNI CPU
  while U8S8 ran it in 0.6x the time. Without VNNI, U8S8 can saturate, so ``reduce_range``
  (7-bit weights) is turned on there by default.
- ``dynamic``: int8 weights, activations quantized on the fly; no calibration. Right for
  Linear/LSTM-heavy graphs. Dynamic int8 *convolutions* (``ConvInteger``) run several times
  slower than fp32 on CPU, so ``auto`` (the default) picks static when convolutions carry most
  of the MACs and dynamic otherwise, and says why.
- ``int4``: weight-only, block-wise: every ``MatMul`` weight (``nn.Linear``) becomes ONNX
  Runtime's ``MatMulNBits`` and every embedding table ``GatherBlockQuantized``, 4 bits per
  weight with a scale and offset per ``block_size`` weights; activations stay float. About 5x
  smaller files for Linear-heavy models (transformers, recommender MLPs); never chosen by
  ``auto``. The nodes the accuracy check puts back get 8-bit blocks, not float.

With ``max_drop`` (accuracy points on the validation split) the nodes whose quantization costs
the most are left in float, one at a time, until the drop holds (per-node sensitivity: the
validation-logit error of the model with only that node left in float).

Example::

    import slimkit as sk
    from slimkit.compress import QuantizeConfig, quantize

    data = sk.data.load("mnist5k")
    result = quantize(model, data, QuantizeConfig(max_drop=0.3), "model.int8.onnx")
    print(result)                                          # mode chosen and why, accuracy before/after
    print(sk.evaluate(sk.load("model.int8.onnx"), data))   # accuracy, F1, latency in ONNX Runtime
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import itertools
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.compress.onnxgraph import gemm_to_matmul, has_attention, mac_shares, pad_conv_inputs, quantizable_nodes
from slimkit.core.errors import SlimkitError, first_line
from slimkit.core.files import atomic_path, check_output
from slimkit.core.hardware import has_vnni
from slimkit.core.optional import available, quiet, require
from slimkit.core.transform import Config, register_config
from slimkit.io.onnx import RUNTIMES, OnnxModel, check_runtime, strip_debug_info
from slimkit.task import Task, format_metric, in_points, worse_by

MODES = ("auto", "static", "dynamic", "int4")
CALIBRATIONS = ("minmax", "entropy", "percentile")
PLACEMENTS = ("auto", "onnxruntime", "nncf")
NEAR_TIE = 1.05  # candidates whose latencies are within 5% of the fastest's are timed again to choose

TABLES = {
    "rowwise": "row-wise int8 (a scale and offset per row)",
    "onnx": "per-tensor int8 (ONNX Runtime's Gather quantization)",
}


@register_config
@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantizeConfig(Config):
    """How :func:`quantize` makes an int8 ONNX model.

    ``calibration_samples`` training samples calibrate static mode; ``max_drop`` (how much the
    task's metric may degrade on ``split``, in its units: accuracy points, RMSE, AUC...) turns on
    sensitivity-guided exclusion of at most ``max_excluded`` nodes; ``val_batches`` bounds the
    ``split`` batches scored (None: all); ``exclude`` names ONNX nodes that always stay in float.
    ``reduce_range`` (7-bit weights) defaults to on for x86 CPUs without VNNI. ``per_channel="auto"`` uses per-channel
    weight scales in static mode and, in dynamic mode, scores per-channel and per-tensor scales on
    ``split`` and keeps the better (per-tensor is ONNX Runtime's default and sometimes wins on
    recurrent weights). ``embeddings`` (dynamic mode, a PyTorch model's ``nn.Embedding``
    tables): ``"rowwise"`` makes them row-wise int8 (:class:`slimkit.compress.EmbeddingQuantConfig`:
    a scale per row, far finer than ONNX Runtime's per-tensor Gather quantization, but its lookups
    dequantize in four element-wise passes, ~4x the time of one per-tensor dequantization);
    ``"onnx"`` leaves them to ONNX Runtime; ``"auto"`` scores both on ``split`` and keeps
    per-tensor tables unless row-wise ones are more accurate (the layers that read the rows
    quantize their inputs per tensor at run time anyway). ``strip_metadata`` drops debugging data
    from the int8 file and shortens its internal names (see :func:`slimkit.io.onnx.strip_debug_info`).
    ``block_size`` (``int4`` mode): weights per scale and offset (smaller: more accurate, larger file).

    ``runtime`` is where the file will run (default ONNX Runtime): for ``"openvino"`` static int8 is
    made by NNCF (``pip install 'slimkit[openvino]'``), whose placement of the quantize / dequantize
    pairs OpenVINO fuses into its int8 kernels (ONNX Runtime's placement ran the demo CNN at batch 64
    in 0.51x of fp32 on OpenVINO, NNCF's in 0.23x), ``auto`` picks static, and the accuracy check and
    latencies are measured on OpenVINO.

    ``placement`` (static mode) decides where the quantize / dequantize pairs go: ``"onnxruntime"``
    (ONNX Runtime's quantizer), ``"nncf"`` (NNCF's) or ``"auto"``: with ``max_drop`` ONNX Runtime's
    placement as slimkit sets it, ONNX Runtime's default scheme and NNCF's placement (when
    installed; on the pre-processed and on the exported graph) are made, and the fastest at
    ``latency_batch`` rows (default 64; in the loop its target's) on the target runtime is kept among
    those within ``max_drop``; without it, the runtime's own (ONNX Runtime's, NNCF's for OpenVINO).
    Which wins depends on the model, the batch and the runtime: on mnist5k ONNX Runtime's ran
    resnet_cifar at batch 64 in 0.54x of fp32 against NNCF's 0.81x, NNCF's at batch 1 in 0.67x
    against 0.74x (``bench/RESULTS-quantize.md``).

    When the int8 file breaks ``max_drop``, the accuracy check is mixed precision under a latency
    budget: each node's output error *and* latency when left in float are measured (on the target
    runtime at ``latency_batch`` rows, timed taking turns with the all-int8 file), nodes go back to
    float in order of error saved per millisecond added, and a node that would take the file over
    ``max_latency`` of the fp32 file's time is skipped (default: never slower than fp32; no budget
    when the all-int8 file already is). Leaving nodes in float without a budget made a quarter-width
    MobileNetV2 int8 file 1.25x *slower* than fp32 on ONNX Runtime.
    """

    mode: str = "auto"
    calibration: str = "minmax"
    calibration_samples: int = 512
    calibration_batch_size: int = 64
    percentile: float = 99.999
    per_channel: bool | str = "auto"
    max_drop: float | None = None
    max_excluded: int = 8
    exclude: tuple[str, ...] = ()
    split: str = "val"
    val_batches: int | None = None
    reduce_range: bool | None = None
    strip_metadata: bool = True
    embeddings: str = "auto"
    block_size: int = 32
    max_latency: float | None = None
    latency_batch: int | None = None
    runtime: str | None = None
    placement: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.mode not in MODES:
            raise SlimkitError(f"unknown quantization mode {self.mode!r}; choose auto, static, dynamic or int4")
        if self.calibration not in CALIBRATIONS:
            raise SlimkitError(f"unknown calibration {self.calibration!r}; choose minmax, entropy or percentile")
        if self.calibration_samples < 1 or self.calibration_batch_size < 1:
            raise SlimkitError("calibration_samples and calibration_batch_size must be at least 1")
        if self.max_drop is not None and self.max_drop < 0:
            raise SlimkitError(f"max_drop must be >= 0, got {self.max_drop}")
        if self.val_batches is not None and self.val_batches < 1:
            raise SlimkitError(f"val_batches must be at least 1, got {self.val_batches}")
        if self.embeddings not in ("auto", "rowwise", "onnx"):
            raise SlimkitError(f"embeddings must be 'auto', 'rowwise' or 'onnx', got {self.embeddings!r}")
        if self.per_channel not in (True, False, "auto"):
            raise SlimkitError(f"per_channel must be true, false or 'auto', got {self.per_channel!r}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise SlimkitError(f"block_size must be a power of two >= 16, got {self.block_size}")
        if not 0 < self.percentile <= 100:
            raise SlimkitError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.max_latency is not None and self.max_latency <= 0:
            raise SlimkitError(f"max_latency must be a positive share of the fp32 latency, got {self.max_latency}")
        if self.latency_batch is not None and self.latency_batch < 1:
            raise SlimkitError(f"latency_batch must be at least 1, got {self.latency_batch}")
        if self.runtime is not None and self.runtime not in RUNTIMES:
            raise SlimkitError(f"unknown runtime {self.runtime!r}: choose {' or '.join(RUNTIMES)}")
        if self.placement not in PLACEMENTS:
            raise SlimkitError(f"unknown placement {self.placement!r}: choose {', '.join(PLACEMENTS)}")

    @property
    def target_runtime(self) -> str:
        return self.runtime or "onnxruntime"

    @property
    def batch(self) -> int:
        """Rows of the batch latencies are measured at (``latency_batch``; default 64, in the loop its target's)."""
        return self.latency_batch or 64


@dataclasses.dataclass
class QuantizeResult:
    """What :func:`quantize` wrote and measured: the task's ``metric`` on ``split`` before and after."""

    path: Path
    mode: str
    reason: str
    split: str
    metric: str
    fp32_value: float
    int8_value: float
    bytes_fp32: int
    bytes_int8: int
    excluded: list[str] = dataclasses.field(default_factory=list)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    sensitivity: dict[str, float] = dataclasses.field(default_factory=dict)
    layers: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    latency_share: float | None = None
    met_max_drop: bool | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def drop(self) -> float:
        """How much worse the metric got, in its units (points for accuracy)."""
        return worse_by(self.metric, self.fp32_value, self.int8_value)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "path": str(self.path), "drop": self.drop}

    def __str__(self) -> str:
        unit = " points" if in_points(self.metric) else ""
        lines = [
            f"{'int4 weight-only' if self.mode == 'int4' else f'int8 ({self.mode})'} -> {self.path}: {self.reason}",
            f"  {self.split} {self.metric} {format_metric(self.metric, self.fp32_value)} -> "
            f"{format_metric(self.metric, self.int8_value)} ({-self.drop:+.4g}{unit}); "
            f"file {self.bytes_fp32:,} -> {self.bytes_int8:,} bytes "
            f"({self.bytes_int8 / self.bytes_fp32:.3f}x)",
        ]
        if self.excluded:
            kept = "8-bit blocks" if self.mode == "int4" else "float"
            lines.append(f"  left in {kept}: {', '.join(self.excluded)}")
        if self.latency_share is not None:
            how = " (mixed precision)" if self.excluded else ""
            lines.append(f"  latency {self.latency_share:.2f}x of the fp32 file's{how}")
            if self.latency_share > 1:
                lines.append(
                    "  slower than the fp32 file on this runtime at this batch: int8 buys size here, not speed"
                )
        if self.met_max_drop is False:
            lines.append(f"  the {self.metric} limit was NOT met")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _calibration_reader(feeds: list[dict[str, np.ndarray]]) -> Any:
    """ONNX Runtime's calibration reader over ``feeds`` (batches of inputs by ONNX input name)."""
    q = require("onnxruntime.quantization", extra="onnx", package="onnxruntime")

    class Reader(q.CalibrationDataReader):
        """Real input batches for ONNX Runtime's calibrators."""

        def __init__(self) -> None:
            self.batches = feeds
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(self.batches)

        def __len__(self) -> int:
            return len(self.batches)

    return Reader()


def choose_mode(macs: dict[str, int]) -> tuple[str, str]:
    """Static when convolutions carry at least half of the MACs, dynamic otherwise; with the reason."""
    total = sum(macs.values())
    if total == 0:
        return (
            "dynamic",
            "no convolution, MatMul/Gemm or RNN MACs inferred from the graph; dynamic int8 needs no calibration",
        )
    share = macs["conv"] / total
    if share >= 0.5:
        return "static", (
            f"auto: convolutions are {100 * share:.0f}% of the MACs, so static QDQ "
            "(dynamic int8 convolutions run several times slower than fp32 on CPU)"
        )
    return "dynamic", (
        f"auto: Linear/MatMul and RNN layers are {100 * (1 - share):.0f}% of the MACs, so dynamic int8 "
        "(weights int8, activations quantized per batch at run time; no calibration)"
    )


class _Quantizer:
    """One quantization run's files, data and settings (kept in a temporary folder)."""

    def __init__(
        self,
        fp32: Path,
        workdir: Path,
        data: Any,
        cfg: QuantizeConfig,
        mode: str,
        task: Task,
        reference: Path | None = None,
        original: Path | None = None,
    ) -> None:
        """``fp32`` is quantized; ``reference`` (default ``fp32``) gives the outputs it is compared with,
        ``original`` (default ``reference``) the fp32 time latency budgets are shares of."""
        from slimkit.data import as_loader

        self.fp32, self.workdir, self.cfg, self.mode, self.task = fp32, workdir, cfg, mode, task
        self.runtime = cfg.target_runtime
        self.reader = None  # dynamic int8 needs no calibration
        if mode == "static":
            names = OnnxModel(fp32).input_names
            self.calibration = _calibration_feeds(
                data, task, cfg.calibration_samples, names, cfg.calibration_batch_size
            )
            self.reader = _calibration_reader(self.calibration)
        batches = itertools.islice(as_loader(data, cfg.split), cfg.val_batches)
        self.val = [(x, task.reference_targets(x, y)) for x, y in map(task.split, batches)]
        self.example = data.example
        if not self.val:
            raise SlimkitError(f"cannot quantize: the {cfg.split} data is empty")
        runner = OnnxModel(reference or fp32, runtime=self.runtime)
        self.ref_out = [task.predict(runner, x).double() for x, _ in self.val]
        self.fp32_value = self._metric(self.ref_out)
        self.runs = 0
        self.reduce_range = not has_vnni() if cfg.reduce_range is None else cfg.reduce_range
        self.per_channel = cfg.per_channel if isinstance(cfg.per_channel, bool) else True
        self.float_nodes: list[str] = []  # helper nodes that stay in float (not the user's choice)
        self.original = original or reference or fp32
        self.placement = "nncf" if self.runtime == "openvino" else "onnxruntime"  # of static quantize / dequantize
        self.activations = "uint8"  # of static int8 with ONNX Runtime's placement

    def use(self, candidate: _Candidate, sources: dict[str, Path]) -> None:
        """Make the next files as ``candidate`` says, from its graph in ``sources``."""
        self.fp32, self.per_channel = sources[candidate.source], candidate.per_channel
        self.placement, self.activations = candidate.placement, candidate.activations

    def run(self, exclude: list[str]) -> Path:
        q = require("onnxruntime.quantization", extra="onnx", package="onnxruntime")
        self.runs += 1
        out = self.workdir / f"int8-{self.runs}.onnx"
        cfg = self.cfg
        exclude = [*exclude, *(f"{n}_MatMul" for n in exclude), *self.float_nodes]  # ORT splits Gemm first
        with quiet():
            if self.mode == "int4":
                user = set(cfg.exclude) | set(self.float_nodes)
                _weight_only(self.fp32, out, cfg.block_size, [n for n in exclude if n not in user], sorted(user))
            elif self.mode == "static" and self.placement == "nncf":
                _nncf_static(self.fp32, out, self.calibration, exclude)
            elif self.mode == "dynamic":
                q.quantize_dynamic(
                    self.fp32,
                    out,
                    per_channel=self.per_channel,
                    weight_type=q.QuantType.QInt8,
                    nodes_to_exclude=exclude,
                    reduce_range=self.reduce_range,
                )
            else:
                method = {
                    "minmax": q.CalibrationMethod.MinMax,
                    "entropy": q.CalibrationMethod.Entropy,
                    "percentile": q.CalibrationMethod.Percentile,
                }[cfg.calibration]
                self.reader.rewind()
                with _calibration_errors(cfg.calibration):
                    q.quantize_static(
                        self.fp32,
                        out,
                        self.reader,
                        quant_format=q.QuantFormat.QDQ,
                        per_channel=self.per_channel,
                        reduce_range=self.reduce_range,
                        activation_type=q.QuantType.QUInt8 if self.activations == "uint8" else q.QuantType.QInt8,
                        weight_type=q.QuantType.QInt8,
                        nodes_to_exclude=exclude,
                        calibrate_method=method,
                        calibration_cache_path=self.workdir / f"calibration-{self.fp32.stem}.json",
                        extra_options={"CalibPercentile": cfg.percentile, "WeightSymmetric": True},
                    )
        if self.runtime == "onnxruntime":
            drop_zero_bias_offsets(out)
        if cfg.strip_metadata:
            strip_debug_info(out, rename=True)
        return out

    def candidates(self) -> list[str]:
        """Nodes the accuracy check may put back (in ``int4`` mode: the MatMuls, to 8-bit blocks)."""
        kinds = ("MatMul",) if self.mode == "int4" else None
        return [name for name, op in quantizable_nodes(self.fp32) if kinds is None or op in kinds]

    def settings(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.mode == "int4":
            return {
                "weights": f"int4 block-wise (blocks of {cfg.block_size}, asymmetric)",
                "activations": "float",
                "format": "MatMulNBits / GatherBlockQuantized (ONNX Runtime contrib ops)",
            }
        out = {
            "weights": "int8 per-channel" if self.per_channel else "int8 per-tensor",
            "reduce_range": self.reduce_range,
        }
        if self.mode == "static":
            out |= {
                "format": "QDQ placed by NNCF" if self.placement == "nncf" else "QDQ (ONNX Runtime's placement)",
                "activations": "calibrated, typed by NNCF"
                if self.placement == "nncf"
                else f"{self.activations} (calibrated)",
                "calibration": cfg.calibration,
                "calibration_samples": sum(len(next(iter(b.values()))) for b in self.calibration),
            }
        else:
            out["activations"] = "uint8 (dynamic, per batch)"
        return out

    def _metric(self, outputs: list[torch.Tensor]) -> float:
        meter = self.task.meter()
        for (x, y), out in zip(self.val, outputs, strict=True):
            meter.update(out.float(), y, x)
        return meter.result()[self.task.metric]

    def score(self, path: Path) -> tuple[float, float]:
        """The task's metric on the split and the mean squared output error against fp32."""
        runner = OnnxModel(path, runtime=self.runtime)
        outputs = [self.task.predict(runner, x).double() for x, _ in self.val]
        err = sum(float(((o - r) ** 2).sum()) for o, r in zip(outputs, self.ref_out, strict=True))
        return self._metric(outputs), err / sum(r.numel() for r in self.ref_out)

    def worse_by(self, value: float) -> float:
        """How much worse than fp32 ``value`` of the task's metric is (in its units)."""
        return worse_by(self.task.metric, self.fp32_value, value)

    def latencies(self, *paths: Path, rounds: int = 3) -> list[float]:
        """Latency in ms of each file at ``latency_batch`` rows on the target runtime: the files timed
        in turn, the smallest of ``rounds`` medians (one round on 2 busy cores misjudged a file by 2x);
        small batches take a fraction of a millisecond, so more runs."""
        from slimkit.evaluate.cost import onnx_latency

        runs = max(20, 256 // self.cfg.batch)
        return onnx_latency(paths, self.example, self.cfg.batch, runs, self.runtime, rounds=rounds, warmup=5)


def _weight_only(src: Path, out: Path, block_size: int, eight_bit: list[str], keep_float: list[str]) -> None:
    """Block-wise weight-only quantization with ONNX Runtime's ``MatMulNBitsQuantizer``: the
    ``eight_bit`` MatMuls to 8 bits, then every other MatMul and Gather with a weight to 4 bits,
    except ``keep_float``. Asymmetric blocks: on all-MiniLM-L6-v2 (blocks of 32) cosine 0.973
    against 0.963 symmetric."""
    onnx = require("onnx", extra="onnx")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    mq = require("onnxruntime.quantization.matmul_nbits_quantizer", extra="onnx", package="onnxruntime")
    root.handlers[:], root.level = handlers, level  # its import configures the root logger at INFO: undone
    model = onnx.load(str(src))
    names = [n.name for n in model.graph.node]
    passes = [(8, ("MatMul",), [n for n in names if n not in eight_bit])] if eight_bit else []
    passes.append((4, ("MatMul", "Gather"), keep_float))  # nodes already quantized are MatMulNBits: skipped
    for bits, ops, skip in passes:
        q = mq.MatMulNBitsQuantizer(
            model, bits=bits, block_size=block_size, is_symmetric=False, nodes_to_exclude=skip, op_types_to_quantize=ops
        )
        q.process()
        model = q.model.model
    onnx.save(model, str(out))


def drop_zero_bias_offsets(path: Path) -> None:
    """Remove the all-zero int32 zero points ORT writes for quantized biases (optional inputs that
    default to zero): one int32 per output channel of every layer, ~1% of a small int8 file."""
    onnx = require("onnx", extra="onnx")
    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}

    def zero_int32(name: str) -> bool:
        t = inits.get(name)
        return t is not None and t.data_type == onnx.TensorProto.INT32 and not onnx.numpy_helper.to_array(t).any()

    changed = False
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and len(node.input) == 3 and zero_int32(node.input[2]):
            if inits.get(node.input[0]) is not None and inits[node.input[0]].data_type == onnx.TensorProto.INT32:
                del node.input[2]
                changed = True
    if changed:
        used = {name for node in graph.node for name in node.input}
        kept = [t for t in graph.initializer if t.name in used or t.name in {o.name for o in graph.output}]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        onnx.save(model, str(path))


def _nncf_static(fp32: Path, out: Path, feeds: list[dict[str, np.ndarray]], exclude: list[str]) -> None:
    """NNCF's post-training static int8 of an ONNX file (its defaults; quantize / dequantize pairs
    placed for OpenVINO), calibrated on ``feeds``, leaving the nodes ``exclude`` in float. Graphs with
    attention get NNCF's transformer scheme (SmoothQuant, LayerNorm / Softmax paths left in float): on
    all-MiniLM-L6-v2 its defaults kept cosine 0.41 to the fp32 embeddings, the transformer scheme 0.998."""
    nncf = require("nncf", extra="openvino")
    onnx = require("onnx", extra="onnx")
    logging.getLogger("nncf").setLevel(logging.ERROR)
    with quiet(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        model = nncf.quantize(
            onnx.load(str(fp32)),
            nncf.Dataset(feeds),
            subset_size=len(feeds),
            model_type=nncf.ModelType.TRANSFORMER if has_attention(fp32) else None,
            ignored_scope=nncf.IgnoredScope(names=list(exclude), validate=False),
        )
    onnx.save(model, str(out))


def _pre_process(path: Path, notes: list[str]) -> Path:
    """ONNX Runtime's pre-processing (shape inference, graph cleanup) before quantization."""
    q = require("onnxruntime.quantization", extra="onnx", package="onnxruntime")
    path = path.resolve()
    out = path.with_suffix(".pre.onnx")
    error = None
    # symbolic shape inference gives up on some dynamic shapes (BERT's min(512, length)): ONNX's own then
    for skip_symbolic in (False, True):
        try:
            # in the work folder: on graphs it cannot fully infer, ONNX Runtime leaves a debug copy in the cwd
            with quiet(), contextlib.chdir(path.parent):
                q.quant_pre_process(path, out, skip_symbolic_shape=skip_symbolic)
            return out
        except Exception as exc:  # shape inference fails on some graphs; quantizing still works
            error = exc
    notes.append(f"quant_pre_process failed ({type(error).__name__}); quantized the exported graph as is")
    return path


def _calibration_feeds(
    data: Any, task: Task, samples: int, names: list[str], batch_size: int
) -> list[dict[str, np.ndarray]]:
    """The first ``samples`` model inputs of the training split as batches of ``batch_size`` rows keyed by
    the ONNX input ``names`` (one tensor, a tuple in input order, or a dict by name). Inputs whose shape
    varies between batches (padded sentences) keep the loader's batches."""
    from slimkit.data import as_loader

    taken: list[dict[str, torch.Tensor]] = []
    rows = 0
    for batch in as_loader(data, "train"):
        x = task.inputs(batch)
        feed = (
            dict(x)
            if isinstance(x, dict)
            else dict(zip(names, x if isinstance(x, tuple | list) else (x,), strict=False))
        )
        if set(feed) != set(names):
            raise SlimkitError(f"the model takes the inputs {', '.join(names)}; the data gives {', '.join(feed)}")
        n = min(len(next(iter(feed.values()))), samples - rows)
        taken.append({k: v[:n] for k, v in feed.items()})
        rows += n
        if rows >= samples:
            break
    if not taken:
        raise SlimkitError("cannot calibrate int8: the training data is empty")
    if all(t[k].shape[1:] == taken[0][k].shape[1:] for t in taken for k in names):
        whole = {k: torch.cat([t[k] for t in taken]) for k in names}
        taken = [{k: v[i : i + batch_size] for k, v in whole.items()} for i in range(0, rows, batch_size)]
    return [{k: v.detach().cpu().numpy() for k, v in t.items()} for t in taken]


def quantize(
    model: nn.Module | str | Path,
    data: Any,
    config: QuantizeConfig | None = None,
    output: str | Path = "model.int8.onnx",
    *,
    force: bool = False,
    task: Task | str | None = None,
    exported: Path | None = None,
) -> QuantizeResult:
    """Quantize ``model`` (a module, or an fp32 ``.onnx`` file) to an int8 ONNX file at ``output``.

    ``data`` is a :class:`slimkit.data.Dataset` or :class:`slimkit.data.Loaders`: its training split
    calibrates static mode and ``config.split`` (default ``val``) measures the ``task``'s metric
    (default: the data's task, else classification accuracy). ``output`` is written
    atomically and only replaced with ``force=True``; ``exported``: the module's fp32 ONNX file if one was
    already made (:func:`slimkit.io.onnx.export_onnx`), so it is not exported again. Returns a
    :class:`QuantizeResult`.
    """
    cfg = config or QuantizeConfig()
    require("onnxruntime", extra="onnx")
    require("onnxruntime.quantization", extra="onnx", package="onnxruntime")
    check_runtime(cfg.target_runtime)
    if cfg.mode in ("auto", "static") and (cfg.target_runtime == "openvino" or cfg.placement == "nncf"):
        require("nncf", extra="openvino")
    output = check_output(output, force)
    if output.suffix.lower() != ".onnx":
        raise SlimkitError(f"the int8 model is an ONNX file: name the output *.onnx, not {output.name!r}")
    if not hasattr(data, "loader"):
        raise SlimkitError(f"quantize needs a slimkit Dataset or Loaders, got {type(data).__name__}")
    from slimkit.evaluate import data_task

    task = data_task(data, task)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="slimkit-quant-") as tmp:
        workdir = Path(tmp)
        raw = workdir / "fp32.onnx"
        if isinstance(model, str | Path):
            if Path(model).suffix.lower() != ".onnx" or not Path(model).is_file():
                raise SlimkitError(f"quantize takes a torch module or an existing .onnx file, got {model}")
            shutil.copy(model, raw)
        elif isinstance(model, nn.Module) and exported is not None:
            shutil.copy(exported, raw)
        elif isinstance(model, nn.Module):
            from slimkit.io.onnx import export_onnx

            export_onnx(model, raw, data.example)
        else:
            raise SlimkitError(f"cannot quantize a {type(model).__name__}: pass a torch.nn.Module or a .onnx path")
        fp32 = _pre_process(raw, notes)
        mode, reason = cfg.mode, f"mode {cfg.mode} requested"
        if mode == "auto" and cfg.target_runtime == "openvino":
            mode, reason = "static", "OpenVINO runs int8 as static quantize / dequantize pairs (placed by NNCF)"
        elif mode == "auto":
            mode, reason = choose_mode(mac_shares(fp32, data.example))
        tables = isinstance(model, nn.Module) and any(isinstance(m, nn.Embedding) for m in model.modules())
        sources = {"onnx": fp32}  # ONNX Runtime quantizes Gather tables per tensor
        if mode == "dynamic" and cfg.embeddings != "onnx" and tables:
            from slimkit.compress.embedding import EmbeddingQuantConfig
            from slimkit.core.transform import apply_
            from slimkit.io.onnx import export_onnx

            rowwise = apply_(copy.deepcopy(model), EmbeddingQuantConfig(bits=8))
            export_onnx(rowwise, workdir / "rowwise.onnx", data.example)
            sources = {"rowwise": _pre_process(workdir / "rowwise.onnx", notes)} | (
                sources if cfg.embeddings == "auto" else {}
            )
        if mode == "int4" and gemm_to_matmul(fp32, workdir / "matmul.onnx"):
            sources = {"onnx": workdir / "matmul.onnx"}  # nn.Linear on 2-D inputs: Gemm, which MatMulNBits skips
        ort_static = mode == "static" and cfg.target_runtime == "onnxruntime"
        padded = pad_conv_inputs(fp32, workdir / "padded.onnx") if ort_static else {}
        if padded:
            sources = {"padded": workdir / "padded.onnx"} | sources
        # latency budgets are shares of the file as exported (ONNX Runtime ran a pre-processed one 1.9x slower)
        qz = _Quantizer(next(iter(sources.values())), workdir, data, cfg, mode, task, reference=fp32, original=raw)
        qz.float_nodes = list(padded.values())  # pad in float, then quantize once
        excluded = list(cfg.exclude)
        scored = []  # (metric, path, candidate)
        graphs = {**sources, "raw": raw}  # the peers' recipes quantize the graph as exported
        for i, candidate in enumerate(_candidates(qz, sources)):
            qz.use(candidate, graphs)
            try:
                path = qz.run(excluded)
            except Exception as exc:  # an alternative the quantizer cannot make is skipped; the first is not
                if not i:
                    raise
                notes.append(f"{candidate.name} could not be made ({type(exc).__name__}: {first_line(exc)})")
                continue
            scored.append((qz.score(path)[0], path, candidate))
        (value, best, chosen), share = _fastest_within(qz, scored, notes)
        qz.use(chosen, graphs)
        if chosen.source == "padded":
            notes.append(f"input of {', '.join(padded)} zero-padded to 4 channels (int8 kernels are slow on 1-3)")
        if "rowwise" in sources:
            notes.append(f"embedding tables: {TABLES[chosen.source]}")
        sensitivity: dict[str, float] = {}
        layers: dict[str, dict[str, Any]] = {}
        met = None
        if cfg.max_drop is not None:
            met = qz.worse_by(value) <= cfg.max_drop
            if not met:
                best, value, excluded, layers, met, share = _mixed_precision(qz, excluded, best, value)
                sensitivity = {n: d["error_if_float"] for n, d in layers.items()}
        bytes_int8 = best.stat().st_size
        with atomic_path(output, force=force) as target:
            shutil.copy(best, target)
        return QuantizeResult(
            path=output,
            mode=mode,
            reason=reason,
            split=cfg.split,
            metric=task.metric,
            fp32_value=qz.fp32_value,
            int8_value=value,
            bytes_fp32=raw.stat().st_size,
            bytes_int8=bytes_int8,
            excluded=excluded,
            settings=qz.settings(),
            sensitivity=sensitivity,
            layers=layers,
            latency_share=share,
            met_max_drop=met,
            notes=notes,
        )


@dataclasses.dataclass(frozen=True)
class _Candidate:
    """One way to make the int8 file: the graph quantized (a key of the sources: ``"onnx"``, the
    ``"padded"`` or ``"rowwise"`` variant), weight scales, quantize / dequantize placement and the
    activation type; ``name`` is what the notes call it."""

    name: str
    source: str = "onnx"
    per_channel: bool = True
    placement: str = "onnxruntime"
    activations: str = "uint8"


def _candidates(qz: _Quantizer, sources: dict[str, Path]) -> list[_Candidate]:
    """The files :func:`quantize` makes and, when there are several, times (:func:`_fastest_within`).

    Dynamic mode: each choice of embedding tables and (``per_channel="auto"``) weight scales. Static
    mode with ``max_drop`` and ``placement="auto"``: ONNX Runtime's placement as slimkit sets it
    (per-channel weights, uint8 activations, inputs padded to 4 channels), ONNX Runtime's own default
    scheme (per-tensor weights, int8 activations, the graph as exported: at batch 1 it ran the demo
    CNN in 0.86x of slimkit's time) and, when installed, NNCF's placement on the pre-processed graph
    and on the graph as exported (each won somewhere on mnist5k: ResNet-20 on ONNX Runtime at batch 1
    0.48x of fp32 as exported against 0.55x pre-processed, MobileNetV2 on OpenVINO at batch 64 0.65x
    against 0.61x); otherwise one file."""
    cfg = qz.cfg
    first = next(iter(sources))
    if qz.mode == "dynamic":
        scales = (True, False) if cfg.per_channel == "auto" else (qz.per_channel,)
        names = {"rowwise": "row-wise tables", "onnx": "per-tensor tables", True: "per-channel", False: "per-tensor"}
        return [
            _Candidate(" + ".join(names[k] for k, n in ((kind, len(sources)), (pc, len(scales))) if n > 1), kind, pc)
            for kind in sources
            for pc in scales
        ]
    ort = _Candidate("ONNX Runtime's placement", first, qz.per_channel)
    nncf = _Candidate("NNCF's placement (pre-processed graph)", placement="nncf")
    if qz.mode != "static":
        return [ort]
    if cfg.placement != "auto" or cfg.max_drop is None:  # the named placement, else the runtime's own
        return [nncf if (qz.placement if cfg.placement == "auto" else cfg.placement) == "nncf" else ort]
    out = [ort]
    if cfg.per_channel == "auto":
        name = "ONNX Runtime's defaults (per-tensor, int8 activations, graph as exported)"
        out.append(_Candidate(name, "raw", per_channel=False, activations="int8"))
    if available("nncf"):
        out += [nncf, _Candidate("NNCF's placement on the graph as exported", "raw", placement="nncf")]
    return out


def _fastest_within(qz: _Quantizer, scored: list[tuple], notes: list[str]) -> tuple[tuple, float | None]:
    """Of the ``scored`` files ``(metric, path, candidate)``, all timed at ``latency_batch`` rows on
    the target runtime with the fp32 file: the fastest within ``max_drop`` (without it: among the
    most accurate) of those within the latency budget (``max_latency``, default: not slower than
    fp32; if none is, those within twice the fastest's time: NNCF's placement ran a MobileNetV2 15x
    slower than fp32 on ONNX Runtime at batch 64, ONNX Runtime's 2.5x); when none is within
    ``max_drop``, the most accurate of them (the accuracy check goes on from there); with its latency
    as a share of fp32's (None when there was one file, not timed). Files within
    ``NEAR_TIE`` of the fastest are timed again with more rounds before one is chosen (session 18's
    bench lost its batch-1 checks by 5-6% on 0.3 ms calls)."""
    if len(scored) == 1:
        return scored[0], None
    fp32_ms, *ms = qz.latencies(qz.original, *(c[1] for c in scored))
    budget = qz.cfg.max_latency if qz.cfg.max_latency is not None else 1.0
    # none within the budget: at least not more than twice the fastest's time
    fast = [i for i, t in enumerate(ms) if t <= budget * fp32_ms] or [i for i, t in enumerate(ms) if t <= 2 * min(ms)]
    loss = {i: qz.worse_by(scored[i][0]) for i in fast}
    limit = qz.cfg.max_drop if qz.cfg.max_drop is not None else min(loss.values())
    within = [i for i in fast if loss[i] <= limit]
    close = [i for i in within if ms[i] <= NEAR_TIE * min(ms[j] for j in within)]
    if len(close) > 1:  # within timing noise of the fastest: timed again, three times as long, to choose
        ref, *again = qz.latencies(qz.original, *(scored[i][1] for i in close), rounds=9)
        for i, t in zip(close, again, strict=True):
            ms[i] = t / ref * fp32_ms
    pick = min(within, key=ms.__getitem__) if within else min(fast, key=loss.__getitem__)
    others = ", ".join(f"{scored[i][2].name} {ms[i] / fp32_ms:.2f}x" for i in range(len(scored)) if i != pick)
    why = "the fastest within the limit" if within else "none within the limit: the most accurate"
    notes.append(
        f"{scored[pick][2].name}: {why} at batch {qz.cfg.batch} on {qz.runtime} "
        f"({ms[pick] / fp32_ms:.2f}x of fp32; {others})"
    )
    return scored[pick], ms[pick] / fp32_ms


def _mixed_precision(
    qz: _Quantizer, excluded: list[str], best: Path, value: float
) -> tuple[Path, float, list[str], dict[str, dict[str, Any]], bool, float | None]:
    """Nodes back to float (in ``int4`` mode: to 8-bit blocks) until the metric is within ``max_drop``.

    Each candidate node's output error when it alone goes back is measured and, in the int8 modes,
    its latency too (on the target runtime at ``latency_batch`` rows, timed taking turns with the
    all-int8 file); nodes go back in order of error saved (per millisecond added, in the int8 modes)
    while the file stays within its latency budget: ``max_latency`` of the fp32 file's time, by
    default never slower than fp32 (none when the all-int8 file already is). Returns the file,
    its metric, the nodes put back, the per-node choice, whether the drop holds and the file's
    latency as a share of the fp32 file's (None in ``int4`` mode)."""
    timed = qz.mode != "int4"  # int4 is weight-only: chosen for size, not speed
    kept, back = ("int4", "8-bit blocks") if qz.mode == "int4" else ("int8", "float")
    base_err = qz.score(best)[1]
    ops = dict(quantizable_nodes(qz.fp32))
    share = budget = None
    if timed:
        fp32_ms, int8_ms = qz.latencies(qz.original, best)
        share = int8_ms / fp32_ms
        # by default never slower than fp32; no budget when the all-int8 file already is (it is for size)
        budget = qz.cfg.max_latency if qz.cfg.max_latency is not None else (1.0 if share < 1 else None)
    layers: dict[str, dict[str, Any]] = {}
    # only the 2 x max_excluded nodes that save the most error are timed (at most max_excluded go
    # back; timing each of all-MiniLM-L6-v2's ~50 nodes took longer than quantizing it) and their
    # files kept (the others are deleted as they fall behind: 1.5 GB of MiniLM files otherwise)
    paths: dict[str, Path] = {}
    names = [n for n in qz.candidates() if n not in excluded]
    for name in _track(names, f"int8 accuracy check: {len(names)} nodes, each back in {back}"):
        paths[name] = qz.run([*excluded, name])
        layers[name] = {"op": ops.get(name, "?"), "error_if_float": qz.score(paths[name])[1], "precision": kept}
        if len(paths) > 2 * qz.cfg.max_excluded:
            paths.pop(max(paths, key=lambda n: layers[n]["error_if_float"])).unlink()
    probes = sorted(paths, key=lambda n: layers[n]["error_if_float"])
    for name in _track(probes if timed else [], f"timing the {len(probes)} nodes that save the most error"):
        ms, ref = qz.latencies(paths[name], best)
        layers[name]["ms_if_float"] = ms / ref * int8_ms - int8_ms

    def gain(n: str) -> float:
        saved = base_err - layers[n]["error_if_float"]
        return saved / max(layers[n]["ms_if_float"], 0.01 * int8_ms) if timed else saved  # a floor: no cost is free

    excluded, start = list(excluded), best
    for name in sorted(probes, key=gain, reverse=True)[: qz.cfg.max_excluded]:
        if layers[name]["error_if_float"] >= base_err:
            break  # no node left whose float version lowers the error
        trial = qz.run([*excluded, name])
        if budget is not None:
            ms, ref = qz.latencies(trial, qz.original)
            if ms / ref > budget:
                layers[name]["precision"] = f"{kept} ({back} would break the latency budget)"
                continue
            share = ms / ref
        excluded.append(name)
        best, value = trial, qz.score(trial)[0]
        layers[name]["precision"] = back
        if qz.worse_by(value) <= qz.cfg.max_drop:
            break
    if timed and budget is None and best != start:  # not timed on the way
        ms, ref = qz.latencies(best, qz.original)
        share = ms / ref
    return best, value, excluded, layers, qz.worse_by(value) <= qz.cfg.max_drop, share


def _track(items: list[str], description: str) -> Iterator[str]:
    """``items`` with a progress bar on a terminal (the accuracy check of a transformer takes minutes)."""
    from rich.console import Console
    from rich.progress import track

    console = Console(stderr=True)
    return track(items, description, console=console, transient=True, disable=not console.is_terminal)


def quantize_dynamic_torch(
    model: nn.Module, layers: tuple[type[nn.Module], ...] = (nn.Linear, nn.LSTM, nn.GRU)
) -> nn.Module:
    """A PyTorch dynamic-int8 copy of ``model`` (int8 weights for ``layers``; ``model`` is untouched).

    Good for Linear/LSTM-heavy models run in PyTorch on CPU (about 4x smaller Linear weights).
    The copy uses PyTorch's quantized modules, so save it with ``torch.save`` or use
    :func:`quantize` for a deployable file; slimkit checkpoints hold float models.
    """
    from torch.ao.quantization import quantize_dynamic

    if not any(isinstance(m, layers) for m in model.modules()):
        kinds = "/".join(t.__name__ for t in layers)
        raise SlimkitError(f"the model has no {kinds} layer for dynamic int8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(model).eval(), set(layers), dtype=torch.qint8)


@contextlib.contextmanager
def _calibration_errors(method: str) -> Iterator[None]:
    """ONNX Runtime's calibrators fail on some models and data with their own errors: one line instead."""
    try:
        yield
    except (ValueError, RuntimeError, IndexError, TypeError) as exc:
        raise SlimkitError(
            f"ONNX Runtime's {method} calibration failed on this model ({first_line(exc)}); "
            "try another --calibration (minmax is the most robust) or --mode dynamic"
        ) from None
