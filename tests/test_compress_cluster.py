from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import slimkit as sk
from slimkit.compress import ClusterConfig, tied
from slimkit.compress.cluster import kmeans_1d
from slimkit.core.errors import SlimkitError
from slimkit.core.transform import Config


@settings(max_examples=25, deadline=None)
@given(n=st.integers(300, 3000), k=st.sampled_from([2, 16, 64, 256]), seed=st.integers(0, 99))
def test_kmeans_assigns_each_value_to_its_nearest_centroid(n: int, k: int, seed: int) -> None:
    v = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    c, idx = kmeans_1d(v, k)
    assert len(c) == k and bool((c[1:] >= c[:-1]).all())
    nearest = (v.double()[:, None] - c[None, :]).abs().argmin(1)
    assert torch.equal((v.double() - c[idx]).abs(), (v.double() - c[nearest]).abs())


@pytest.fixture(scope="module")
def clustered(trained_cnn: nn.Module, mnist: sk.data.Dataset) -> dict:
    def acc(m: nn.Module) -> float:
        return 100 * sk.evaluate(m, mnist, latency=False).metrics["accuracy"]

    model = copy.deepcopy(trained_cnn)
    sk.apply_(model, ClusterConfig(k=16))
    before_tuning = {n: torch.unique(model.get_submodule(n).weight) for n in ("conv2", "fc1")}
    with tied(model):
        sk.train.fit(model, mnist.train, epochs=1, lr=1e-4, progress=False)
    return {"base": acc(trained_cnn), "tuned": acc(model), "model": model, "before_tuning": before_tuning}


def test_sixteen_centroids_keep_accuracy_after_tied_fine_tuning(clustered: dict) -> None:
    assert clustered["base"] - clustered["tuned"] <= 0.5, (clustered["base"], clustered["tuned"])
    model = clustered["model"]
    for name in ("conv1", "conv2", "fc1", "fc2"):
        assert len(torch.unique(model.get_submodule(name).weight)) <= 16
    moved = clustered["before_tuning"]["fc1"]
    assert not torch.equal(torch.unique(model.fc1.weight), moved)  # fine-tuning moved the centroids


def test_clustered_checkpoint_is_at_most_a_fifth(clustered: dict, trained_cnn: nn.Module, tmp_path: Path) -> None:
    full = sk.save(trained_cnn, tmp_path / "fp32") / "weights.safetensors"
    small = sk.save(clustered["model"], tmp_path / "k16") / "weights.safetensors"
    assert small.stat().st_size <= 0.2 * full.stat().st_size, small.stat().st_size / full.stat().st_size
    loaded = sk.load(tmp_path / "k16")
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(loaded.eval()(x), clustered["model"].eval()(x), rtol=0, atol=0)


def test_tied_gradient_moves_clusters_together() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    sk.apply_(model, ClusterConfig(k=4, layers=("0",)))
    w = model[0].weight
    groups = torch.unique(w.detach(), return_inverse=True)[1]
    with tied(model):
        model(torch.randn(8, 32)).square().sum().backward()
        for g in range(4):  # every member of a cluster gets the cluster's summed gradient
            members = w.grad[groups == g]
            assert torch.allclose(members, members[0].expand_as(members))
    assert len(torch.unique(model[0].weight)) <= 4


def test_skips_and_errors() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(64, 8))
    sk.apply_(model, ClusterConfig(k=16))
    rec = sk.records(model)[-1]
    assert "already has 4 distinct values" in rec.skipped["0"] and rec.changed == ["1"]
    with pytest.raises(SlimkitError, match="between 2 and 256"):
        ClusterConfig(k=512)
    with pytest.raises(SlimkitError, match="unknown init"):
        ClusterConfig(init="random")
    with pytest.raises(SlimkitError, match="no clustered layers"):
        with tied(nn.Sequential(nn.Linear(4, 4))):
            pass
    with pytest.raises(SlimkitError, match="is not clustered"):
        with tied(nn.Sequential(nn.Linear(40, 40)), layers=["0"]):
            pass
    with pytest.raises(SlimkitError, match="no Linear, Conv or Embedding"):
        sk.apply_(nn.Sequential(nn.ReLU()), ClusterConfig())
    assert Config.from_json(ClusterConfig(k=32, layers=("fc1",)).to_json()) == ClusterConfig(k=32, layers=("fc1",))
