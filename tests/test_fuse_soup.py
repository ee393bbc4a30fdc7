"""Weight averaging: uniform and greedy soups, BatchNorm re-estimation, architecture checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import slimkit as sk
from slimkit.evaluate import accuracy
from slimkit.fuse import (
    ArchitectureMismatchError,
    best_member,
    greedy_soup,
    reestimate_bn,
    train_members,
    uniform_soup,
)
from tests.conftest import SMALL


@pytest.fixture(scope="module")
def finetuned(digits: sk.data.Dataset) -> list[nn.Module]:
    """Three small ResNets (with BatchNorm) fine-tuned from one shared start on digits."""
    return train_members("resnet_cifar", digits, n=3, model_args=SMALL, start_epochs=3, epochs=1).members


def test_uniform_soup_of_identical_checkpoints_is_the_checkpoint() -> None:
    torch.manual_seed(0)
    model = sk.zoo.create("lenet5")
    soup = uniform_soup([model, model, model])
    assert soup is not model
    for (k, a), (k2, b) in zip(model.state_dict().items(), soup.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)


def test_uniform_soup_is_the_elementwise_mean_and_leaves_inputs_alone() -> None:
    torch.manual_seed(0)
    models = [sk.zoo.create("lenet5") for _ in range(3)]
    before = [m.conv1.weight.clone() for m in models]
    soup = uniform_soup(models)
    for name, t in soup.state_dict().items():
        expected = torch.stack([m.state_dict()[name] for m in models]).mean(0)
        assert torch.allclose(t, expected, atol=1e-7), name
    assert all(torch.equal(m.conv1.weight, b) for m, b in zip(models, before, strict=True))


def test_batchnorm_statistics_are_reestimated_on_the_data(digits: sk.data.Dataset) -> None:
    torch.manual_seed(0)
    model = sk.zoo.create_for("resnet_cifar", digits, **SMALL).eval()
    x = digits.splits["train"][0][:512]
    one_batch = DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=len(x))
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    reestimate_bn(model, one_batch)
    with torch.no_grad():
        h = model.conv1(x)  # what the first BatchNorm sees: (N, C, H, W)
    assert torch.allclose(model.bn1.running_mean, h.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(model.bn1.running_var, h.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-6)
    assert model.bn1.momentum == 0.1 and not model.training  # settings restored
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())  # no weight changed


def test_soup_of_batchnorm_models_needs_data_and_uses_it(finetuned: list[nn.Module], digits: sk.data.Dataset) -> None:
    with pytest.raises(sk.SlimkitError, match="pass bn_data") as exc:
        uniform_soup(finetuned)
    assert "\n" not in str(exc.value)
    soup = uniform_soup(finetuned, bn_data=digits)
    stale = {k: torch.stack([m.state_dict()[k] for m in finetuned]).mean(0) for k in ("bn1.running_mean",)}
    assert not torch.allclose(soup.bn1.running_mean, stale["bn1.running_mean"])  # re-estimated, not averaged
    # fine-tuned from one start, the soup stays a working model
    best = max(accuracy(m, digits.val) for m in finetuned)
    assert accuracy(soup, digits.val) >= best - 0.05


def test_greedy_soup_never_falls_below_the_best_member(finetuned: list[nn.Module], digits: sk.data.Dataset) -> None:
    torch.manual_seed(0)
    bad = sk.zoo.create_for("resnet_cifar", digits, **SMALL)  # same architecture, untrained: must be refused
    models = [*finetuned, bad]
    soup = greedy_soup(models, digits)
    details = sk.records(soup)[-1].details
    scores = [accuracy(m, digits.val) for m in models]
    assert details["member_val_accuracy"] == pytest.approx(scores)
    assert details["order"][0] == max(range(len(models)), key=lambda i: scores[i])
    assert details["kept"][0] == details["order"][0] and 3 not in details["kept"]
    assert accuracy(soup, digits.val) == pytest.approx(details["val_accuracy"])
    assert details["val_accuracy"] >= max(scores)
    kept_accs = [s["val_accuracy"] for s in details["steps"] if s["kept"]]
    assert kept_accs == sorted(kept_accs)  # each accepted ingredient kept or raised the soup's accuracy
    for step in details["steps"][1:]:  # an ingredient is refused exactly when it lowers the soup's accuracy
        best_so_far = max(s["val_accuracy"] for s in details["steps"][: details["steps"].index(step)] if s["kept"])
        assert step["kept"] == (step["val_accuracy"] >= best_so_far)


def test_greedy_soup_starts_from_the_best_member_by_validation_unchanged(
    finetuned: list[nn.Module], digits: sk.data.Dataset
) -> None:
    torch.manual_seed(0)
    bad = [sk.zoo.create_for("resnet_cifar", digits, **SMALL) for _ in range(2)]  # untrained: both refused
    best, accs = best_member([bad[0], finetuned[0], bad[1]], digits)
    assert best == 1 and accs[1] == pytest.approx(accuracy(finetuned[0], digits.val))
    soup = greedy_soup([bad[0], finetuned[0], bad[1]], digits)
    assert sk.records(soup)[-1].details["kept"] == [1]
    for k, v in finetuned[0].state_dict().items():  # the best member as it was: no averaging, no BN update
        assert torch.equal(soup.state_dict()[k], v), k


def test_different_architectures_name_the_first_mismatching_tensor(digits: sk.data.Dataset) -> None:
    wide = sk.zoo.create_for("resnet_cifar", digits, depth=8, width=0.5)
    narrow = sk.zoo.create_for("resnet_cifar", digits, depth=8, width=0.25)
    with pytest.raises(ArchitectureMismatchError) as exc:
        uniform_soup([wide, wide, narrow], bn_data=digits)
    message = str(exc.value)
    assert "\n" not in message
    assert "tensor 'conv1.weight' is (8, 1, 3, 3) in model 0 but (4, 1, 3, 3) in model 2" in message
    deep = sk.zoo.create_for("resnet_cifar", digits, depth=14, width=0.5)
    first_missing = next(k for k in deep.state_dict() if k not in wide.state_dict())
    with pytest.raises(ArchitectureMismatchError, match=f"model 1 has no tensor '{first_missing}'"):
        greedy_soup([deep, wide], digits)
    with pytest.raises(ArchitectureMismatchError, match="model 1 has a tensor"):
        uniform_soup([wide, deep], bn_data=digits)


def test_best_member_is_chosen_on_validation_with_ties_to_the_first(digits: sk.data.Dataset) -> None:
    torch.manual_seed(0)
    models = [sk.zoo.create_for("resnet_cifar", digits, **SMALL) for _ in range(3)]
    index, accs = best_member([models[0], models[1], models[0]], digits)
    assert accs[0] == accs[2] and index == max(range(3), key=lambda i: (accs[i], -i)) and index != 2
    val_only = DataLoader(TensorDataset(*digits.splits["val"]), batch_size=64)  # a DataLoader works too
    assert best_member(models, val_only)[1] == pytest.approx(best_member(models, digits)[1])
    with pytest.raises(sk.SlimkitError, match="needs validation data"):
        best_member(models, None)
    with pytest.raises(sk.SlimkitError, match="at least one model"):
        best_member([], digits)


def test_train_members_modes_seeds_and_errors(digits: sk.data.Dataset) -> None:
    one = train_members("resnet_cifar", digits, n=2, model_args=SMALL, from_start=False, epochs=1, seed=1)
    assert one.kind == "independent" and one.start is None and one.seeds == [1001, 1002]
    zero = train_members("resnet_cifar", digits, n=2, model_args=SMALL, from_start=False, epochs=1)
    assert zero.seeds == [1, 2]  # runs with different seeds share no member
    assert not torch.equal(zero.members[0].conv1.weight, zero.members[1].conv1.weight)
    for kwargs, message in [
        ({"start_epochs": 0}, "use from_start=False"),
        ({"n": 0}, "n must be between 1"),
        ({"epochs": 0}, "epochs must be at least 1"),
    ]:
        with pytest.raises(sk.SlimkitError, match=message) as exc:
            train_members("resnet_cifar", digits, **{"n": 2, "model_args": SMALL, **kwargs})
        assert "\n" not in str(exc.value)
