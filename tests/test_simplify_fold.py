from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import slimkit as sk
from slimkit.core.surgery import replace_module
from slimkit.evaluate import count_params
from slimkit.simplify import FoldConfig, fold_
from tests.conftest import zoo_example


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so folding has something to get wrong."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


@pytest.mark.parametrize("name", sk.zoo.list())
def test_fold_is_exact_on_every_zoo_model(name: str) -> None:
    torch.manual_seed(0)
    model = randomise_norms(sk.zoo.create(name))
    x = zoo_example(name)
    with torch.no_grad():
        before = model(x)
    fold_(model, x)
    record = sk.records(model)[-1]
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-5)
    norms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    dropouts = sum(isinstance(m, nn.Dropout) for m in model.modules())
    assert norms == 0 and dropouts == 0  # every BatchNorm of the zoo sits right after a conv
    assert record.details["params_after"] == count_params(model)
    if name == "resnet_cifar":  # stem + 2 per block (9 blocks) + 2 conv shortcuts
        assert len(record.details["bn_folded"]) == 1 + 18 + 2
        assert len(model.layer2[0].shortcut) == 1  # its Identity is gone
    if name == "mobilenet_v2":
        assert record.details["dropout_removed"] == ["dropout"]
        assert all(not isinstance(m, nn.Identity) for m in model.features.modules())  # Sequentials rebuilt
        assert "dropout" in record.skipped  # called by name from MobileNetV2.forward, kept and reported


@pytest.mark.parametrize("name", ["resnet_cifar", "mobilenet_v2", "text_transformer"])
def test_folded_checkpoint_replays(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = randomise_norms(sk.zoo.create(name, **({"width": 0.5} if name == "mobilenet_v2" else {})))
    x = zoo_example(name)
    fold_(model, x)
    sk.save(model, tmp_path / "ckpt", example=x)
    loaded = sk.load(tmp_path / "ckpt").eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in loaded.modules()) == 0


@settings(max_examples=25, deadline=None)
@given(
    channels=st.lists(st.integers(1, 6), min_size=2, max_size=4),
    groups_last=st.booleans(),
    bias=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_random_conv_bn_stacks_fold_exactly(channels: list[int], groups_last: bool, bias: bool, seed: int) -> None:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(channels[:-1], channels[1:], strict=False):
        layers += [nn.Conv2d(a, b, 3, padding=1, bias=bias), nn.BatchNorm2d(b), nn.ReLU()]
    c = channels[-1]
    groups = c if groups_last else 1  # a depthwise conv folds per output channel too
    layers += [nn.Conv2d(c, c, 3, groups=groups, bias=bias), nn.BatchNorm2d(c, eps=1e-3)]
    model = randomise_norms(nn.Sequential(*layers), seed)
    x = torch.randn(2, channels[0], 7, 7)
    before = model(x)
    fold_(model, x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(model(x), before, atol=1e-5, rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 12), min_size=3, max_size=5), seed=st.integers(0, 10_000))
def test_linear_chains_merge_exactly_unless_that_grows_them(sizes: list[int], seed: int) -> None:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=False):
        layers += [nn.Linear(a, b), nn.Dropout(0.5)]
    model = nn.Sequential(*layers).eval()
    x = torch.randn(5, sizes[0])
    before = model(x)
    params = sum(p.numel() for p in model.parameters())
    fold_(model, x)
    record = sk.records(model)[-1]
    assert torch.allclose(model(x), before, atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in model.parameters()) <= params  # merging never adds parameters
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == len(sizes) - 1 - len(record.details["linear_merged"])
    if len(linears) > 1:
        assert any("grow parameters" in why for why in record.skipped.values())


def test_low_rank_pair_is_not_merged() -> None:
    model = nn.Sequential(nn.Linear(64, 4, bias=False), nn.Linear(4, 64)).eval()
    fold_(model)
    record = sk.records(model)[-1]
    assert record.details["linear_merged"] == []
    assert "grow parameters from 576 to 4,160" in record.skipped["0+1"]
    assert model[0].out_features == 4 and count_params(model) == 576


class Branchy(nn.Module):
    """BatchNorms that must not be folded: one reads a ReLU, one reads a conv whose output is reused."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn_shared = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.bn_after_relu = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)
        self.bn_seq = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.bn_shared(y) + y  # the conv's output has two users
        z = self.bn_after_relu(self.relu(z))
        t = self.fc(z.mean((2, 3)).unsqueeze(1).expand(-1, 3, -1))  # (B, 3, 4): Linear output is not (N, C)
        return self.bn_seq(t).flatten(1)


def test_unsafe_batchnorms_are_skipped_with_a_reason() -> None:
    torch.manual_seed(0)
    model = randomise_norms(Branchy())
    x = torch.randn(2, 3, 6, 6)
    before = model(x)
    fold_(model, x)
    record = sk.records(model)[-1]
    assert torch.allclose(model(x), before, atol=1e-6)
    assert record.details["bn_folded"] == []
    assert "also used elsewhere" in record.skipped["bn_shared"]
    assert "reads from layer relu" in record.skipped["bn_after_relu"]
    assert "not (N, C)" in record.skipped["bn_seq"]


def test_linear_batchnorm1d_folds_and_untraceable_models_are_reported() -> None:
    torch.manual_seed(0)
    model = randomise_norms(nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3), nn.ReLU()))
    x = torch.randn(4, 5)
    before = model(x)
    fold_(model, x)
    assert torch.allclose(model(x), before, atol=1e-6) and sk.records(model)[-1].details["bn_folded"] == [["0", "1"]]

    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)) if x.sum() > 0 else x  # data-dependent control flow

    model = Untraceable().eval()
    fold_(model)
    assert "torch.fx cannot trace" in sk.records(model)[-1].skipped["bn"]


def test_config_round_trips_and_surgery_is_recorded() -> None:
    config = FoldConfig(linear=False)
    assert FoldConfig.from_json(config.to_json()) == config
    model = sk.zoo.create("resnet_cifar", depth=8).eval()
    sk.apply_(model, config, zoo_example("resnet_cifar"))
    changes = sk.zoo.arch_of(model)["changes"]
    assert {c["path"] for c in changes} >= {"conv1", "bn1", "layer1.0.conv2", "layer1.0.bn2"}
    assert next(c for c in changes if c["path"] == "conv1")["module"]["args"]["bias"] is True
    replace_module(model, "fc", nn.Linear(64, 10))  # later surgery still works on the folded model
