from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import slimkit as sk
from slimkit.core.errors import DataError, UnknownNameError


def test_mnist5k_splits_are_stratified_scaled_and_seeded(mnist: sk.data.Dataset) -> None:
    assert mnist.sizes() == {"train": 3500, "val": 500, "test": 1000}
    assert mnist.input_shape == (1, 28, 28)
    x, _ = mnist.splits["train"]
    assert x.dtype == torch.float32 and float(x.min()) == 0.0 and float(x.max()) == 1.0
    for split, n in mnist.sizes().items():
        counts = torch.bincount(mnist.splits[split][1], minlength=10)
        assert counts.tolist() == [n // 10] * 10  # 500 per class in the source: stratified exactly
    again = sk.data.load("mnist5k")
    assert torch.equal(again.splits["test"][0], mnist.splits["test"][0])
    other = sk.data.load("mnist5k", seed=1)
    assert not torch.equal(other.splits["test"][0], mnist.splits["test"][0])
    # no image appears in two splits
    flat = {k: {hash(r.numpy().tobytes()) for r in v[0]} for k, v in mnist.splits.items()}
    assert not flat["train"] & flat["test"] and not flat["val"] & flat["test"]


def test_loaders_batches_and_example(digits: sk.data.Dataset) -> None:
    xb, yb = next(iter(digits.loader("train", batch_size=32)))
    assert xb.shape == (32, 1, 8, 8) and yb.shape == (32,) and yb.dtype == torch.long
    total = sum(len(y) for _, y in digits.test)
    assert total == digits.sizes()["test"]
    first_test = next(iter(digits.test))[0]
    assert torch.equal(first_test, digits.splits["test"][0][: len(first_test)])  # test is not shuffled
    assert digits.example.shape == (4, 1, 8, 8)
    assert digits.classes == [str(i) for i in range(10)]


@pytest.mark.parametrize("name", ["synthetic-text", "rotten-tomatoes"])
def test_text_datasets(name: str) -> None:
    data = sk.data.load(name)
    x, y = data.splits["train"]
    assert x.dtype == torch.long and x.dim() == 2
    assert int(x.max()) < data.meta["vocab_size"] and int(x.min()) >= 0
    assert set(y.unique().tolist()) == {0, 1}
    assert (x[:, 0] != 0).float().mean() > 0.99  # sequences start with real tokens, padding at the end


def test_rotten_tomatoes_is_the_real_corpus() -> None:
    data = sk.data.load("rotten-tomatoes")
    assert sum(data.sizes().values()) == 12752  # 12,808 fresh/rotten snippets minus 56 duplicates
    assert data.classes == ["rotten", "fresh"]


@pytest.mark.parametrize("name", ["synthetic-recsys", "movielens-100k"])
def test_recsys_datasets(name: str) -> None:
    data = sk.data.load(name)
    x, y = data.splits["train"]
    cards = data.meta["cardinalities"]
    assert x.shape[1] == len(cards) == len(data.meta["fields"])
    for col, n in enumerate(cards):
        assert 0 <= int(x[:, col].min()) and int(x[:, col].max()) < n
    assert 0.2 < float(y.float().mean()) < 0.8


def test_movielens_is_the_real_100k() -> None:
    data = sk.data.load("movielens-100k")
    assert sum(data.sizes().values()) == 100_000
    assert data.meta["cardinalities"][:2] == [944, 1683]  # 943 users, 1,682 items, plus id 0


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(UnknownNameError, match="mnist5k") as exc:
        sk.data.load("mnist")
    assert "\n" not in str(exc.value)


def test_npz_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 1, 6, 6)).astype(np.float32)
    y = np.repeat(np.arange(4), 50)
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=y, classes=np.array(["a", "b", "c", "d"]))
    data = sk.data.load(path)
    assert sum(data.sizes().values()) == 200 and data.classes == ["a", "b", "c", "d"]
    assert data.meta["in_channels"] == 1
    np.savez(path, x=x, y=y, x_val=x[:10], y_val=y[:10], x_test=x[:20], y_test=y[:20])
    data = sk.data.load(path)
    assert data.sizes() == {"train": 200, "val": 10, "test": 20}


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.zeros((4, 2))}, "must hold x, y"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(3, dtype=int)}, "4 rows but y has 3"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(4)}, "integer class labels"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(4, dtype=int), "z": np.zeros(1)}, "unexpected keys"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(4, dtype=int), "x_val": np.zeros((2, 2))}, "without its partner"),
    ],
)
def test_malformed_npz(tmp_path: Path, arrays: dict, match: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match):
        sk.data.load(path)


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="not a readable .npz"):
        sk.data.load(bad)
    with pytest.raises(DataError, match="no such dataset file"):
        sk.data.load(tmp_path / "missing.npz")
    with pytest.raises(DataError, match="expected a .npz file"):
        sk.data.load(tmp_path / "data.csv")


def test_pickled_npz_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}] * 4, dtype=object), y=np.zeros(4, dtype=int))
    with pytest.raises(DataError, match="not a readable"):
        sk.data.load(path)


def test_random_shift_moves_content_without_losing_it() -> None:
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 12, 12)
    x[:, :, 4:8, 4:8] = torch.rand(64, 1, 4, 4) + 0.1  # content away from the border
    shifted = sk.data.random_shift(2)(x)
    assert shifted.shape == x.shape
    assert torch.allclose(shifted.sum((1, 2, 3)), x.sum((1, 2, 3)))  # nothing cropped
    assert (shifted != x).any(dim=(1, 2, 3)).float().mean() > 0.8  # most images moved
    assert torch.equal(sk.data.random_shift(0)(x), x)
