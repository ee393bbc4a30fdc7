"""Fusion beyond classification: ensembles, soups and ensemble distillation decide by the task's metric."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import slimkit as sk
from slimkit.core.errors import SlimkitError
from slimkit.data import Loaders
from slimkit.fuse import distill_ensemble, ensemble, greedy_soup
from slimkit.task import get_task
from slimkit.train import fit


def _regression() -> Loaders:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1200, 8, generator=g)
    y = torch.sin(x[:, :4].sum(1)) + 0.5 * x[:, 4] * x[:, 5] + 0.05 * torch.randn(1200, generator=g)
    split = {"train": slice(0, 800), "val": slice(800, 1000), "test": slice(1000, 1200)}
    loaders = {
        name: DataLoader(TensorDataset(x[s], y[s, None]), batch_size=64, shuffle=name == "train")
        for name, s in split.items()
    }
    return Loaders(**loaders, task="regression")


def _members(data: Loaders, n: int = 3, epochs: int = 4) -> list[nn.Module]:
    """Fine-tuned from one start with different seeds (what soups need)."""
    torch.manual_seed(0)
    start = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1))
    fit(start, data.train, task="regression", epochs=6, lr=3e-3, seed=0)
    members = []
    for seed in range(n):
        m = copy.deepcopy(start)
        fit(m, data.train, task="regression", epochs=epochs, lr=1e-3, seed=seed + 1)
        members.append(m.eval())
    return members


@pytest.fixture(scope="module")
def regression() -> tuple[Loaders, list[nn.Module]]:
    data = _regression()
    return data, _members(data)


def test_regression_ensembles_average_outputs_and_decide_by_rmse(regression: tuple) -> None:
    data, members = regression
    task = get_task("regression")
    rmse = [task.evaluate(m, data.val)["rmse"] for m in members]
    ens = ensemble(members, "mean", val=data)
    x = next(iter(data.val))[0]
    with torch.no_grad():
        assert torch.allclose(ens(x), torch.stack([m(x) for m in members]).mean(0), atol=1e-6)
    details = sk.records(ens)[-1].details
    assert details["metric"] == "rmse" and details["member_val_rmse"] == pytest.approx(rmse)
    # the mean of the outputs is never worse than the average member under squared error (Jensen)
    assert details["val_rmse"] <= (sum(r**2 for r in rmse) / len(rmse)) ** 0.5 + 1e-6
    selected = ensemble(members, "select", val=data)
    assert sk.records(selected)[-1].details["val_rmse"] <= min(rmse) + 1e-6  # starts from the best member
    weighted = ensemble(members, "weighted", val=data)
    assert float(weighted.weights.sum()) == pytest.approx(1.0)
    assert task.evaluate(weighted, data.val)["loss"] <= task.evaluate(ens, data.val)["loss"] + 1e-6
    for method in ("vote", "stack"):
        with pytest.raises(SlimkitError, match="class probabilities"):
            ensemble(members, method, val=data)


def test_greedy_soup_and_ensemble_distillation_follow_the_task_direction(regression: tuple) -> None:
    data, members = regression
    task = get_task("regression")
    rmse = [task.evaluate(m, data.val)["rmse"] for m in members]
    soup = greedy_soup(members, data.val, task="regression")
    details = sk.records(soup)[-1].details
    assert details["order"][0] == min(range(len(rmse)), key=rmse.__getitem__)  # lower RMSE first
    assert details["val_rmse"] == pytest.approx(task.evaluate(soup, data.val)["rmse"])
    assert details["val_rmse"] <= min(rmse)
    for step in details["steps"][1:]:  # an ingredient is kept exactly when RMSE does not rise
        before = min(s["val_rmse"] for s in details["steps"][: details["steps"].index(step)] if s["kept"])
        assert step["kept"] == (step["val_rmse"] <= before)
    teacher = ensemble(members, "mean", val=data)
    student = copy.deepcopy(members[0])
    distill_ensemble(student, teacher, data, epochs=2, lr=1e-3, augment=False)
    record = sk.records(student)[-1].details
    assert record["start_val_rmse"] == pytest.approx(rmse[0])
    assert record["val_rmse"] == pytest.approx(task.evaluate(student, data.val)["rmse"], rel=1e-5)
    assert record["val_rmse"] <= record["start_val_rmse"]  # never worse than the start it may keep
    assert record["teacher_val_rmse"] == pytest.approx(task.evaluate(teacher, data.val)["rmse"])


def test_onnx_agreement_on_regression_outputs_and_named_inputs(tmp_path, regression: tuple) -> None:
    from slimkit.io import onnx_agreement

    data, members = regression
    x = next(iter(data.val))[0]
    path = sk.export(members[0], tmp_path / "m.onnx", x[:4])
    check = onnx_agreement(members[0], path, x)
    assert set(check) == {"max_abs_diff"} and check["max_abs_diff"] < 1e-4  # no top-1 for one output column

    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 3), nn.Linear(8, 3)

        def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
            return self.a(left) + self.b(right)

    two = TwoInputs().eval()
    named = {"left": x, "right": x.flip(0)}
    path = sk.export(two, tmp_path / "two.onnx", {k: v[:4] for k, v in named.items()})
    check = onnx_agreement(two, path, named, batch_size=16)
    assert check["top1_agreement"] == 1.0 and check["max_abs_diff"] < 1e-4
