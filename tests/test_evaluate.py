from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

import slimkit as sk
from slimkit.core.errors import ShapeError
from slimkit.evaluate import count_params
from slimkit.evaluate.metrics import classification_metrics
from slimkit.io import OnnxModel


def test_metrics_match_hand_computed() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    probs = np.eye(3)[pred]
    metrics, confusion = classification_metrics(probs, labels, 3)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # class 0: P 1/2 R 1/2; class 1: P 2/3 R 1; class 2: P 1 R 1/2
    assert metrics["precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert metrics["recall"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert metrics["f1"] == pytest.approx(f1_score(labels, pred, average="macro"))
    assert confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_binary_metrics_include_auc_and_log_loss() -> None:
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.35, 0.65], [0.2, 0.8]])
    metrics, _ = classification_metrics(probs, labels, 2)
    assert metrics["auc"] == 1.0
    assert metrics["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.6, 0.65, 0.8])))


def test_report_of_a_trained_model(trained_cnn: torch.nn.Module, mnist: sk.data.Dataset, tmp_path: Path) -> None:
    report = sk.evaluate(trained_cnn, mnist, latency_runs=3, onnx=True)
    assert report.samples == 1000 and report.metrics["accuracy"] > 0.9
    assert report.params == 1_687_242 and report.macs == 6_498_560
    assert abs(report.bytes - 4 * 1_687_242) < 4096  # fp32 weights plus a small header
    assert set(report.latency_ms) == {"torch/b1", "torch/b64", "onnxruntime/b1", "onnxruntime/b64"}
    assert all(v > 0 for v in report.latency_ms.values())
    assert sum(map(sum, report.confusion)) == 1000
    assert sk.Report.from_json(_write(report, tmp_path)) == report
    assert "accuracy" in str(report) and "MACs" in str(report)

    onnx_path = sk.export(trained_cnn, tmp_path / "m.onnx", mnist.example)
    onnx_report = sk.evaluate(OnnxModel(onnx_path), mnist, latency_runs=3)
    assert onnx_report.metrics["accuracy"] == pytest.approx(report.metrics["accuracy"], abs=0.001)
    assert set(onnx_report.latency_ms) == {"onnxruntime/b1", "onnxruntime/b64"}
    assert onnx_report.bytes == onnx_path.stat().st_size


def _write(report: sk.Report, tmp_path: Path) -> Path:
    path = tmp_path / "report.json"
    report.to_json(path)
    return path


def test_compare_ratios(mnist: sk.data.Dataset) -> None:
    torch.manual_seed(0)
    big = sk.zoo.create_for("seed_cnn", mnist)
    small = sk.zoo.create_for("lenet5", mnist)
    a = sk.evaluate(big, mnist, latency=False)
    b = sk.evaluate(small, mnist, latency=False)
    ratios = sk.compare(a, b)
    assert ratios["params x"] == pytest.approx(count_params(small) / count_params(big))
    assert ratios["MACs x"] == pytest.approx(b.macs / a.macs)
    assert ratios["accuracy (points)"] == pytest.approx(100 * (b.metrics["accuracy"] - a.metrics["accuracy"]))
    text = str(ratios).splitlines()
    assert text[0].split() == ["measure", "before", "after", "change"]
    assert any(line.startswith("params") and line.endswith(f"{ratios['params x']:.2f}x") for line in text)


def test_wrong_input_shape_is_a_clear_error(mnist: sk.data.Dataset, digits: sk.data.Dataset) -> None:
    model = sk.zoo.create_for("seed_cnn", mnist)
    with pytest.raises(ShapeError, match=r"expects inputs of shape \(N, 1, 28, 28\), got shape \(256, 1, 8, 8\)"):
        sk.evaluate(model, digits)
    unrecorded = sk.zoo.create("seed_cnn")  # no recorded input: the forward pass itself is checked
    with pytest.raises(ShapeError, match="seed_cnn cannot run on inputs of shape \\(256, 1, 8, 8\\)"):
        sk.evaluate(unrecorded, digits)
    text = sk.zoo.create("text_lstm")
    with pytest.raises(ShapeError, match="dtype float32"):
        sk.evaluate(text, digits)


def test_evaluate_on_a_dataloader_and_recsys_metrics() -> None:
    data = sk.data.load("synthetic-recsys")
    torch.manual_seed(0)
    model = sk.zoo.create_for("recsys_mlp", data)
    sk.train.fit(model, data.train, epochs=2, lr=3e-3, progress=False)
    report = sk.evaluate(model, data.loader("test"), latency=False)
    assert report.data == "data" and report.samples == 2000
    assert report.metrics["auc"] > 0.65  # the hidden factor model is learnable


def test_latency_samples_take_turns_in_blocks_in_ms(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from slimkit.evaluate import cost

    monkeypatch.setattr(cost, "SETTLE_S", 0.0)  # each turn opens with one untimed call
    calls: list[str] = []
    fns = [lambda: calls.append("a"), lambda: (calls.append("b"), time.sleep(0.002))]
    quick, slow = cost.latency_samples(fns, warmup=1, runs=5, turns=2)
    assert len(quick) == len(slow) == 5  # 2 + 3 timed calls a turn, each opened by untimed ones
    assert calls == ["a"] * 4 + ["b"] * 4 + ["a"] * 4 + ["b"] * 4
    assert all(s >= 2.0 > q for q, s in zip(quick, slow, strict=True))  # milliseconds
    assert cost.measure_latencies(fns, warmup=0, runs=3, rounds=2)[1] >= 2.0
    # the smallest of the rounds' medians: a function slow only in the first round
    state = {"calls": 0}

    def slow_first() -> None:
        state["calls"] += 1
        time.sleep(0.004 if state["calls"] <= 4 else 0.0)

    assert cost.measure_latencies([slow_first], warmup=0, runs=3, rounds=2)[0] < 2.0
