"""How files timed together should take turns: single calls alternated vs blocks of calls.

Trains the quarter-width MobileNetV2 of ``quantize_vs_nncf.py`` on mnist5k, makes its fp32 ONNX file,
slimkit's int8 with ONNX Runtime's placement, ONNX Runtime's default static int8 and NNCF's int8
(QDQ ONNX), then times the four on ONNX Runtime at batch 64 (2 threads) four ways: each file alone
(one block of calls after the other), single calls alternated (slimkit before session 19), turns
of 10 calls opened by 2 untimed calls, and turns opened by ``SETTLE_S`` (50 ms) of untimed calls
(``slimkit.evaluate.cost.latency_samples`` now). Prints a markdown table of medians in ms.

    .venv/bin/python bench/latency_turns.py      # ~2 minutes
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from quantize_vs_nncf import MODELS, calibration, nncf_files, ort_static

import slimkit as sk
from slimkit.compress import QuantizeConfig, quantize
from slimkit.evaluate.cost import SETTLE_S, batch_of, latency_samples, measure_latencies
from slimkit.io import OnnxModel


def alternated(fns: list[Callable], runs: int) -> list[float]:
    """Median of ``runs`` single calls of each function, the functions called in turn."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, t in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            t.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def opened_by_calls(fns: list[Callable], runs: int, block: int = 10, untimed: int = 2) -> list[float]:
    """Turns of ``block`` timed calls, each opened by ``untimed`` calls (no settling time)."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs // block):
        for fn, t in zip(fns, times, strict=True):
            for _ in range(untimed):
                fn()
            for _ in range(block):
                start = time.perf_counter()
                fn()
                t.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def main() -> None:
    zoo_name, kwargs, fit_kwargs = MODELS["mobilenet_v2_w025"]
    data = sk.data.load("mnist5k")
    torch.manual_seed(0)
    model = sk.zoo.create_for(zoo_name, data, **kwargs)
    sk.train.fit(model, data.train, val=data.val, progress=False, **fit_kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        fp32 = sk.export(model, out / "w025.onnx", data.example)
        calib = calibration(data)
        cfg = QuantizeConfig(mode="static", placement="onnxruntime")
        files = {
            "fp32": fp32,
            "ONNX Runtime's placement (slimkit)": quantize(model, data, cfg, out / "ort.onnx").path,
            "ONNX Runtime's defaults": ort_static(fp32, out, calib),
            "NNCF's placement": nncf_files(fp32, out, calib)["nncf int8 (ONNX)"],
        }
        x = batch_of(data.example, 64)
        runners = [OnnxModel(p, threads=2) for p in files.values()]
        fns = [lambda r=r: r(x) for r in runners]
        for fn in fns:  # warm
            fn()
        rows = {
            "each file alone (one block after the other)": [measure_latencies([fn], runs=30)[0] for fn in fns],
            "single calls alternated (before session 19)": alternated(fns, 30),
            "turns of 10 calls, opened by 2 untimed calls": opened_by_calls(fns, 30),
            f"turns of 10 calls, opened by {SETTLE_S * 1e3:.0f} ms of untimed calls (now)": [
                statistics.median(t) for t in latency_samples(fns, runs=30, turns=3)
            ],
        }
    print(f"| timing (batch 64, ONNX Runtime, 2 threads; median ms) | {' | '.join(files)} |")
    print("|---" * (len(files) + 1) + "|")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{t:.2f}" for t in row) + " |")


if __name__ == "__main__":
    main()
