from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import slimkit as sk


@pytest.fixture(scope="module")
def digits_resnet(tmp_path_factory: pytest.TempPathFactory, digits: sk.data.Dataset) -> Path:
    torch.manual_seed(0)
    model = sk.zoo.create_for("resnet_cifar", digits, depth=8, width=0.5)
    sk.train.fit(model, digits.train, epochs=4, lr=3e-3, progress=False)
    path = tmp_path_factory.mktemp("ckpt") / "resnet"
    sk.save(model, path, example=digits.example)
    return path


def test_simplify_fold_and_drop_blocks(cli, digits_resnet: Path, tmp_path: Path, digits: sk.data.Dataset) -> None:  # noqa: ANN001
    out = tmp_path / "simple"
    code, stdout, err = cli(
        "simplify", digits_resnet, "--fold", "--drop-blocks", "1", "-d", "digits", "--epochs", "1", "-o", out
    )
    assert code == 0, err
    assert "remove_blocks: changed 1 layer(s)" in stdout and "fold: changed" in stdout and "after: accuracy" in stdout
    report = json.loads((out / "report.json").read_text())
    assert [r["transform"] for r in report["records"]] == ["remove_blocks", "fold"]
    assert len(report["history"]) == 1 and report["after"]["params"] < report["before"]["params"]
    model = sk.load(out)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert (
        sk.evaluate(model, digits, latency=False).metrics == report["after"]["metrics"]
    )  # the saved model is the one measured


def test_simplify_remove_type_reports_repairs(cli, tmp_path: Path) -> None:  # noqa: ANN001
    ckpt = tmp_path / "cnn"
    sk.save(sk.zoo.create("seed_cnn", width=0.25), ckpt, example=torch.rand(2, 1, 28, 28))
    code, stdout, err = cli("simplify", ckpt, "--remove-type", "MaxPool2d", "-o", tmp_path / "out")
    assert code == 0, err
    assert "repaired fc1: in 400 -> 9216 by transfer [16, 5, 5] -> [16, 24, 24]" in stdout
    assert "params 107,706 -> 2,364,602" in stdout
    assert sk.load(tmp_path / "out").fc1.in_features == 9216


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simplify", "{ckpt}", "-o", "{tmp}/o"], "nothing to do"),
        (["simplify", "{ckpt}", "--remove", "conv9", "-o", "{tmp}/o"], "no Module layer named 'conv9'"),
        (["simplify", "{ckpt}", "--drop-blocks", "1", "-o", "{tmp}/o"], "need --data"),
        (["simplify", "{ckpt}", "--remove", "fc2", "-o", "{tmp}/o"], "output shape would change"),
        (["distill", "{ckpt}", "-d", "digits", "--student", "vgg:width=1", "-o", "{tmp}/o"], "unknown model 'vgg'"),
        (["distill", "{ckpt}", "-d", "digits", "--student", "seed_cnn:w", "-o", "{tmp}/o"], "name:key=value"),
    ],
)
def test_user_errors_are_one_line(cli, tmp_path: Path, args: list[str], message: str) -> None:  # noqa: ANN001
    ckpt = tmp_path / "cnn"
    sk.save(sk.zoo.create("seed_cnn", width=0.25), ckpt, example=torch.rand(2, 1, 28, 28))
    code, out, err = cli(*[a.replace("{ckpt}", str(ckpt)).replace("{tmp}", str(tmp_path)) for a in args])
    assert code == 2 and err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in out + err


def test_distill_cli(cli, digits_resnet: Path, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "student"
    code, stdout, err = cli(
        "distill",
        digits_resnet,
        "-d",
        "digits",
        "--student",
        "resnet_cifar:depth=8,width=0.25",
        "--epochs",
        "2",
        "--lr",
        "3e-3",
        "--feature",
        "layer3=layer3",
        "-o",
        out,
    )
    assert code == 0, err
    assert "student: accuracy" in stdout and "teacher: accuracy" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["features"] == {"layer3": "layer3"} and len(report["history"]) == 2
    assert report["after"]["params"] < report["before"]["params"]
    assert sk.zoo.arch_of(sk.load(out))["kwargs"]["width"] == 0.25
    code, _, err = cli(
        "distill", digits_resnet, "-d", "digits", "--width", "0.5", "--epochs", "1", "-o", tmp_path / "d"
    )
    assert code == 0, err
    assert sk.zoo.arch_of(sk.load(tmp_path / "d"))["kwargs"]["width"] == 0.25  # derived: teacher width 0.5 x 0.5


def test_workflows_refuse_non_torch_models(tmp_path: Path) -> None:
    from slimkit.simplify.workflow import distill_and_save, simplify_and_save

    with pytest.raises(sk.SlimkitError, match="needs a PyTorch model"):
        simplify_and_save(object(), tmp_path / "o", fold=True)  # type: ignore[arg-type]
    with pytest.raises(sk.SlimkitError, match="needs a PyTorch model"):
        distill_and_save(object(), tmp_path / "o", data="digits")  # type: ignore[arg-type]
    assert not (tmp_path / "o").exists()
