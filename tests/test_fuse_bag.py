"""Bagged members: cross-validation parts and bootstrap samples, the members trained on them, their best member."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import slimkit as sk
from slimkit.fuse import bag_datasets, train_members
from tests.conftest import SMALL


def _multiset(x: torch.Tensor, y: torch.Tensor) -> dict[tuple, int]:
    """The samples as a multiset: (pixels..., label) -> how often it occurs (digits may repeat an image)."""
    counts: dict[tuple, int] = {}
    for row, label in zip((tuple(r.tolist()) for r in x.flatten(1)), y.tolist(), strict=True):
        counts[(*row, label)] = counts.get((*row, label), 0) + 1
    return counts


def test_cv_parts_partition_train_and_val_stratified(digits: sk.data.Dataset) -> None:
    parts = bag_datasets(digits, 5, "cv", seed=3)
    (xt, yt), (xv, yv) = digits.splits["train"], digits.splits["val"]
    pooled = _multiset(torch.cat([xt, xv]), torch.cat([yt, yv]))
    held = {}
    for d in parts:
        # the member trains on everything but its own part, and never sees a test sample
        both = _multiset(
            torch.cat([d.splits["train"][0], d.splits["val"][0]]), torch.cat([d.splits["train"][1], d.splits["val"][1]])
        )
        assert both == pooled
        assert d.splits["test"] is digits.splits["test"]
        for key, c in _multiset(*d.splits["val"]).items():
            held[key] = held.get(key, 0) + c
        # stratified: each class is dealt evenly over the parts (at most one sample apart from 1/5 of it)
        per_class = torch.bincount(d.splits["val"][1], minlength=10)
        expected = torch.bincount(torch.cat([yt, yv]), minlength=10) / 5
        assert torch.all((per_class - expected).abs() <= 1)
    assert held == pooled  # the held-out parts are disjoint and cover train + val once
    sizes = [d.sizes()["val"] for d in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(yt) + len(yv)
    # seeded: same seed same parts, another seed other parts
    again = bag_datasets(digits, 5, "cv", seed=3)
    assert all(torch.equal(a.splits["val"][0], b.splits["val"][0]) for a, b in zip(parts, again, strict=True))
    other = bag_datasets(digits, 5, "cv", seed=4)
    assert not torch.equal(parts[0].splits["val"][0], other[0].splits["val"][0])


def test_bootstrap_samples_draw_from_train_and_share_val(digits: sk.data.Dataset) -> None:
    parts = bag_datasets(digits, 3, "bootstrap", seed=10)
    xt, yt = digits.splits["train"]
    train = _multiset(xt, yt)
    for d in parts:
        x, y = d.splits["train"]
        assert len(y) == len(yt)
        assert set(_multiset(x, y)) <= set(train)  # only training samples
        unique = len(_multiset(x, y)) / len(train)
        assert 0.55 < unique < 0.72  # about 1 - 1/e of them, so some repeat and some are left out
        assert d.splits["val"] is digits.splits["val"] and d.splits["test"] is digits.splits["test"]
    assert not torch.equal(parts[0].splits["train"][1], parts[1].splits["train"][1])


def test_bag_rejects_bad_input(digits: sk.data.Dataset) -> None:
    with pytest.raises(sk.SlimkitError, match="unknown bagging rule 'jackknife'"):
        bag_datasets(digits, 3, "jackknife")
    with pytest.raises(sk.SlimkitError, match="needs a slimkit Dataset"):
        bag_datasets(digits.train, 3, "cv")
    with pytest.raises(sk.SlimkitError, match="at least 2 members"):
        bag_datasets(digits, 1, "cv")
    with pytest.raises(sk.SlimkitError, match="at least 1 member, got n=0"):
        bag_datasets(digits, 0, "bootstrap")
    with pytest.raises(sk.SlimkitError, match="from_start=False"):
        train_members("resnet_cifar", digits, n=2, model_args=SMALL, bag="cv", epochs=1)
    with pytest.raises(sk.SlimkitError, match="unknown bagging rule"):
        train_members("resnet_cifar", digits, n=2, model_args=SMALL, from_start=False, bag="cvv", epochs=1)


def test_cv_members_train_on_their_own_data_and_best_uses_their_own_part(digits: sk.data.Dataset) -> None:
    seen: list[int] = []

    def count(x: torch.Tensor) -> torch.Tensor:  # records how many training samples each batch has
        seen.append(len(x))
        return x

    result = train_members(
        "resnet_cifar", digits, n=3, model_args=SMALL, from_start=False, epochs=1, bag="cv", augment=count, seed=2
    )
    assert result.bag == "cv" and result.kind == "independent" and len(result.datasets) == 3
    own = [d.sizes()["train"] for d in result.datasets]
    assert sum(seen) == sum(own)  # each member's one epoch went over its own training part
    assert sum(own) == 2 * (digits.sizes()["train"] + digits.sizes()["val"])  # each sample in 2 of 3 trainings
    # the same parts as bag_datasets with the run's seed (1000 * seed)
    expected = bag_datasets(digits, 3, "cv", seed=2000)
    assert all(
        torch.equal(a.splits["val"][1], b.splits["val"][1]) for a, b in zip(result.datasets, expected, strict=True)
    )
    index, accs = result.best()
    direct = [
        sk.evaluate(m, d, split="val", latency=False).metrics["accuracy"]
        for m, d in zip(result.members, result.datasets, strict=True)
    ]
    assert accs == pytest.approx(direct)
    assert index == max(range(3), key=lambda i: (direct[i], -i))
    # unbagged members are scored on the common validation split, like best_member
    plain = train_members("resnet_cifar", digits, n=2, model_args=SMALL, from_start=False, epochs=1)
    assert plain.best() == sk.fuse.best_member(plain.members, digits)


def test_cli_train_members_bag(cli, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "bag"
    args = ["--arg", "depth=8", "--arg", "width=0.5"]
    code, stdout, err = cli(
        "train-members",
        "-m",
        "resnet_cifar",
        "-d",
        "digits",
        "--n",
        "3",
        *args,
        "--independent",
        "--epochs",
        "1",
        "--bag",
        "cv",
        "-o",
        out,
    )
    assert code == 0, err
    summary = json.loads((out / "members.json").read_text())
    assert summary["config"]["bag"] == "cv"
    own = [m["held_out_accuracy"] for m in summary["members"]]
    assert summary["best_member"] == own.index(max(own))
    assert "own val" in stdout
    code, _, err = cli("train-members", "-m", "resnet_cifar", "-d", "digits", "--bag", "cv", "-o", tmp_path / "b")
    assert code == 2 and "--independent" in err and err.count("\n") == 1
    code, _, err = cli(
        "train-members", "-m", "resnet_cifar", "-d", "digits", "--independent", "--bag", "halves", "-o", tmp_path / "c"
    )
    assert code == 2 and "unknown bagging rule 'halves'" in err
