"""Quantization-aware training: fake_quantized, QATConfig, and the loop's int8 recovery."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.compress import QATConfig, QuantizeConfig, fake_quantized, quantize
from slimkit.core.errors import SlimkitError
from slimkit.io import OnnxModel
from slimkit.optimize import Recipe, Target, optimize
from slimkit.simplify import FoldConfig

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def net(mini: sk.data.Dataset) -> nn.Module:
    """Convolutions and Linear layers, no dropout or BatchNorm: training mode computes what evaluation does."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )
    sk.train.fit(model, mini.train, epochs=2, lr=2e-3, progress=False)
    return model.eval()


def test_fake_quantized_computes_what_the_int8_file_computes(net: nn.Module, mini, tmp_path: Path) -> None:  # noqa: ANN001
    model = copy.deepcopy(net)
    x, calibration = mini.splits["test"][0], mini.splits["train"][0][:500]
    with torch.no_grad():  # the same function with one busy channel 100x wider: int8 rounds the rest coarsely
        c = int(model[:5](calibration).mean((0, 2, 3)).argmax())
        model[3].weight[c] *= 100
        model[3].bias[c] *= 100
        model[7].weight[:, 49 * c : 49 * (c + 1)] /= 100
    before = {k: v.clone() for k, v in model.state_dict().items()}
    int8 = quantize(model, mini, QuantizeConfig(mode="static", calibration_samples=500), tmp_path / "m.int8.onnx")
    with torch.no_grad():
        fp32, ort = model(x), OnnxModel(int8.path)(x)
        with fake_quantized(model, momentum=1.0) as layers:
            assert layers == ["0", "3", "7", "9"]
            w = model[7].weight  # rounded per output channel to symmetric int8
            steps = w / (w.abs().amax(1, keepdim=True) / 127)
            assert torch.allclose(steps, steps.round(), atol=1e-3)
            model.train()(calibration)  # the input ranges of the calibration set, as ONNX Runtime's MinMax
            simulated = model.eval()(x)
    # the simulation is far closer to the int8 file than the fp32 model is (measured 0.14x; what remains
    # is mostly the int8 file's rounding of the logits, which is not simulated)
    assert (simulated - ort).abs().mean() < 0.3 * (fp32 - ort).abs().mean()
    # leaving the block leaves a plain model: no hooks or parametrizations, weights untouched
    assert all(not m._forward_pre_hooks for m in model.modules()) and type(model[7]) is nn.Linear
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_training_inside_keeps_the_trained_weights_and_bad_settings_are_one_line(net: nn.Module, mini) -> None:  # noqa: ANN001
    model = copy.deepcopy(net)
    with fake_quantized(model, mode="dynamic"):
        sk.train.fit(model, mini.train, epochs=1, lr=1e-3, progress=False)
    assert not torch.equal(model[9].weight, net[9].weight) and type(model[9]) is nn.Linear
    with pytest.raises(SlimkitError, match="static or dynamic"):
        with fake_quantized(model, mode="int4"):
            pass
    with pytest.raises(SlimkitError, match="no convolution or Linear"):
        with fake_quantized(nn.Sequential(nn.ReLU())):
            pass
    with pytest.raises(SlimkitError, match="QAT epochs must be at least 1"):
        QATConfig(epochs=0)
    with pytest.raises(SlimkitError, match="right after QuantizeConfig"):
        Recipe((FoldConfig(), QATConfig(), QuantizeConfig()))
    assert Recipe((FoldConfig(), QuantizeConfig(), QATConfig())).quantizes


def test_loop_runs_qat_only_when_int8_breaks_quality(net: nn.Module, mini) -> None:  # noqa: ANN001
    recipe = Recipe((FoldConfig(), QuantizeConfig(mode="static"), QATConfig(epochs=1, steps_per_epoch=3)))
    # an unreachable constraint: post-training int8 fails, QAT is tried, fails too, and the loop backs off
    result = optimize(
        copy.deepcopy(net), mini, Target(bytes=0.5, min_metrics={"accuracy": 1.0}), recipe=recipe, log=lambda _: None
    )
    steps = [c.step for c in result.candidates]
    assert steps[-2:] == ["int8 (static)", "int8 (static) after QAT"] and result.int8_path is None
    assert result.candidates[-1].config == QATConfig(epochs=1, steps_per_epoch=3).to_dict()
    # a lenient one: post-training int8 holds, no QAT; with a latency target the int8 step may keep
    # layers in float within the latency the target leaves (mixed precision)
    target = Target(latency=1.0, latency_batch=16, max_drop=50)
    result = optimize(copy.deepcopy(net), mini, target, recipe=recipe, log=lambda _: None)
    assert [c.step for c in result.candidates][-1] == "int8 (static)" and result.int8_path is not None
    fp32, int8 = result.candidates[-2:]
    assert int8.config["latency_batch"] == 16
    assert int8.config["max_latency"] == pytest.approx(result.base_val["costs"]["latency"] / fp32.costs["latency"])


def test_keras_refuses_qat_in_one_line() -> None:
    from slimkit.keras.optimize import check_recipe

    with pytest.raises(SlimkitError, match="QATConfig is not available for Keras models") as exc:
        check_recipe(Recipe((QuantizeConfig(), QATConfig())))
    assert "\n" not in str(exc.value)
