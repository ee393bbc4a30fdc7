"""ONNX Runtime time of a U-Net pruned to 0.5x / 0.25x MACs with channel counts rounded to 1, 8 or 16.

The width-24 U-Net of ``bench/optimize_tasks.py`` (untrained: time does not depend on the weights),
pruned uniformly by ``prune_channels`` to each MACs target, exported to ONNX and timed with one
ONNX Runtime thread at batch 64 against the original (best of 3 x 5 runs). Prints each variant's
MACs ratio, time ratio and convolution widths.

    .venv/bin/python bench/unet_ort_widths.py
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch

import slimkit as sk
from slimkit.evaluate.cost import count_macs
from slimkit.io.onnx import export_onnx
from slimkit.prune import ChannelPruneConfig, prune_channels


def ort_ms(model: torch.nn.Module, x: torch.Tensor, folder: Path) -> float:
    path = folder / f"m{len(list(folder.iterdir()))}.onnx"
    export_onnx(model, path, x[:1])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    for _ in range(2):
        session.run(None, feed)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(5):
            session.run(None, feed)
        best = min(best, (time.perf_counter() - start) / 5)
    return best * 1000


def main() -> None:
    torch.set_num_threads(1)
    x = torch.randn(64, 1, 48, 48)
    base = sk.zoo.create("unet", in_channels=1, num_classes=11, input_size=48, width=24, depth=2).eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base_ms, base_macs = ort_ms(base, x, folder), count_macs(base, x[:1])
        print(f"original: {base_ms:.1f} ms at batch 64, {base_macs:,} MACs per image")
        print("| MACs target | round_to | MACs | ORT time | widths |\n|---|---|---|---|---|")
        for target in (0.5, 0.25):
            for round_to in (1, 8, 16):
                model = copy.deepcopy(base)
                prune_channels(model, ChannelPruneConfig(target_macs=target, round_to=round_to), x[:1])
                ratio = ort_ms(model, x, folder) / base_ms
                widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
                macs = count_macs(model, x[:1]) / base_macs
                print(f"| {target} | {round_to} | {macs:.3f}x | {ratio:.2f}x | {widths} |", flush=True)


if __name__ == "__main__":
    main()
