from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimkit as sk
from slimkit.core.errors import SlimkitError
from slimkit.train import distillation_loss


def small_model(data: sk.data.Dataset, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return sk.zoo.create_for("resnet_cifar", data, depth=8, width=0.5)


def test_fit_learns_real_digits(digits: sk.data.Dataset) -> None:
    model = small_model(digits)
    history = sk.train.fit(model, digits.train, val=digits.val, epochs=6, lr=3e-3, progress=False)
    losses = [e["train_loss"] for e in history.epochs]
    assert losses[-1] < 0.5 * losses[0]
    assert history.best_val_accuracy is not None and history.best_val_accuracy > 0.9
    report = sk.evaluate(model, digits, latency=False)
    assert report.metrics["accuracy"] > 0.9
    assert history.epochs[-1]["lr"] < 1e-6  # cosine schedule decays to zero


def test_fit_takes_the_data_bundle_optimize_takes(digits: sk.data.Dataset) -> None:
    """``fit(model, data)`` with a Dataset or Loaders: its train split trains, its val split and task are
    used (a regression task on user loaders validates RMSE), the same weights as passing the splits."""
    a, b = small_model(digits), small_model(digits)
    sk.train.fit(a, digits, epochs=1, progress=False)
    sk.train.fit(b, digits.train, val=digits.val, augment=digits.augment, epochs=1, progress=False)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    x = torch.randn(64, 3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1)), batch_size=16)
    history = sk.train.fit(
        nn.Linear(3, 1), sk.data.Loaders(train=loader, val=loader, task="regression"), epochs=2, progress=False
    )
    assert history.metric == "rmse" and "val_rmse" in history.epochs[-1]


def test_fit_is_seeded(digits: sk.data.Dataset) -> None:
    a, b = small_model(digits), small_model(digits)
    for m in (a, b):
        sk.train.fit(m, digits.train, epochs=1, seed=3, progress=False, augment=digits.augment)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_early_stopping_restores_best(digits: sk.data.Dataset) -> None:
    model = small_model(digits)
    seen: list[dict] = []
    # a learning rate far too high makes validation accuracy stall, so patience triggers
    history = sk.train.fit(
        model,
        digits.train,
        val=digits.val,
        epochs=30,
        lr=0.5,
        optimizer="sgd",
        schedule="constant",
        patience=2,
        progress=False,
        on_epoch=seen.append,
    )
    assert history.stopped_early and len(history.epochs) < 30 and seen == history.epochs
    best = max(e["val_accuracy"] for e in history.epochs)
    assert history.epochs[history.best_epoch - 1]["val_accuracy"] == best
    assert history.best_val == best
    assert sk.task.get_task().evaluate(model, digits.val)["accuracy"] == pytest.approx(best)


def test_distillation_loss_properties() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    assert torch.allclose(distillation_loss(s, t, y, 4.0, 0.0), F.cross_entropy(s, y))
    assert float(distillation_loss(t, t, y, 4.0, 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(s, t, y, 4.0, 1.0)) > 0


def test_fit_with_teacher_moves_student_towards_teacher(digits: sk.data.Dataset) -> None:
    teacher = small_model(digits, seed=1)
    sk.train.fit(teacher, digits.train, epochs=4, lr=3e-3, progress=False)
    student = small_model(digits, seed=2)
    x = digits.splits["val"][0]

    def kl() -> float:
        with torch.no_grad():
            return float(
                F.kl_div(
                    F.log_softmax(student(x), 1), F.log_softmax(teacher(x), 1), log_target=True, reduction="batchmean"
                )
            )

    before = kl()
    sk.train.fit(
        student,
        digits.train,
        epochs=3,
        lr=3e-3,
        teacher=teacher,
        distill=sk.train.DistillConfig(alpha=1.0),
        progress=False,
    )
    assert kl() < 0.5 * before


def test_bad_arguments(digits: sk.data.Dataset) -> None:
    model = small_model(digits)
    with pytest.raises(SlimkitError, match="unknown optimizer"):
        sk.train.fit(model, digits.train, optimizer="lbfgs", progress=False)
    with pytest.raises(SlimkitError, match="epochs must be at least 1"):
        sk.train.fit(model, digits.train, epochs=0, progress=False)


def test_eval_mode_restores_each_modules_own_mode() -> None:
    from slimkit.core.model import eval_mode

    model = nn.Sequential(nn.BatchNorm1d(3), nn.Dropout(0.5), nn.Sequential(nn.Dropout(0.1)))
    model[1].eval()  # a user froze one layer
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, False, True, True]
    model.eval()
    with eval_mode(model):
        model.train()  # e.g. fine-tuning inside the block
        model[2] = nn.Linear(3, 3)  # a layer added by the block
    assert not any(m.training for m in model.modules())
