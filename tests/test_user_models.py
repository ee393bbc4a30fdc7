"""Models slimkit did not write: prune, run, export, save and reload with identical outputs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_model
from torch import nn

import slimkit as sk
from slimkit.evaluate import count_macs, count_params
from slimkit.io import onnx_agreement
from slimkit.prune import ChannelPruneConfig, prune_channels
from tests.user_models import EXAMPLES, TiedLM


@pytest.mark.parametrize("cls", list(EXAMPLES), ids=lambda c: c.__name__)
def test_user_model_prunes_runs_exports_and_reloads(cls: type[nn.Module], tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "weights.safetensors"
    save_model(cls(), str(weights))  # what a user hands us: their factory + a safetensors file
    model = sk.load(weights, factory=f"tests.user_models:{cls.__name__}").eval()
    x = EXAMPLES[cls]()
    original = copy.deepcopy(model)
    record = prune_channels(model, ChannelPruneConfig(ratio=0.5), x)
    assert record.changed, record.skipped
    assert count_params(model) < count_params(original) and count_macs(model, x) < count_macs(original, x)
    with torch.no_grad():
        out = model(x)
    assert out.shape == original(x).shape
    onnx_path = sk.export(model, tmp_path / "model.onnx", x)
    assert onnx_agreement(model, onnx_path, x)["max_abs_diff"] < 1e-4
    sk.save(model, tmp_path / "ckpt", example=x)
    again = sk.load(tmp_path / "ckpt", factory=f"tests.user_models:{cls.__name__}").eval()
    with torch.no_grad():
        assert torch.equal(again(x), out)


def test_tied_weights_stay_tied_after_pruning_and_reloading(tmp_path: Path) -> None:
    model = TiedLM().eval()
    x = EXAMPLES[TiedLM]()
    prune_channels(model, ChannelPruneConfig(ratio=0.5), x)
    assert model.out.weight is model.emb.weight and model.emb.weight.shape == (100, 16)
    save_model(TiedLM(), str(tmp_path / "w.safetensors"))
    user = sk.load(tmp_path / "w.safetensors", factory="tests.user_models:TiedLM")
    prune_channels(user, ChannelPruneConfig(ratio=0.5), x)
    sk.save(user, tmp_path / "ckpt", example=x)
    again = sk.load(tmp_path / "ckpt", factory="tests.user_models:TiedLM")
    assert again.out.weight is again.emb.weight


def test_grouped_convolution_keeps_equal_groups() -> None:
    from tests.user_models import GroupedNet

    model = GroupedNet().eval()
    x = EXAMPLES[GroupedNet]()
    before = model(x)
    prune_channels(model, ChannelPruneConfig(ratio=0.0), x)
    assert torch.equal(model(x), before)  # ratio 0 changes nothing
    prune_channels(model, ChannelPruneConfig(ratio=0.5), x)
    assert model.grouped.groups == 4 and model.grouped.out_channels == 16 and model.grouped.in_channels == 16
    assert model.reduce.out_channels == 16 and model.expand.in_channels == 16
