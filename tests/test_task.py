"""Tasks: batch reading, metrics against scikit-learn, directions and units, training through a task."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import slimkit as sk
from slimkit.core.errors import SlimkitError
from slimkit.optimize import Target
from slimkit.task import get_task, output_tensor, split_batch, worse_by


def _batches(x: torch.Tensor, y: torch.Tensor, size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(zip(x.split(size), y.split(size), strict=True))


def test_split_batch_and_outputs() -> None:
    x, y = torch.zeros(2, 3), torch.ones(2)
    assert split_batch((x, y))[1] is y
    inputs, target = split_batch((x, x, y))
    assert isinstance(inputs, tuple) and len(inputs) == 2 and target is y
    inputs, target = split_batch({"input_ids": x, "attention_mask": x, "labels": y})
    assert set(inputs) == {"input_ids", "attention_mask"} and target is y
    assert split_batch(x) == (x, None) and split_batch({"input_ids": x})[1] is None

    class Output(dict):
        pass

    logits = torch.randn(2, 3)
    assert output_tensor(Output(logits=logits, hidden=x)) is logits
    assert output_tensor((logits, x)) is logits
    with pytest.raises(SlimkitError, match="output=fn"):
        output_tensor("text")


def test_classification_metrics_match_sklearn() -> None:
    from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    x, y = torch.randn(300, 6), torch.randint(0, 4, (300,))
    got = get_task("classification").evaluate(model, _batches(x, y))
    pred = model(x).argmax(1).detach().numpy()
    assert got["accuracy"] == pytest.approx(float((pred == y.numpy()).mean()))
    for name, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        assert got[name] == pytest.approx(fn(y, pred, average="macro", labels=range(4), zero_division=0))
    assert got["loss"] == pytest.approx(float(nn.functional.cross_entropy(model(x), y)), rel=1e-5)
    two = nn.Linear(6, 2)
    y2 = torch.randint(0, 2, (300,))
    got2 = get_task().evaluate(two, _batches(x, y2))
    assert got2["auc"] == pytest.approx(roc_auc_score(y2, torch.softmax(two(x), 1)[:, 1].detach()))


def test_regression_binary_and_ranking_metrics() -> None:
    from sklearn.metrics import ndcg_score, roc_auc_score

    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = torch.randn(200, 3), torch.randn(200)
    got = get_task("regression").evaluate(model, _batches(x, y))
    err = model(x).squeeze(1).detach() - y
    assert got["rmse"] == pytest.approx(float(err.pow(2).mean().sqrt()), rel=1e-5)
    assert got["mae"] == pytest.approx(float(err.abs().mean()), rel=1e-5)

    clicks = (torch.rand(200) < 0.4).long()
    got = get_task("binary").evaluate(model, _batches(x, clicks))
    assert got["auc"] == pytest.approx(roc_auc_score(clicks, model(x).detach()[:, 0]))

    # ranking: the group id is the first input column (a user id)
    users = torch.randint(0, 10, (200,)).float()
    feats = torch.cat([users[:, None], x[:, 1:]], 1)
    rel = torch.randint(0, 3, (200,)).float()
    got = get_task("ranking", k=5).evaluate(model, _batches(feats, rel))
    scores = model(feats).detach()[:, 0].numpy()
    aucs, ndcgs = [], []
    for u in range(10):
        m = users.numpy() == u
        r = rel.numpy()[m]
        if 0 < (r > 0).sum() < len(r):
            aucs.append(roc_auc_score(r > 0, scores[m]))
        if (r > 0).any() and len(r) > 1:
            ndcgs.append(ndcg_score([2**r - 1], [scores[m]], k=5))
    assert got["user_auc"] == pytest.approx(np.mean(aucs))
    assert got["ndcg@5"] == pytest.approx(np.mean(ndcgs))


def test_dense_and_fidelity_metrics() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 1)
    x, y = torch.randn(4, 2, 6, 6), torch.randint(0, 3, (4, 6, 6))
    got = get_task("dense").evaluate(conv, [(x, y)])
    pred = conv(x).argmax(1)
    ious = [((pred == c) & (y == c)).sum() / ((pred == c) | (y == c)).sum() for c in range(3)]
    assert got["miou"] == pytest.approx(float(torch.stack(ious).mean()))
    assert got["pixel_accuracy"] == pytest.approx(float((pred == y).float().mean()))

    encoder = nn.Linear(8, 16)
    task = get_task("fidelity").bind(encoder)
    inputs = [torch.randn(20, 8) for _ in range(3)]
    same = task.evaluate(encoder, inputs)
    assert same["cosine"] == pytest.approx(1.0) and same["overlap@10"] == pytest.approx(1.0)
    noisy = nn.Linear(8, 16)
    with torch.no_grad():
        noisy.weight.copy_(encoder.weight + 0.3 * torch.randn_like(encoder.weight))
        noisy.bias.copy_(encoder.bias)
    worse = task.evaluate(noisy, inputs)
    assert worse["cosine"] < 0.999 and worse["overlap@10"] < 1.0
    with pytest.raises(SlimkitError, match="no original model"):
        get_task("fidelity").evaluate(encoder, inputs)


def test_token_classification_scores_tokens_and_skips_minus_100() -> None:
    from sklearn.metrics import f1_score

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 8), nn.Linear(8, 3))  # (B, T, 3): classes last, as in HF
    x, y = torch.randint(0, 20, (4, 10)), torch.randint(0, 3, (4, 10))
    y[:, 7:] = -100  # padding and continuation sub-words (Hugging Face's convention)
    task = get_task("token-classification")
    assert task.name == "tokens" and task.metric == "f1" and get_task("ner").name == "tokens"
    got = task.evaluate(model, [(x, y)])
    logits = model(x).detach()
    keep = y != -100
    pred, true = logits.argmax(-1)[keep], y[keep]
    assert got["accuracy"] == pytest.approx(float((pred == true).float().mean()))
    assert got["f1"] == pytest.approx(f1_score(true, pred, average="macro"))  # over the classes present
    assert got["loss"] == pytest.approx(float(nn.functional.cross_entropy(logits.reshape(-1, 3), y.reshape(-1))))
    # distillation compares class distributions per token, whichever axis holds the classes
    s, t = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    assert float(task.soft_loss(s, t, 2.0)) == pytest.approx(
        float(get_task("dense").soft_loss(s.movedim(-1, 1), t.movedim(-1, 1), 2.0))
    )
    # the wrong layout is one line that names the task that fits
    with pytest.raises(SlimkitError, match="use task='tokens'"):
        get_task("dense").evaluate(model, [(x, y)])
    with pytest.raises(SlimkitError, match="use task='dense'"):
        task.evaluate(nn.Conv2d(2, 3, 1), [(torch.randn(2, 2, 5, 5), torch.zeros(2, 5, 5, dtype=torch.long))])


def test_causal_lm_scores_the_next_token_and_reads_labels_from_the_inputs() -> None:
    class TinyLM(nn.Module):  # (B, T, V) logits, keyword inputs as Hugging Face models take them
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Embedding(30, 8), nn.Linear(8, 30))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
            return self.net(input_ids)

    torch.manual_seed(0)
    model = TinyLM()
    ids = torch.randint(0, 30, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0  # padding is not predicted
    task = get_task("lm")
    assert task.name == "causal-lm" and task.metric == "perplexity" and not task.higher_is_better
    got = task.evaluate(model, [{"input_ids": ids, "attention_mask": mask}])  # no labels: the input ids
    logits = model(ids).detach()
    keep = mask[:, 1:].bool()
    nll = nn.functional.cross_entropy(logits[:, :-1][keep], ids[:, 1:][keep])
    assert got["loss"] == pytest.approx(float(nll), rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(float(nll)), rel=1e-5)
    assert got["accuracy"] == pytest.approx(float((logits[:, :-1][keep].argmax(1) == ids[:, 1:][keep]).float().mean()))
    labels = ids.masked_fill(mask == 0, -100)  # Hugging Face's labels: the same tokens, -100 on padding
    assert task.evaluate(model, [{"input_ids": ids, "labels": labels}])["loss"] == pytest.approx(got["loss"])
    assert float(task.loss(model(ids), labels)) == pytest.approx(float(nll), rel=1e-5)
    assert worse_by("perplexity", 20.0, 21.5) == pytest.approx(1.5)  # rises are worse, in its own units
    with pytest.raises(SlimkitError, match="causal-lm task needs"):
        task.evaluate(nn.Linear(4, 3), [(torch.randn(2, 4), torch.zeros(2, dtype=torch.long))])
    # text to text: each decoder position predicts its own label (the decoder inputs are shifted already)
    seq2seq = get_task("translation")
    assert seq2seq.name == "seq2seq" and seq2seq.metric == "perplexity"
    assert float(seq2seq.loss(model(ids), labels)) == pytest.approx(
        float(nn.functional.cross_entropy(logits[mask.bool()], ids[mask.bool()])), rel=1e-5
    )
    with pytest.raises(SlimkitError, match="needs targets"):  # the source ids are not the target
        seq2seq.evaluate(model, [{"input_ids": ids}])


def test_directions_and_units() -> None:
    assert worse_by("accuracy", 0.95, 0.94) == pytest.approx(1.0)  # points
    assert worse_by("rmse", 0.90, 0.91) == pytest.approx(0.01)  # rises are worse
    assert worse_by("auc", 0.80, 0.795) == pytest.approx(0.005)
    t = Target(params=0.25, max_drop=0.01).for_task("rmse")
    assert t.metric == "rmse" and not t.higher_is_better
    assert t.quality_ok({"rmse": 0.909}, {"rmse": 0.9}) and not t.quality_ok({"rmse": 0.92}, {"rmse": 0.9})
    assert t.quality_ok({"rmse": 0.5}, {"rmse": 0.9})  # better is always fine
    assert not t.quality_ok({"rmse": math.nan}, {"rmse": 0.9})
    assert "rmse rise <= 0.01" in str(t)
    floors = Target(params=0.5, min_metrics={"rmse": 1.0, "auc": 0.7}).for_task("rmse")
    assert floors.quality_ok({"rmse": 0.99, "auc": 0.71}, {"rmse": 0.9})
    assert not floors.quality_ok({"rmse": 1.01, "auc": 0.71}, {"rmse": 0.9})
    assert not floors.quality_ok({"rmse": 0.9, "auc": 0.69}, {"rmse": 0.9})


def test_bad_task_input_is_one_line() -> None:
    with pytest.raises(SlimkitError, match="unknown task 'sorting'"):
        get_task("sorting")
    model = nn.Linear(3, 2)
    with pytest.raises(SlimkitError, match="needs targets"):
        get_task("classification").evaluate(model, [torch.randn(4, 3)])
    with pytest.raises(SlimkitError, match="do not match the targets"):
        get_task("regression").evaluate(model, [(torch.randn(4, 3), torch.randn(4))])
    with pytest.raises(SlimkitError, match="class ids"):
        get_task().evaluate(model, [(torch.randn(4, 3), torch.tensor([0, 1, 2, 5]))])
    with pytest.raises(SlimkitError, match="empty"):
        get_task().evaluate(model, [])


class _Stream(IterableDataset):
    """Samples of y = x . w + noise, generated on the fly (no length)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed = n, seed

    def __iter__(self):  # noqa: ANN204
        g = torch.Generator().manual_seed(self.seed)
        w = torch.tensor([1.0, -2.0, 0.5])
        for _ in range(self.n):
            x = torch.randn(3, generator=g)
            yield x, x @ w + 0.01 * torch.randn((), generator=g)


def test_fit_regression_on_a_stream_in_steps() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 1))
    train = DataLoader(_Stream(10**9), batch_size=64)  # effectively endless: epochs are given in steps
    val = DataLoader(_Stream(512, seed=1), batch_size=128)
    task = get_task("regression")
    before = task.evaluate(model, val)["rmse"]
    history = sk.train.fit(model, train, val=val, task=task, epochs=3, steps_per_epoch=100, lr=1e-2, progress=False)
    assert len(history.epochs) == 3 and history.metric == "rmse" and "val_rmse" in history.epochs[-1]
    after = task.evaluate(model, val)["rmse"]
    assert after < 0.3 * before
    assert history.best_val == min(e["val_rmse"] for e in history.epochs)  # lower is better
    with pytest.raises(SlimkitError, match="steps_per_epoch"):
        sk.train.fit(model, train, epochs=1, task=task, progress=False)


def test_fit_with_dict_batches_and_keyword_inputs() -> None:
    class KeywordModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, features: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.fc(features * mask)}

    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = (x[:, 0] > 0).long()
    batches = [{"features": a, "mask": torch.ones_like(a), "labels": b} for a, b in _batches(x, y)]
    model = KeywordModel()
    sk.train.fit(model, batches, val=batches, epochs=5, lr=0.05, progress=False)
    assert get_task().evaluate(model, batches)["accuracy"] > 0.9


def test_loaders_evaluate_and_data_function(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    ds = TensorDataset(torch.randn(64, 3), torch.randn(64))
    data = sk.data.Loaders(train=DataLoader(ds, batch_size=16), val=DataLoader(ds, batch_size=32), task="regression")
    model = nn.Linear(3, 1)
    report = sk.evaluate(model, data, split="val", latency=False)
    assert report.task == "regression" and set(report.metrics) >= {"rmse", "mae"} and report.samples == 64
    (tmp_path / "user_data.py").write_text(
        "import torch\nfrom torch.utils.data import DataLoader, TensorDataset\n"
        "def loaders():\n"
        "    ds = TensorDataset(torch.randn(40, 3), torch.randn(40))\n"
        "    loader = DataLoader(ds, batch_size=8)\n"
        "    return {'train': loader, 'val': loader, 'task': 'regression'}\n"
        "def wrong():\n    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = sk.data.load("user_data:loaders")
    assert isinstance(loaded, sk.data.Loaders) and tuple(loaded.example.shape) == (4, 3)
    with pytest.raises(SlimkitError, match="returned a int"):
        sk.data.load("user_data:wrong")
    with pytest.raises(SlimkitError, match="standard library"):
        sk.data.load("os:getcwd")
