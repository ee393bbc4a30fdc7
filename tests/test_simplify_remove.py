from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import slimkit as sk
from slimkit.core.surgery import Skip
from slimkit.evaluate import accuracy, count_macs, count_params
from slimkit.simplify import (
    RemoveLayersConfig,
    block_importance,
    drop_blocks_,
    removable_blocks,
    remove_blocks_,
    remove_layers_,
    transfer_linear,
)
from slimkit.simplify.drop import budget_count
from tests.conftest import zoo_example


def test_removing_the_pools_repairs_fc1_and_reports_the_growth() -> None:
    model = sk.zoo.create("seed_cnn")
    x = zoo_example("seed_cnn")
    params, macs = count_params(model), count_macs(model, x)
    record = sk.records(remove_layers_(model, x, types=["MaxPool2d"]))[-1]
    d = record.details
    assert d["removed"] == {"pool1": "MaxPool2d", "pool2": "MaxPool2d"}
    assert d["repaired"]["fc1"]["in"] == [64 * 5 * 5, 64 * 24 * 24]
    assert d["repaired"]["fc1"]["how"] == "transfer [64, 5, 5] -> [64, 24, 24]"
    assert (d["params_before"], d["macs_before"]) == (params, macs) == (1_687_242, 6_498_560)
    assert d["params_after"] == count_params(model) == params + (36864 - 1600) * 1024  # fc1 grows 23x
    assert d["macs_after"] == count_macs(model, x) > 9 * macs
    assert model(x).shape == (4, 10) and isinstance(model.pool1, nn.Identity)
    assert set(record.changed) == {"pool1", "pool2", "fc1"}


def test_init_repair_and_conv_in_channels() -> None:
    torch.manual_seed(0)
    model = sk.zoo.create("seed_cnn")
    record = sk.records(remove_layers_(model, zoo_example("seed_cnn"), names=["conv1", "relu1"], repair="init"))[-1]
    assert record.details["repaired"]["conv2"] == {"type": "Conv2d", "in": [64, 1], "how": "init"}
    assert record.details["repaired"]["fc1"]["how"] == "init"
    assert model.conv2.in_channels == 1 and model.fc1.in_features == 64 * 6 * 6


@settings(max_examples=20, deadline=None)
@given(c=st.integers(1, 4), h=st.integers(1, 5), w=st.integers(1, 5), fy=st.integers(1, 4), fx=st.integers(1, 4))
def test_transfer_keeps_the_output_for_an_upsampled_map(c: int, h: int, w: int, fy: int, fx: int) -> None:
    """A map that is the old one upsampled gives the same Linear output after weight transfer."""
    torch.manual_seed(0)
    weight = torch.randn(3, c * h * w)
    small = torch.randn(2, c, h, w)
    big = small.repeat_interleave(fy, 2).repeat_interleave(fx, 3)  # (2, c, h*fy, w*fx)
    new = transfer_linear(weight, (c, h, w), (c, h * fy, w * fx))
    assert torch.allclose(F.linear(big.flatten(1), new), F.linear(small.flatten(1), weight), atol=1e-5)


def test_removal_replays_from_a_checkpoint(tmp_path: Path) -> None:
    model = sk.zoo.create("seed_cnn", width=0.25).eval()
    x = zoo_example("seed_cnn")
    remove_layers_(model, x, names=["re:pool\\d"])
    sk.save(model, tmp_path / "ckpt", example=x)
    loaded = sk.load(tmp_path / "ckpt")
    assert loaded.fc1.in_features == 16 * 24 * 24 and torch.equal(loaded(x), model(x))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"names": ["pool3"]}, "no Module layer named 'pool3'"),
        ({"types": ["AvgPool2d"]}, "has no AvgPool2d layer"),
        ({"names": ["fc2"]}, "output shape would change from [4, 10] to [4, 1024]"),
        ({"names": ["flatten"]}, "cannot be repaired: its input changed from [4, 1600] to [4, 64, 5, 5]"),
        ({}, "say which layers to remove"),
        ({"names": ["pool1"], "repair": "magic"}, "unknown repair 'magic'"),
    ],
)
def test_bad_removals_fail_clearly_and_change_nothing(kwargs: dict, message: str) -> None:
    model = sk.zoo.create("seed_cnn").eval()
    x = zoo_example("seed_cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(sk.SlimkitError) as exc:
        remove_layers_(model, x, **kwargs)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert model.state_dict().keys() == before.keys() and "changes" not in sk.zoo.arch_of(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_removal_needs_example_inputs() -> None:
    with pytest.raises(sk.SlimkitError, match="needs example_inputs"):
        remove_layers_(sk.zoo.create("seed_cnn"), names=["pool1"])
    assert RemoveLayersConfig.from_dict(RemoveLayersConfig(types=["MaxPool2d"]).to_dict()).types == ["MaxPool2d"]


@pytest.mark.parametrize(
    ("name", "kwargs", "blocks", "kind"),
    [
        ("resnet_cifar", {"depth": 14}, ["layer1.1", "layer2.0"], ("Identity", "Sequential")),
        ("mobilenet_v2", {"width": 0.5}, ["features.3"], ("Identity",)),
        ("text_transformer", {"layers": 3}, ["blocks.1"], ("Skip",)),
    ],
)
def test_block_removal_keeps_shapes_and_replays(
    name: str, kwargs: dict, blocks: list, kind: tuple, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = sk.zoo.create(name, **kwargs).eval()
    x = zoo_example(name)
    params = count_params(model)
    record = sk.records(remove_blocks_(model, blocks, x))[-1]
    assert tuple(record.details["replaced_by"].values()) == kind
    assert record.details["params_after"] == count_params(model) < params
    assert record.details["macs_after"] < record.details["macs_before"]
    assert record.details["repaired"] == {}
    sk.save(model, tmp_path / "ckpt", example=x)
    assert torch.equal(sk.load(tmp_path / "ckpt")(x), model(x))


def test_identity_block_removal_matches_a_zero_residual() -> None:
    """Replacing a block by its identity path equals the block with its residual branch zeroed."""
    torch.manual_seed(0)
    model = sk.zoo.create("resnet_cifar", depth=8).eval()
    x = zoo_example("resnet_cifar")
    zeroed = sk.zoo.create("resnet_cifar", depth=8).eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        zeroed.layer2[0].bn2.weight.zero_()
        zeroed.layer2[0].bn2.bias.zero_()
    remove_blocks_(model, ["layer2.0"], x)  # conv shortcut: shortcut path + ReLU
    assert torch.allclose(model(x), zeroed(x), atol=1e-6)
    assert isinstance(sk.zoo.create("text_transformer").blocks[0], nn.Module)
    assert removable_blocks(sk.zoo.create("seed_cnn")) == []


def test_non_blocks_are_refused() -> None:
    model = sk.zoo.create("resnet_cifar", depth=8)
    with pytest.raises(sk.SlimkitError, match="not a residual block"):
        remove_blocks_(model, ["layer1.0.conv1"], zoo_example("resnet_cifar"))
    with pytest.raises(sk.SlimkitError, match="no blocks selected by"):
        remove_blocks_(model, ["re:nothing.*"], zoo_example("resnet_cifar"))
    with pytest.raises(sk.SlimkitError, match="no removable residual blocks"):
        drop_blocks_(sk.zoo.create("seed_cnn"), [(zoo_example("seed_cnn"), torch.zeros(4, dtype=torch.long))], 1)
    assert budget_count(0.25, 9) == 3 and budget_count(2, 9) == 2
    with pytest.raises(sk.SlimkitError, match="has 9 removable blocks"):
        budget_count(10, 9)
    assert isinstance(Skip()(torch.ones(1), "ignored"), torch.Tensor)


@pytest.fixture(scope="module")
def small_resnet(digits: sk.data.Dataset) -> nn.Module:
    torch.manual_seed(0)
    model = sk.zoo.create_for("resnet_cifar", digits, depth=14, width=0.5)
    sk.train.fit(model, digits.train, val=digits.val, epochs=6, lr=3e-3, progress=False)
    return model


def test_drop_blocks_removes_the_least_important(small_resnet: nn.Module, digits: sk.data.Dataset) -> None:
    model = sk.zoo.create_for("resnet_cifar", digits, depth=14, width=0.5)
    model.load_state_dict(small_resnet.state_dict())
    drops = block_importance(model, digits.val)
    record = sk.records(drop_blocks_(model, digits.val, 0.25))[-1]
    assert record.details["importance_drop"] == drops and record.details["budget"] == 2
    assert sorted(record.details["dropped"]) == sorted(sorted(drops, key=drops.get)[:2])
    kept = [n for n in drops if n not in record.details["dropped"]]
    assert max(drops[n] for n in record.details["dropped"]) <= min(drops[n] for n in kept)
    assert all(isinstance(model.get_submodule(n), nn.Identity | nn.Sequential) for n in record.details["dropped"])
    base = accuracy(small_resnet, digits.test)
    sk.train.fit(model, digits.train, val=digits.val, epochs=6, lr=3e-3, progress=False)
    assert accuracy(model, digits.test) >= base - 0.03  # recovers to within 3 points on real digits


def test_brief_example_pools_removed_repaired_and_recovered(mnist: sk.data.Dataset) -> None:
    """The design brief's simplification, reduced (width 0.25, few epochs): it trains back up on real digits."""
    torch.manual_seed(0)
    model = sk.zoo.create_for("seed_cnn", mnist, width=0.25)
    sk.train.fit(model, mnist.train, epochs=3, lr=2e-3, progress=False)
    base = accuracy(model, mnist.test)
    record = sk.records(remove_layers_(model, mnist.example, types=["MaxPool2d"]))[-1]
    assert record.details["params_after"] > 10 * record.details["params_before"]
    sk.train.fit(model, mnist.train, epochs=1, lr=5e-4, progress=False)
    assert base > 0.9 and accuracy(model, mnist.test) > base - 0.02


def test_block_importance_is_measured_in_the_tasks_metric_and_direction(digits: sk.data.Dataset) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from slimkit.simplify.remove import identity_path
    from slimkit.task import get_task

    torch.manual_seed(0)
    model = sk.zoo.create_for("resnet_cifar", digits, depth=8, width=0.5, num_classes=1).eval()
    x, y = digits.splits["val"]
    loader = DataLoader(TensorDataset(x, y.float()[:, None]), batch_size=128)  # regress the digit's value
    drops = block_importance(model, loader, task="regression")
    rmse = get_task("regression").evaluate
    base = rmse(model, loader)["rmse"]
    name = next(iter(drops))
    without = sk.zoo.create_for("resnet_cifar", digits, depth=8, width=0.5, num_classes=1).eval()
    without.load_state_dict(model.state_dict())
    parent, _, attr = name.rpartition(".")
    setattr(without.get_submodule(parent) if parent else without, attr, identity_path(model.get_submodule(name)))
    assert drops[name] == pytest.approx(rmse(without, loader)["rmse"] - base, abs=1e-5)  # RMSE up: positive
    record = sk.records(drop_blocks_(model, loader, 1, task="regression"))[-1]
    assert record.details["metric"] == "rmse" and record.details["dropped"] == [min(drops, key=drops.get)]
