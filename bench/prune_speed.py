"""Does structured pruning make models faster? ONNX Runtime latency speedup vs MACs reduction.

resnet_cifar and mobilenet_v2 (32x32 inputs) pruned at ratio 0.5 by slimkit; latency is the
median of 50 ONNX Runtime runs at batch 1 and 32, both models measured in the same process.
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
from slimkit.evaluate.cost import batch_of, measure_latency
from slimkit.io import OnnxModel
from slimkit.prune import ChannelPruneConfig, prune_channels


def ort_ms(model: torch.nn.Module, x: torch.Tensor, folder: Path, tag: str) -> dict[int, float]:
    path = sk.export(model, folder / f"{tag}.onnx", x)
    session = OnnxModel(path)
    out = {}
    for b in (1, 32):
        xb = batch_of(x, b)
        out[b] = measure_latency(lambda xb=xb: session(xb), warmup=10, runs=50)
    return out


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| model | round_to | MACs reduction | batch | fp32 ms | pruned ms | speedup | speedup / MACs reduction |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("resnet_cifar", "mobilenet_v2"):
            torch.manual_seed(0)
            model = sk.zoo.create(name, num_classes=10).eval()
            x = torch.rand(2, 3, 32, 32)
            base = ort_ms(model, x, Path(tmp), f"{name}-fp32")
            for round_to in (1, 8):
                pruned = copy.deepcopy(model)
                prune_channels(pruned, ChannelPruneConfig(ratio=0.5, round_to=round_to), x)
                reduction = count_macs(model, x) / count_macs(pruned, x)
                small = ort_ms(pruned, x, Path(tmp), f"{name}-pruned-{round_to}")
                for b in (1, 32):
                    speedup = base[b] / small[b]
                    print(f"| {name} | {round_to} | {reduction:.2f}x | {b} | {base[b]:.2f} | {small[b]:.2f} "
                          f"| {speedup:.2f}x | {speedup / reduction:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
