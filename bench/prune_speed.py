"""Does structured pruning make models faster? ONNX Runtime latency speedup vs MACs reduction.

resnet_cifar (32x32 inputs, its CIFAR resolution) and mobilenet_v2 (32x32, and 224x224: the
ImageNet resolution it was designed for; at 32x32 its last stages run on 1x1 maps) pruned at
ratio 0.5 by slimkit with kept widths rounded to 1, 8 and ``auto`` (this CPU's ONNX Runtime
channel block: 16 with AVX-512, else 8); latency is the median of ONNX Runtime runs at batch 1
and 32 (100 runs; 10 for mobilenet_v2 at 224x224, batch 32), the original and the pruned model run
alternately in one process so that other load on the machine hits both alike; the speedup is the
median of the paired runs' ratios.
Goal: speedup / MACs reduction >= 0.8.

Two bounds on speedup / MACs reduction close the table:
- *any pruning*: the most any pruning of that model could reach if every millisecond that depends
  on the work scaled with the MACs: the fixed cost per inference (per-operator overhead, which
  pruning channels cannot remove) is extrapolated to zero MACs from the original and from the same
  model pruned to its minimum widths (ratio 0.9), both measured in the same interleaved runs.
- *these widths*: what this pruned model would reach if each of its operators ran as fast per unit
  of work as the original's (ONNX Runtime's profiler gives each operator's time; work is MACs for
  Conv and Gemm, output elements otherwise), with the time outside the operators unchanged. A
  depthwise convolution's MACs fall with the channel count, a pointwise one's with its square, so
  a network whose time sits in depthwise layers cannot speed up as much as its MACs fall.

Run: ``.venv/bin/python bench/prune_speed.py``
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import tempfile
from pathlib import Path

import torch

import slimkit as sk
from slimkit.evaluate import count_macs
from slimkit.evaluate.cost import batch_of, latency_samples
from slimkit.io import OnnxModel
from slimkit.prune import ChannelPruneConfig, prune_channels

CASES = (("resnet_cifar", 32), ("mobilenet_v2", 32), ("mobilenet_v2", 224))  # (model, input side)


def ort_times(paths: list[Path], x: torch.Tensor) -> dict[int, tuple[list[float], float]]:
    """At batch 1 and 32: the median ms of each ONNX file (run in turn) and the median over runs of
    the first file's time over the second's (paired runs: drifts in machine speed cancel)."""
    sessions = [OnnxModel(p) for p in paths]
    out = {}
    for size in (1, 32):
        xb = batch_of(x, size)
        runs = 10 if x[0].numel() * size > 2_000_000 else 100  # a 224x224 batch of 32 takes ~0.5 s
        times = latency_samples([lambda s=s, xb=xb: s(xb) for s in sessions], warmup=3, runs=runs, turns=5)
        speedup = statistics.median(a / b for a, b in zip(times[0], times[1], strict=True))
        out[size] = ([statistics.median(t) for t in times], speedup)
    return out


Profile = tuple[float, dict[str, tuple[float, int]]]  # (ms per run, {operator: (ms, work)})


def operator_profiles(paths: list[Path], xb: torch.Tensor, runs: int = 20) -> list[Profile]:
    """ONNX Runtime's profile of each file (run in turn, like :func:`ort_times`): the median ms of a
    run and, per operator, its median ms and its work (MACs for Conv and Gemm/MatMul, output
    elements for the rest)."""
    import onnxruntime as ort

    sessions = []
    for path in paths:
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.enable_profiling = True
        options.profile_file_prefix = str(path.with_suffix(""))
        sessions.append(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))
    feed = {sessions[0].get_inputs()[0].name: xb.numpy()}
    for _ in range(runs):
        for session in sessions:
            session.run(None, feed)
    return [_operators(json.loads(Path(session.end_profiling()).read_text())) for session in sessions]


def _operators(events: list[dict]) -> Profile:
    times: dict[str, list[float]] = {}
    work: dict[str, int] = {}
    runs = [e["dur"] / 1e3 for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        name, args = event["name"], event["args"]
        times.setdefault(name, []).append(event["dur"] / 1e3)
        shapes = [next(iter(t.values())) for t in args["input_type_shape"]]
        out = math.prod(next(iter(args["output_type_shape"][0].values())))
        if args["op_name"] in ("Conv", "FusedConv"):
            work[name] = out * math.prod(shapes[1][1:])  # weight (out, in / groups, kh, kw)
        elif args["op_name"] in ("Gemm", "MatMul", "FusedMatMul"):
            work[name] = out * shapes[0][-1]
        else:
            work[name] = out
    return statistics.median(runs), {name: (statistics.median(t), work[name]) for name, t in times.items()}


def operator_bound(base: Profile, pruned: Profile, reduction: float) -> float:
    """Speedup / MACs reduction if every operator of the original took its time per unit of work in
    the pruned model too, and the time outside operators stayed. Operators only the pruned graph has
    (layout conversions ONNX Runtime adds for widths off its channel block) are not in the ideal;
    nan if the pruned graph lacks one of the original's operators."""
    (base_ms, base_ops), pruned_ops = base, pruned[1]
    if not base_ops.keys() <= pruned_ops.keys():
        return float("nan")
    outside = base_ms - sum(t for t, _ in base_ops.values())
    ideal = outside + sum(t * pruned_ops[name][1] / w for name, (t, w) in base_ops.items())
    return base_ms / ideal / reduction


def bound(base_ms: float, floor_ms: float, floor_share: float, reduction: float) -> float:
    """Best speedup / MACs reduction at ``reduction`` if all but the fixed cost scaled with the MACs;
    the fixed cost is extrapolated linearly to zero MACs from the original and the floor model
    (``floor_share`` of the original's MACs)."""
    fixed = max(0.0, floor_ms - (base_ms - floor_ms) * floor_share / (1 - floor_share))
    return base_ms / (fixed + (base_ms - fixed) / reduction) / reduction


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(
        "| model | input | round_to | MACs reduction | batch | fp32 ms | pruned ms | speedup "
        "| speedup / MACs reduction | bound: any pruning | bound: these widths |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, side in CASES:
            torch.manual_seed(0)
            model = sk.zoo.create(name, num_classes=10).eval()
            x = torch.rand(2, 3, side, side)
            macs = count_macs(model, x)
            base = sk.export(model, Path(tmp) / f"{name}-{side}-fp32.onnx", x)
            floor = copy.deepcopy(model)
            prune_channels(floor, ChannelPruneConfig(ratio=0.9, round_to="auto"), x)
            floor_share = count_macs(floor, x) / macs
            floor_path = sk.export(floor, Path(tmp) / f"{name}-{side}-floor.onnx", x)
            for round_to in (1, 8, "auto"):
                pruned = copy.deepcopy(model)
                config = ChannelPruneConfig(ratio=0.5, round_to=round_to)
                prune_channels(pruned, config, x)
                reduction = macs / count_macs(pruned, x)
                path = sk.export(pruned, Path(tmp) / f"{name}-{side}-pruned-{round_to}.onnx", x)
                label = f"auto ({config.block})" if round_to == "auto" else str(round_to)
                for b, ((fp32, small, least), speedup) in ort_times([base, path, floor_path], x).items():
                    best = bound(fp32, least, floor_share, reduction)
                    widths = operator_bound(*operator_profiles([base, path], batch_of(x, b)), reduction)
                    cells = (
                        f"{name} | {side}x{side} | {label} | {reduction:.2f}x | {b} | {fp32:.2f} | {small:.2f} | "
                        f"{speedup:.2f}x | {speedup / reduction:.2f} | {best:.2f} | {widths:.2f}"
                    )
                    print(f"| {cells} |", flush=True)


if __name__ == "__main__":
    main()
