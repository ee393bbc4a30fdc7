"""The demo end to end: the design brief's CNN on 5,000 real MNIST digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import slimkit as sk
from slimkit.io.onnx import RUNTIME_NAMES, runtimes
from slimkit.workflows import demo


def test_demo_trains_to_97_percent_and_exports(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = demo(out, log=lambda _: None)
    report = result["report"]
    assert report.metrics["accuracy"] >= 0.97
    assert result["onnx"]["top1_agreement"] >= 0.999
    assert {p.name for p in out.iterdir()} == {"checkpoint", "model.onnx", "report.json", "optimized"}
    # the closed loop's acceptance (issue 6): >= 4x fewer MACs, int8 file >= 20x smaller than the
    # fp32 ONNX original, test accuracy within 0.5 points; throughput is measured, not asserted
    optimized = result["optimized"]
    assert optimized.before.macs >= 4 * optimized.after.macs
    assert (out / "model.onnx").stat().st_size >= 20 * (out / "optimized" / "model.int8.onnx").stat().st_size
    assert optimized.after.metrics["accuracy"] >= report.metrics["accuracy"] - 0.005
    assert (out / "optimized" / "report.html").is_file()
    # every runtime found times the original and both optimized files; the report names the fastest
    speed = optimized.speed
    assert speed["deployed"] == "int8 ONNX" and speed["runtime"] == "onnxruntime"
    assert set(speed["runtimes"]) == set(runtimes())
    for row in speed["runtimes"].values():
        assert set(row) == {"original", "fp32 ONNX", "int8 ONNX"} and all(ms and ms > 0 for ms in row.values())
    best = speed["best"]
    assert best["ms"] == min(ms for row in speed["runtimes"].values() for k, ms in row.items() if k != "original")
    assert (
        f"Fastest: the {best['file']} on {RUNTIME_NAMES[best['runtime']]}"
        in (out / "optimized" / "report.html").read_text()
    )
    saved = json.loads((out / "report.json").read_text())
    assert saved["report"]["metrics"] == report.metrics
    # the checkpoint reproduces the reported accuracy
    data = sk.data.load("mnist5k")
    model = sk.load(out / "checkpoint")
    with torch.no_grad():
        acc = (model(data.splits["test"][0]).argmax(1) == data.splits["test"][1]).float().mean()
    assert float(acc) == pytest.approx(report.metrics["accuracy"], abs=1e-6)
