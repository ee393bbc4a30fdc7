"""Ensemble selection, member augmentation and checkpoint rules, and the distilled student's start guard."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import slimkit as sk
from slimkit.fuse import (
    Ensemble,
    best_member,
    distill_ensemble,
    ensemble,
    fit_selection,
    member_logits,
    random_affine,
    train_members,
)
from slimkit.io import onnx_agreement
from slimkit.train import DistillConfig
from tests.conftest import SMALL


@pytest.fixture(scope="module")
def members(digits: sk.data.Dataset) -> list[nn.Module]:
    """Three independently trained small ResNets on digits, plus an untrained (worthless) fourth."""
    trained = train_members("resnet_cifar", digits, n=3, model_args=SMALL, from_start=False, epochs=2).members
    torch.manual_seed(0)
    return [*trained, sk.zoo.create_for("resnet_cifar", digits, **SMALL).eval()]


def _accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probs.argmax(-1) == labels).float().mean())


def _noisy_members(seed: int, m: int, n: int = 120, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (M, N, K) of members of varied quality (signal strength) for random labels (N,)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=g)
    strength = torch.rand(m, generator=g) * 3  # member 0 may be much better than member 3, or worse
    logits = torch.randn(m, n, k, generator=g) + strength.view(-1, 1, 1) * torch.nn.functional.one_hot(labels, k)
    return logits, labels


def _log_loss(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float(-probs.gather(-1, labels.view(-1, 1)).log().mean())


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), m=st.integers(1, 6), rounds=st.integers(0, 25))
def test_selection_is_never_worse_than_the_best_member_on_validation(seed: int, m: int, rounds: int) -> None:
    logits, labels = _noisy_members(seed, m)
    probs = logits.softmax(-1)
    for metric in ("log-loss", "accuracy"):
        weights, details = fit_selection(logits, labels, rounds=rounds, metric=metric)
        assert torch.all(weights >= 0) and float(weights.sum()) == pytest.approx(1.0, abs=1e-6)
        picks = torch.tensor(details["picks"], dtype=torch.float)
        assert torch.allclose(weights, picks / picks.sum())  # weights are shares of picks
        assert int(picks.sum()) <= rounds + 1
        combined = (weights.view(-1, 1, 1) * probs).sum(0)
        if metric == "log-loss":  # the default
            assert _log_loss(combined, labels) <= min(_log_loss(p, labels) for p in probs) + 1e-5
        else:
            assert _accuracy(combined, labels) >= max(_accuracy(p, labels) for p in probs)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), m=st.integers(2, 6), bags=st.integers(1, 8))
def test_bagged_selection_weights_are_on_the_simplex(seed: int, m: int, bags: int) -> None:
    logits, labels = _noisy_members(seed, m)
    weights, details = fit_selection(logits, labels, bags=bags, seed=seed)
    assert weights.shape == (m,) and torch.all(weights >= 0)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6)
    assert len(details["bags"]) == bags
    again, _ = fit_selection(logits, labels, bags=bags, seed=seed)
    assert torch.equal(weights, again)  # seeded


def test_selection_mixes_members_of_equal_quality() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (400,), generator=g)
    signal = 2 * torch.nn.functional.one_hot(labels, 4)
    logits = torch.stack([torch.randn(400, 4, generator=g) + signal for _ in range(4)])  # independent errors
    weights, _ = fit_selection(logits, labels)
    assert int((weights > 0).sum()) >= 3  # averaging independent errors lowers the log loss
    assert _log_loss((weights.view(-1, 1, 1) * logits.softmax(-1)).sum(0), labels) < min(
        _log_loss(p, labels) for p in logits.softmax(-1)
    )


def test_select_ensemble_drops_a_worthless_member(members: list[nn.Module], digits: sk.data.Dataset) -> None:
    ens = ensemble(members, "select", val=digits)
    assert isinstance(ens, Ensemble) and ens.method == "select"
    assert float(ens.weights.sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(ens.weights[3]) < 1 / 4  # the untrained member: less than the mean's equal share
    details = sk.records(ens)[-1].details
    logits, labels = member_logits(members, digits.val)
    assert details["val_accuracy"] == pytest.approx(_accuracy(ens.combine(logits), labels))
    member_losses = [_log_loss(p, labels) for p in logits.softmax(-1)]
    assert _log_loss(ens.combine(logits).softmax(-1), labels) <= min(member_losses) + 1e-5
    by_accuracy = ensemble(members, "select", val=digits, metric="accuracy")
    best, accs = best_member(members, digits)
    assert sk.records(by_accuracy)[-1].details["val_accuracy"] >= accs[best]
    assert sk.records(ens)[-1].config == {
        "method": "select",
        "l2": 0.01,
        "rounds": 20,
        "metric": "log-loss",
        "bags": 0,
        "seed": 0,
    }


def test_select_saves_reloads_and_exports_to_onnx(
    members: list[nn.Module], digits: sk.data.Dataset, tmp_path: Path
) -> None:
    ens = ensemble(members, "select", val=digits)
    sk.save(ens, tmp_path / "ens", example=digits.example)
    assert json.loads((tmp_path / "ens" / "spec.json").read_text())["arch"]["kwargs"]["method"] == "select"
    loaded = sk.load(tmp_path / "ens")
    assert torch.equal(loaded.weights, ens.weights)
    x = digits.splits["test"][0]
    with torch.no_grad():
        assert torch.equal(loaded(x), ens(x))
    sk.export(ens, tmp_path / "ens.onnx", digits.example)
    agreement = onnx_agreement(ens, tmp_path / "ens.onnx", x)
    assert agreement["top1_agreement"] >= 0.999


def test_selection_errors_are_one_line(members: list[nn.Module], digits: sk.data.Dataset) -> None:
    logits, labels = _noisy_members(0, 3)
    cases = [
        (lambda: ensemble(members, "select"), "pass val="),
        (lambda: fit_selection(logits, labels, metric="f1"), "unknown selection metric 'f1'"),
        (lambda: fit_selection(logits, labels, init=4), "1 <= init <= 3"),
        (lambda: fit_selection(logits, labels, rounds=-1), "rounds >= 0"),
        (lambda: fit_selection(logits, labels, bags=2, bag_fraction=0.0), "bag_fraction"),
    ]
    for make, message in cases:
        with pytest.raises(sk.SlimkitError, match=message) as exc:
            make()
        assert "\n" not in str(exc.value)


def test_members_with_affine_augmentation_and_last_checkpoint(digits: sk.data.Dataset) -> None:
    seen: list[tuple[torch.Size, torch.Tensor]] = []
    base = random_affine()

    def spy(x: torch.Tensor) -> torch.Tensor:
        out = base(x)
        seen.append((out.shape, x))
        return out

    run = train_members(
        "resnet_cifar", digits, n=1, model_args=SMALL, from_start=False, epochs=2, augment=spy, checkpoint="last"
    )
    assert seen and all(shape == x.shape for shape, x in seen)  # images in, images of the same shape out
    history = run.histories[0]
    # "last" keeps the final weights: the member's validation accuracy is the last epoch's
    assert sk.evaluate(run.members[0], digits, split="val", latency=False).metrics["accuracy"] == pytest.approx(
        history.epochs[-1]["val_accuracy"]
    )
    run = train_members("resnet_cifar", digits, n=1, model_args=SMALL, from_start=False, epochs=1, augment="affine")
    assert len(run.members) == 1
    with pytest.raises(sk.SlimkitError, match="unknown checkpoint rule 'best'"):
        train_members("resnet_cifar", digits, n=1, from_start=False, checkpoint="best")
    with pytest.raises(sk.SlimkitError, match="unknown augmentation 'warp'"):
        train_members("resnet_cifar", digits, n=1, from_start=False, augment="warp")
    text = sk.data.load("synthetic-text")
    with pytest.raises(sk.SlimkitError, match="inputs are not images"):
        train_members("text_lstm", text, n=1, from_start=False, augment="affine")


def test_distillation_keeps_the_start_when_it_only_hurts(members: list[nn.Module], digits: sk.data.Dataset) -> None:
    start = copy.deepcopy(members[0])
    before = {k: v.clone() for k, v in start.state_dict().items()}
    worthless = ensemble([members[3]], "mean")  # the untrained member as teacher, followed closely
    history = distill_ensemble(start, worthless, digits, DistillConfig(alpha=1.0), epochs=1, lr=3e-3)
    details = sk.records(start)[-1].details
    assert details["kept_start"] and history.best_epoch == 0
    assert all(torch.equal(v, before[k]) for k, v in start.state_dict().items())
    assert details["val_accuracy"] == pytest.approx(details["start_val_accuracy"])
    moved = copy.deepcopy(members[0])
    distill_ensemble(moved, worthless, digits, DistillConfig(alpha=1.0), epochs=1, lr=3e-3, keep_start=False)
    assert not sk.records(moved)[-1].details["kept_start"]
    assert sk.records(moved)[-1].details["val_accuracy"] < details["start_val_accuracy"]
