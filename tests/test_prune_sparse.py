from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.core.errors import SlimkitError
from slimkit.evaluate import count_macs
from slimkit.io.checkpoint import weights_bytes
from slimkit.prune import (
    ChannelPruneConfig,
    MagnitudePruneConfig,
    NMSparsityConfig,
    bake,
    prune_iteratively,
    sparsity,
)
from slimkit.prune.schedule import step_configs


def test_unstructured_90_percent_recovers_and_file_shrinks(
    trained_cnn: nn.Module, mnist: sk.data.Dataset, tmp_path: Path
) -> None:
    model = copy.deepcopy(trained_cnn)
    before = sk.evaluate(model, mnist, latency=False)
    record = sk.records(sk.apply_(model, MagnitudePruneConfig(sparsity=0.9)))[-1]
    assert "do not run faster" in record.details["note"]
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    zeros = sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    assert zeros / total >= 0.9
    sk.train.fit(model, mnist.train, epochs=2, lr=3e-4, progress=False)
    assert sparsity(model)["fc1"] >= 0.9  # the masks held during fine-tuning
    after = sk.evaluate(model, mnist, latency=False)
    assert after.metrics["accuracy"] >= before.metrics["accuracy"] - 0.005
    assert after.bytes <= 0.25 * before.bytes
    sk.save(model, tmp_path / "sparse", example=mnist.example)
    assert (tmp_path / "sparse" / "weights.safetensors").stat().st_size <= 0.25 * before.bytes
    reloaded = sk.load(tmp_path / "sparse")
    x = mnist.splits["test"][0][:64]
    assert torch.equal(reloaded(x), model(x))


def test_layer_scope_gives_every_layer_the_same_sparsity() -> None:
    model = sk.zoo.create("lenet5")
    sk.apply_(model, MagnitudePruneConfig(sparsity=0.5, scope="layer", protected=["fc3"]))
    levels = sparsity(model)
    assert levels["fc3"] == 0.0
    assert all(abs(v - 0.5) < 0.02 for k, v in levels.items() if k != "fc3")


def test_two_four_sparsity_pattern_and_skips() -> None:
    torch.manual_seed(0)
    model = sk.zoo.create("seed_cnn")
    record = sk.records(sk.apply_(model, NMSparsityConfig(n=2, m=4)))[-1]
    assert "conv1" in record.skipped  # 1 x 3 x 3 = 9 inputs per filter is not a multiple of 4
    w = model.fc1.weight.detach().reshape(1024, -1, 4)
    assert torch.equal((w != 0).sum(-1), torch.full((1024, 400), 2))
    bake(model)
    assert not hasattr(model.fc1, "parametrizations") and (model.fc1.weight == 0).float().mean() == 0.5
    with pytest.raises(SlimkitError, match="0 < n < m"):
        NMSparsityConfig(n=4, m=4)


def test_weights_bytes_stores_masked_weights() -> None:
    model = sk.zoo.create("lenet5")
    dense = len(weights_bytes(model)[0])
    sk.apply_(model, MagnitudePruneConfig(sparsity=0.8))
    data, _, encodings = weights_bytes(model)
    assert len(data) < 0.5 * dense and encodings["fc1.weight"]["codec"] == "sparse"


def test_step_configs_compose_to_the_goal() -> None:
    steps = step_configs(ChannelPruneConfig(ratio=0.5, ratios={"conv1": 0.75}), 3)
    keep = 1.0
    for cfg in steps:
        keep *= 1 - cfg.ratio
    assert keep == pytest.approx(0.5)
    assert (1 - steps[0].ratios["conv1"]) ** 3 == pytest.approx(0.25)
    targets = step_configs(ChannelPruneConfig(target_macs=0.25), 2)
    assert [c.target_macs for c in targets] == pytest.approx([0.5, 0.25])


def test_iterative_pruning_with_distillation(digits: sk.data.Dataset) -> None:
    torch.manual_seed(0)
    model = sk.zoo.create_for("resnet_cifar", digits, depth=8)
    sk.train.fit(model, digits.train, epochs=3, lr=3e-3, progress=False)
    base_acc = sk.evaluate(model, digits, latency=False).metrics["accuracy"]
    macs = count_macs(model, digits.example)
    seen = []
    results = prune_iteratively(
        model,
        digits,
        ChannelPruneConfig(target_macs=0.5),
        steps=2,
        finetune_epochs=1,
        lr=1e-3,
        progress=False,
        on_step=seen.append,
    )
    assert [r.step for r in results] == [1, 2] and seen == results
    assert results[0].macs > results[1].macs and results[1].macs <= 0.5 * macs
    assert sk.evaluate(model, digits, latency=False).metrics["accuracy"] >= base_acc - 0.05
