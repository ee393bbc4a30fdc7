"""Prediction ensembles: combination rules, fitting on validation data only, saving, ONNX, distillation."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimkit as sk
from slimkit.evaluate import accuracy, count_macs
from slimkit.fuse import Ensemble, best_member, distill_ensemble, ensemble, member_logits, train_members
from slimkit.fuse.ensemble import VOTE_TIE_BREAK
from slimkit.io import onnx_agreement
from tests.conftest import SMALL


@pytest.fixture(scope="module")
def members(digits: sk.data.Dataset) -> list[nn.Module]:
    """Three independently trained small ResNets on digits (different, imperfect members)."""
    return train_members("resnet_cifar", digits, n=3, model_args=SMALL, from_start=False, epochs=2).members


def _test_x(data: sk.data.Dataset) -> torch.Tensor:
    return data.splits["test"][0]


def test_mean_is_the_average_of_the_members_probabilities(members: list[nn.Module], digits: sk.data.Dataset) -> None:
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in members]
    ens = ensemble(members, "mean")
    x = _test_x(digits)
    with torch.no_grad():
        expected = torch.stack([m(x).softmax(1) for m in members]).mean(0)
        assert torch.allclose(ens(x).softmax(1), expected, atol=1e-6)
    for m, state in zip(members, before, strict=True):  # members are used, not changed
        assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())


def test_evaluate_sees_the_ensemble_as_one_model(members: list[nn.Module], digits: sk.data.Dataset) -> None:
    ens = ensemble(members, "mean", val=digits)
    report = sk.evaluate(ens, digits, latency=False)
    logits, labels = member_logits(members, digits.test)
    expected = float((logits.softmax(-1).mean(0).argmax(1) == labels).float().mean())
    assert report.metrics["accuracy"] == pytest.approx(expected)
    x = digits.example
    assert report.macs == sum(count_macs(m, x) for m in members)


class _Fixed(nn.Module):
    """A member that returns a fixed logit table, indexed by the input's first feature."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0].long()]


def test_vote_is_the_majority_and_ties_go_to_the_higher_mean_probability() -> None:
    g = torch.Generator().manual_seed(0)
    tables = [torch.randn(400, 3, generator=g) * 3 for _ in range(4)]  # 4 voters, 3 classes: many ties
    ens = ensemble([_Fixed(t) for t in tables], "vote")
    x = torch.arange(400).float().view(-1, 1)
    out = ens(x)
    assert torch.allclose(out.softmax(1).sum(1), torch.ones(400), atol=1e-5)
    counts = F.one_hot(torch.stack([t.argmax(1) for t in tables]), 3).sum(0)  # (N, 3)
    mean = torch.stack([t.softmax(1) for t in tables]).mean(0)
    top = counts.max(1, keepdim=True).values
    tied = (counts == top).sum(1) > 1
    assert tied.any() and (~tied).any()
    assert torch.equal(out.argmax(1)[~tied], counts.argmax(1)[~tied])
    tie_winner = mean.masked_fill(counts != top, -1).argmax(1)
    assert torch.equal(out.argmax(1)[tied], tie_winner[tied])
    expected = (1 - VOTE_TIE_BREAK) * counts / 4 + VOTE_TIE_BREAK * mean
    assert torch.allclose(out.softmax(1), expected, atol=1e-6)


def test_weighted_favours_the_trained_member_and_lowers_validation_log_loss(
    members: list[nn.Module], digits: sk.data.Dataset
) -> None:
    torch.manual_seed(0)
    noise = sk.zoo.create_for("resnet_cifar", digits, **SMALL).eval()  # untrained: worthless
    ens = ensemble([members[0], noise], "weighted", val=digits)
    w = ens.weights
    assert torch.all(w >= 0) and float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    assert w[0] > 0.9
    logits, labels = member_logits([members[0], noise], digits.val)

    def val_log_loss(weights: torch.Tensor) -> float:
        probs = (weights.view(-1, 1, 1) * logits.softmax(-1)).sum(0)
        return float(-probs.gather(1, labels.view(-1, 1)).log().mean())

    assert val_log_loss(w) <= val_log_loss(torch.full((2,), 0.5))


class _ValOnly:
    """A dataset whose training and test splits must not be read."""

    def __init__(self, data: sk.data.Dataset) -> None:
        self.data = data
        self.val_reads = 0

    def loader(self, split: str, batch_size: int | None = None, shuffle: bool | None = None):  # noqa: ANN201
        if split != "val":
            raise AssertionError(f"read the {split} split")
        self.val_reads += 1
        return self.data.loader(split, batch_size, shuffle)

    def __getattr__(self, name: str) -> object:
        if name in ("train", "test", "splits"):
            raise AssertionError(f"read {name}")
        return getattr(self.data, name)


@pytest.mark.parametrize("method", ["weighted", "select", "stack"])
def test_fitted_methods_read_only_the_validation_split(
    members: list[nn.Module], digits: sk.data.Dataset, method: str
) -> None:
    guard = _ValOnly(digits)
    ens = ensemble(members, method, val=guard)
    assert guard.val_reads == 1
    details = sk.records(ens)[-1].details
    assert details["val_samples"] == len(digits.splits["val"][1])


def test_stacking_fits_val_and_starts_from_averaging(members: list[nn.Module], digits: sk.data.Dataset) -> None:
    loose = ensemble(members, "stack", val=digits, l2=0.0)
    anchored = ensemble(members, "stack", val=digits, l2=1e6)
    logits, labels = member_logits(members, digits.val)
    geometric = F.log_softmax(logits, -1).mean(0)  # the stacker's starting point
    with torch.no_grad():
        assert torch.allclose(anchored.combine(logits), geometric, atol=1e-3)  # l2 holds it at averaging
        loss = F.cross_entropy(loose.combine(logits), labels)
        assert loss < F.cross_entropy(geometric, labels)  # unregularised fit lowers the val loss
    acc = sk.records(loose)[-1].details["val_accuracy"]
    assert acc == pytest.approx(float((loose.combine(logits).argmax(1) == labels).float().mean()))


@pytest.mark.parametrize("method", ["mean", "vote", "weighted", "stack"])
def test_save_and_load_round_trip_without_pickle(
    members: list[nn.Module], digits: sk.data.Dataset, method: str, tmp_path: Path
) -> None:
    ens = ensemble(members, method, val=digits)
    sk.save(ens, tmp_path / "ens", example=digits.example)
    spec = json.loads((tmp_path / "ens" / "spec.json").read_text())
    assert spec["arch"]["name"] == "ensemble" and spec["arch"]["kwargs"]["method"] == method
    assert [a["name"] for a in spec["arch"]["kwargs"]["members"]] == ["resnet_cifar"] * 3
    loaded = sk.load(tmp_path / "ens")
    assert isinstance(loaded, Ensemble) and loaded.method == method
    x = _test_x(digits)
    with torch.no_grad():
        assert torch.equal(loaded(x), ens(x))
    sk.save(loaded, tmp_path / "again")  # a loaded ensemble saves again
    with torch.no_grad():
        assert torch.equal(sk.load(tmp_path / "again")(x), ens(x))


@pytest.mark.parametrize("method", ["vote", "stack"])
def test_onnx_export_agrees_with_pytorch(
    members: list[nn.Module], digits: sk.data.Dataset, method: str, tmp_path: Path
) -> None:
    ens = ensemble(members, method, val=digits)
    sk.export(ens, tmp_path / "ens.onnx", digits.example)
    agreement = onnx_agreement(ens, tmp_path / "ens.onnx", _test_x(digits))
    assert agreement["top1_agreement"] >= 0.999
    assert agreement["max_abs_diff"] < 1e-3


def test_distilled_student_learns_the_ensemble(members: list[nn.Module], digits: sk.data.Dataset) -> None:
    teacher = ensemble(members, "mean")
    torch.manual_seed(0)
    student = sk.zoo.create_for("resnet_cifar", digits, **SMALL)
    x = _test_x(digits)

    def agreement() -> float:
        with torch.no_grad():
            return float((student.eval()(x).argmax(1) == teacher(x).argmax(1)).float().mean())

    before = agreement()
    history = distill_ensemble(student, teacher, digits, epochs=2, lr=1e-3)  # from scratch: a higher rate
    assert len(history.epochs) == 2
    assert agreement() > before + 0.3  # from chance level to mostly matching the ensemble
    assert count_macs(student, digits.example) == count_macs(members[0], digits.example)
    record = sk.records(student)[-1]
    assert record.transform == "fuse.distill_ensemble"
    assert record.details["teacher_val_accuracy"] == pytest.approx(accuracy(teacher, digits.val))
    assert record.details["start_val_accuracy"] < 0.3  # untrained
    assert record.details["val_accuracy"] == pytest.approx(accuracy(student, digits.val))  # the kept epoch


def test_distilling_into_a_copy_of_the_best_member_keeps_what_it_knows(
    members: list[nn.Module], digits: sk.data.Dataset
) -> None:
    best, accs = best_member(members, digits)
    student = copy.deepcopy(members[best])
    distill_ensemble(student, ensemble(members, "mean"), digits, epochs=1)
    details = sk.records(student)[-1].details
    assert details["start_val_accuracy"] == pytest.approx(accs[best])
    assert details["val_accuracy"] >= accs[best] - 0.05  # a gentle fine-tune, not a restart
    with pytest.raises(sk.SlimkitError, match="needs data with train and val splits"):
        distill_ensemble(student, ensemble(members, "mean"), digits.train)


def test_errors_are_one_line(members: list[nn.Module], digits: sk.data.Dataset) -> None:
    cases = [
        (lambda: ensemble(members, "median"), "unknown ensemble method 'median'"),
        (lambda: ensemble(members, "stack"), "pass val="),
        (lambda: ensemble([], "mean"), "at least one member"),
        (
            lambda: ensemble([members[0], nn.Sequential(members[1], nn.Linear(10, 4))], "weighted", val=digits),
            "do not agree on the output shape",
        ),
    ]
    for make, message in cases:
        with pytest.raises(sk.SlimkitError, match=message) as exc:
            make()
        assert "\n" not in str(exc.value)
    unsaveable = ensemble([members[0], nn.Sequential(members[1])], "mean")
    with pytest.raises(sk.SlimkitError, match="cannot save Ensemble"):
        sk.save(unsaveable, "/nonexistent/never-written")
