from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.core.errors import SlimkitError
from slimkit.evaluate import accuracy, count_params
from slimkit.simplify import FeatureDistiller, derive_student, distill, parse_student, student_for
from slimkit.simplify.distill import _WithAuxLoss
from tests.conftest import zoo_example


@pytest.mark.parametrize("name", sk.zoo.list())
def test_derived_students_are_smaller_and_run(name: str) -> None:
    teacher = sk.zoo.create(name)
    student = derive_student(teacher, width=0.5)
    x = zoo_example(name)
    assert count_params(student) < count_params(teacher)
    assert student(x).shape == teacher(x).shape
    assert sk.zoo.arch_of(student)["name"] == name


def test_depth_and_width_compose() -> None:
    teacher = sk.zoo.create("resnet_cifar", depth=20, width=0.5, in_channels=1)
    student = derive_student(teacher, width=0.5, depth=8)
    assert sk.zoo.arch_of(student)["kwargs"] == {"depth": 8, "width": 0.25, "in_channels": 1}
    text = derive_student(sk.zoo.create("text_transformer", heads=4, dim=64), width=0.3, depth=1)
    assert text.blocks[0].attn.heads * text.blocks[0].attn.head_dim == 20 and len(text.blocks) == 1
    with pytest.raises(sk.SlimkitError, match="has no depth setting"):
        derive_student(sk.zoo.create("seed_cnn"), depth=2)
    with pytest.raises(sk.SlimkitError, match="width must be in"):
        derive_student(sk.zoo.create("seed_cnn"), width=1.5)


def test_non_zoo_models_are_pruned_at_init() -> None:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    x = torch.rand(3, 4)
    with pytest.raises(sk.SlimkitError, match="pass example="):
        derive_student(teacher)
    with pytest.raises(sk.SlimkitError, match="depth applies to zoo models only"):
        derive_student(teacher, depth=2, example=x)
    student = derive_student(teacher, width=0.5, example=x)
    assert [m.out_features for m in student if isinstance(m, nn.Linear)] == [4, 8, 2]
    assert student(x).shape == (3, 2) and teacher[0].out_features == 8  # the teacher is untouched
    assert not torch.equal(student[4].weight, teacher[4].weight[:, :8])  # re-initialised, not sliced
    mine = nn.Linear(4, 2)
    assert student_for(teacher, mine) is mine  # user-supplied students are used as given


def test_student_specs(digits: sk.data.Dataset) -> None:
    student = parse_student("resnet_cifar:depth=8,width=0.25", digits)
    assert sk.zoo.arch_of(student)["kwargs"]["in_channels"] == 1 and student.layer1[0].conv1.out_channels == 4
    with pytest.raises(sk.SlimkitError, match="unknown model 'resnet'"):
        parse_student("resnet:width=0.5")
    with pytest.raises(sk.SlimkitError, match="expected name:key=value"):
        parse_student("seed_cnn:width")
    with pytest.raises(sk.SlimkitError, match="does not take"):
        parse_student("seed_cnn:depth=3")


def test_aux_loss_adds_its_gradient() -> None:
    w = torch.randn(3, requires_grad=True)
    out = _WithAuxLoss.apply(w * 2, (w**2).sum())
    out.sum().backward()
    assert torch.allclose(w.grad, 2 + 2 * w.detach())  # d/dw [sum(2w) + sum(w^2)]
    assert torch.equal(out, w.detach() * 2)


@pytest.fixture(scope="module")
def teacher(digits: sk.data.Dataset) -> nn.Module:
    torch.manual_seed(0)
    model = sk.zoo.create_for("resnet_cifar", digits, depth=8)
    sk.train.fit(model, digits.train, val=digits.val, epochs=8, lr=3e-3, progress=False)
    return model


def agreement(a: nn.Module, b: nn.Module, loader: torch.utils.data.DataLoader) -> float:
    with torch.no_grad():
        pairs = [(a(x).argmax(1), b(x).argmax(1)) for x, _ in loader]
    return float(sum((p == q).sum() for p, q in pairs) / sum(len(p) for p, _ in pairs))


def test_hinton_distillation_trains_the_student_towards_the_teacher(
    teacher: nn.Module, digits: sk.data.Dataset
) -> None:
    torch.manual_seed(1)
    student = derive_student(teacher, width=0.5)
    before = agreement(teacher, student.eval(), digits.test)
    history = distill(student, teacher, digits, sk.train.DistillConfig(alpha=1.0), epochs=4, lr=3e-3, progress=False)
    assert len(history.epochs) == 4
    assert agreement(teacher, student, digits.test) > max(0.8, before + 0.5)  # alpha=1: teacher's labels only


def test_swapped_student_and_teacher_are_warned_about(teacher: nn.Module, digits: sk.data.Dataset) -> None:
    student = derive_student(teacher, width=0.5)
    with pytest.warns(UserWarning, match=r"takes \(student, teacher\), in that order"):
        distill(teacher, student, digits, epochs=1, steps_per_epoch=1, progress=False)
    with pytest.raises(SlimkitError, match="alpha must be in"):
        sk.train.DistillConfig(alpha=1.5)


def feature_mse(d: FeatureDistiller, teacher: nn.Module, x: torch.Tensor) -> float:
    """Mean squared distance between the projected student features and the teacher's."""
    with torch.no_grad():
        s, _ = d._features(d.student.eval(), list(d.pairs), x)
        t, _ = d._features(teacher, list(d.pairs.values()), x)
        return sum(float(((d.projections[k.replace(".", "_")](s[k]) - t[v]) ** 2).mean()) for k, v in d.pairs.items())


def test_feature_matching_pulls_features_together(teacher: nn.Module, digits: sk.data.Dataset) -> None:
    pairs = {"layer2": "layer2", "layer3.0.conv1": "layer3.0.conv1"}
    x = digits.splits["val"][0]
    mse = {}
    for beta in (0.0, 5.0):  # same seed, same data: only the feature term differs
        torch.manual_seed(2)
        d = FeatureDistiller(derive_student(teacher, width=0.5), teacher, pairs, digits.example, beta=beta)
        assert isinstance(d.projections["layer2"], nn.Conv2d) and d.projections["layer2"].out_channels == 32
        sk.train.fit(d, digits.train, teacher=d.teacher_logits, epochs=3, lr=3e-3, progress=False)
        mse[beta] = feature_mse(d, teacher, x)
        assert accuracy(d.student, digits.test) > 0.7
    assert mse[5.0] < 0.5 * mse[0.0]
    with pytest.raises(sk.SlimkitError, match="has no layer 'nope'"):
        FeatureDistiller(d.student, teacher, {"nope": "layer2"}, digits.example, beta=1.0)


def test_distill_with_features_runs_through_fit(teacher: nn.Module, digits: sk.data.Dataset) -> None:
    torch.manual_seed(3)
    student = derive_student(teacher, width=0.5)
    history = distill(
        student,
        teacher,
        digits,
        sk.train.DistillConfig(features={"layer3": "layer3"}),
        epochs=2,
        lr=3e-3,
        progress=False,
    )
    assert len(history.epochs) == 2 and not student.training
    assert set(student.state_dict()) == set(derive_student(teacher, width=0.5).state_dict())  # no projections left


def test_user_student_from_a_plain_loader(teacher: nn.Module, digits: sk.data.Dataset) -> None:
    torch.manual_seed(4)
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))  # not a zoo model
    distill(student, teacher, digits.train, val=digits.val, epochs=10, lr=1e-2, progress=False)
    assert accuracy(student, digits.test) > 0.85
