from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import slimkit as sk
from slimkit.compress import LowRankConfig, factor
from slimkit.compress.lowrank import break_even_rank, full_rank
from slimkit.core.errors import SlimkitError
from slimkit.core.transform import Config
from slimkit.evaluate import count_params

FAST = settings(max_examples=25, deadline=None)


def accuracy(model: nn.Module, data: sk.data.Dataset) -> float:
    return 100 * sk.evaluate(model, data, latency=False).metrics["accuracy"]


@FAST
@given(i=st.integers(1, 40), o=st.integers(1, 40), bias=st.booleans(), seed=st.integers(0, 99))
def test_full_rank_linear_is_exact(i: int, o: int, bias: bool, seed: int) -> None:
    torch.manual_seed(seed)
    layer = nn.Linear(i, o, bias=bias)
    x = torch.randn(5, i)
    new = factor.svd_linear(layer, full_rank(layer))
    torch.testing.assert_close(new(x), layer(x), atol=1e-5, rtol=1e-4)


@FAST
@given(
    c=st.integers(1, 6),
    o=st.integers(1, 6),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    stride=st.integers(1, 2),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    variant=st.sampled_from(["channel", "spatial"]),
    seed=st.integers(0, 99),
)
def test_full_rank_conv_is_exact(
    c: int, o: int, kh: int, kw: int, stride: int, padding: int, dilation: int, variant: str, seed: int
) -> None:
    torch.manual_seed(seed)
    conv = nn.Conv2d(c, o, (kh, kw), stride=stride, padding=padding, dilation=dilation)
    x = torch.randn(2, c, 11, 12)
    new = factor.svd_conv(conv, full_rank(conv, variant), variant)
    torch.testing.assert_close(new(x), conv(x), atol=1e-5, rtol=1e-4)


@FAST
@given(
    i=st.integers(2, 48),
    o=st.integers(2, 48),
    frac=st.floats(0.05, 1.0),
    conv=st.booleans(),
    variant=st.sampled_from(["channel", "spatial"]),
)
def test_applied_factorization_always_has_fewer_params(i: int, o: int, frac: float, conv: bool, variant: str) -> None:
    layer = nn.Conv2d(i, o, 3) if conv else nn.Linear(i, o)
    model = nn.Sequential(OrderedDict(layer=layer))
    before = count_params(model)
    rank = max(1, round(frac * full_rank(layer, variant)))
    cfg = LowRankConfig(rank=rank, conv=variant)
    rec = sk.records(sk.apply_(model, cfg))[-1]
    if rec.changed:
        assert rank <= break_even_rank(layer, variant)
        assert count_params(model) < before
        assert rec.details["layers"]["layer"]["params_after"] == count_params(model)
    else:
        assert "would not save" in rec.skipped["layer"]
        assert count_params(model) == before


@FAST
@given(o=st.integers(1, 12), extra=st.integers(0, 12), conv=st.booleans(), seed=st.integers(0, 99))
def test_pca_factor_at_full_rank_is_exact(o: int, extra: int, conv: bool, seed: int) -> None:
    torch.manual_seed(seed)
    layer = nn.Conv2d(o + extra, o, 3, padding=1) if conv else nn.Linear(o + extra, o)
    x = torch.randn(64, o + extra, 5, 5) if conv else torch.randn(64, o + extra)
    y = layer(x).detach()
    rows = (y.permute(0, 2, 3, 1) if conv else y).reshape(-1, o).double()
    mean = rows.mean(0)
    _, vecs = factor.output_pca(mean, torch.cov(rows.T, correction=0).reshape(o, o))
    new = factor.pca_factor(layer, mean, vecs)
    x2 = torch.randn_like(x)  # exact on any input, not only the calibration data
    torch.testing.assert_close(new(x2), layer(x2), atol=1e-4, rtol=1e-4)


def test_unit_selection_is_exact_when_units_are_redundant() -> None:
    torch.manual_seed(0)
    fc1, fc2 = nn.Linear(8, 6), nn.Linear(6, 3)
    with torch.no_grad():  # units 3..5 duplicate units 0..2 (scaled): the span has 3 dimensions
        fc1.weight[3:] = 2 * fc1.weight[:3]
        fc1.bias[3:] = 2 * fc1.bias[:3]
    model = nn.Sequential(OrderedDict(fc1=fc1, act=nn.ReLU(), fc2=fc2))
    x = torch.randn(300, 8)
    reference = model(x).detach()
    sk.apply_(model, LowRankConfig(method="pca", rank=3, layers=("fc1",)), example_inputs=x)
    assert model.fc1.out_features == 3 and model.fc2.in_features == 3
    x2 = torch.randn(50, 8)
    torch.testing.assert_close(model(x), reference, atol=1e-4, rtol=1e-4)
    assert model(x2).shape == (50, 3)


@pytest.fixture(scope="module")
def cnn_results(trained_cnn: nn.Module, mnist: sk.data.Dataset) -> dict[str, tuple[float, nn.Module]]:
    """seed_cnn's fc1 (1024 units) at rank 512 by each method, with test accuracy."""
    x = mnist.splits["train"][0][:2000]
    out = {"base": (accuracy(trained_cnn, mnist), trained_cnn)}
    for method in ("pca", "pca-factor", "svd"):
        m = copy.deepcopy(trained_cnn)
        sk.apply_(m, LowRankConfig(method=method, ratio=0.5, layers=("fc1",)), example_inputs=x)
        out[method] = (accuracy(m, mnist), m)
    return out


def test_seed_cnn_pca_dense_1024_to_512_keeps_accuracy(cnn_results: dict) -> None:
    base, original = cnn_results["base"]
    acc, model = cnn_results["pca"]
    assert isinstance(model.fc1, nn.Linear) and model.fc1.out_features == 512 and model.fc2.in_features == 512
    assert count_params(model) < 0.52 * count_params(original)
    assert base - acc <= 0.3, (base, acc)
    for method in ("svd", "pca-factor"):  # the same rank by the other methods, reported beside it
        acc_m, m = cnn_results[method]
        assert isinstance(m.fc1, nn.Sequential) and m.fc1[0].out_features == 512
        assert base - acc_m <= 1.0 and count_params(model) < count_params(m) < count_params(original)


def test_factorized_model_round_trips_through_a_checkpoint(cnn_results: dict, tmp_path: Path) -> None:
    x = torch.rand(4, 1, 28, 28)
    for method in ("pca", "svd"):
        model = cnn_results[method][1]
        path = sk.save(model, tmp_path / method, example=x)
        loaded = sk.load(path)
        torch.testing.assert_close(loaded.eval()(x), model.eval()(x))


def test_skipped_layers_are_reported_with_reasons() -> None:
    model = sk.zoo.create("seed_cnn")
    sk.apply_(model, LowRankConfig(ratio=0.9))
    rec = sk.records(model)[-1]
    for name in ("conv1", "conv2", "fc1"):  # e.g. fc1 at rank 922: 922 * (1600 + 1024) > 1600 * 1024
        assert "would not save" in rec.skipped[name]
    assert rec.changed == ["fc2"] and rec.details["layers"]["fc2"]["rank"] == 9
    model = sk.zoo.create("seed_cnn")
    sk.apply_(model, LowRankConfig(ratio=0.5))
    assert sk.records(model)[-1].details["layers"]["fc1"]["rank"] == 512


def test_pca_falls_back_and_refits_consumer_in_chains() -> None:
    model = sk.zoo.create("lenet5")
    x = torch.rand(200, 1, 28, 28)
    sk.apply_(model, LowRankConfig(method="pca", ratio=0.5, layers=("re:fc\\d",)), example_inputs=x)
    rec = sk.records(model)[-1]
    assert rec.details["layers"]["fc1"]["kind"] == "pca-units" and model.fc1.out_features == 60
    assert "refit as the layer after fc1" in rec.skipped["fc2"]
    assert rec.details["fallback"]["fc3"].startswith("no Linear")
    assert model(x[:3]).shape == (3, 10)


def test_energy_and_budget_choose_ranks() -> None:
    torch.manual_seed(0)
    model = sk.zoo.create("lenet5")
    before = count_params(model)
    s2 = torch.linalg.svdvals(model.fc1.weight.detach().double()) ** 2
    sk.apply_(model, LowRankConfig(energy=0.9, layers=("fc1",)))
    r = sk.records(model)[-1].details["layers"]["fc1"]["rank"]
    assert s2[:r].sum() >= 0.9 * s2.sum() > s2[: r - 1].sum() and r < 120  # the smallest such rank
    model = sk.zoo.create("lenet5")
    sk.apply_(model, LowRankConfig(budget=0.4, layers=("re:fc.",)))
    layers = sk.records(model)[-1].details["layers"]
    kept = sum(d["params_after"] for d in layers.values())
    assert kept <= 0.4 * sum(d["params_before"] for d in layers.values()) and count_params(model) < before
    model = sk.zoo.create("lenet5")
    sk.apply_(model, LowRankConfig(budget=0.5, budget_metric="macs"), example_inputs=torch.rand(2, 1, 28, 28))
    assert sk.records(model)[-1].changed


def test_config_round_trip() -> None:
    cfg = LowRankConfig(method="pca", ratio=0.5, layers=("fc1", "re:conv.*"), conv="spatial")
    assert Config.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "tucker"}, "unknown low-rank method"),
        ({"rank": 4, "ratio": 0.5}, "only one of"),
        ({"ratio": 1.5}, "ratio must be in"),
        ({"rank": 0}, "at least 1"),
        ({"conv": "diagonal"}, "unknown conv variant"),
    ],
)
def test_bad_configs_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(SlimkitError, match=message):
        LowRankConfig(**kwargs)


def test_bad_inputs_are_one_line_errors() -> None:
    with pytest.raises(SlimkitError, match="larger than any selected layer"):
        sk.apply_(sk.zoo.create("lenet5"), LowRankConfig(rank=5000))
    with pytest.raises(SlimkitError, match="needs calibration inputs"):
        sk.apply_(sk.zoo.create("lenet5"), LowRankConfig(method="pca"))
    with pytest.raises(SlimkitError, match="no Linear or Conv2d"):
        sk.apply_(nn.Sequential(nn.ReLU()), LowRankConfig())
    with pytest.raises(SlimkitError, match="at least 60 calibration samples"):
        sk.apply_(
            sk.zoo.create("lenet5"),
            LowRankConfig(method="pca", ratio=0.5, layers=("fc1",)),
            example_inputs=torch.rand(10, 1, 28, 28),
        )
    with pytest.raises(SlimkitError, match="no Linear/Conv2d/Embedding layer named"):
        sk.apply_(sk.zoo.create("lenet5"), LowRankConfig(layers=("fc9",)))
