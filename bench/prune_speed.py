"""Does structured pruning make models faster? ONNX Runtime latency speedup vs MACs reduction.

resnet_cifar (32x32 inputs, its CIFAR resolution) and mobilenet_v2 (32x32, and 224x224: the
ImageNet resolution it was designed for; at 32x32 its last stages run on 1x1 maps) pruned at
ratio 0.5 by slimkit with kept widths rounded to 1, 8 and ``auto`` (this CPU's ONNX Runtime
channel block: 16 with AVX-512, else 8); latency is the median of ONNX Runtime runs at batch 1
and 32 (50 runs; 10 for mobilenet_v2 at 224x224, batch 32), the original and the pruned model run
alternately in one process so that other load on the machine hits both alike.
Goal: speedup / MACs reduction >= 0.8.

Run: ``.venv/bin/python bench/prune_speed.py``
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

import slimkit as sk
from slimkit.evaluate import count_macs
from slimkit.evaluate.cost import batch_of, measure_latencies
from slimkit.io import OnnxModel
from slimkit.prune import ChannelPruneConfig, prune_channels

CASES = (("resnet_cifar", 32), ("mobilenet_v2", 32), ("mobilenet_v2", 224))  # (model, input side)


def ort_pair(base: Path, pruned: Path, x: torch.Tensor) -> dict[int, list[float]]:
    """Median ms of the two ONNX files at batch 1 and 32, run alternately."""
    sessions = OnnxModel(base), OnnxModel(pruned)
    out = {}
    for size in (1, 32):
        xb = batch_of(x, size)
        runs = 10 if x[0].numel() * size > 2_000_000 else 50  # a 224x224 batch of 32 takes ~0.5 s
        out[size] = measure_latencies([lambda s=s, xb=xb: s(xb) for s in sessions], warmup=3, runs=runs)
    return out


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| model | input | round_to | MACs reduction | batch | fp32 ms | pruned ms | speedup "
          "| speedup / MACs reduction |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, side in CASES:
            torch.manual_seed(0)
            model = sk.zoo.create(name, num_classes=10).eval()
            x = torch.rand(2, 3, side, side)
            base = sk.export(model, Path(tmp) / f"{name}-{side}-fp32.onnx", x)
            for round_to in (1, 8, "auto"):
                pruned = copy.deepcopy(model)
                config = ChannelPruneConfig(ratio=0.5, round_to=round_to)
                prune_channels(pruned, config, x)
                reduction = count_macs(model, x) / count_macs(pruned, x)
                path = sk.export(pruned, Path(tmp) / f"{name}-{side}-pruned-{round_to}.onnx", x)
                label = f"auto ({config.block})" if round_to == "auto" else str(round_to)
                for b, (fp32, small) in ort_pair(base, path, x).items():
                    speedup = fp32 / small
                    print(f"| {name} | {side}x{side} | {label} | {reduction:.2f}x | {b} | {fp32:.2f} | {small:.2f} "
                          f"| {speedup:.2f}x | {speedup / reduction:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
