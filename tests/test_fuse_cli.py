"""``slimkit train-members`` and ``slimkit fuse`` end to end on digits (in-process CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import slimkit as sk
from slimkit.fuse import Ensemble

SMALL = ["--arg", "depth=8", "--arg", "width=0.5"]


@pytest.fixture(scope="module")
def members_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slimkit.fuse.workflow import train_members_and_save

    out = tmp_path_factory.mktemp("members") / "m"
    train_members_and_save(
        model="resnet_cifar",
        data="digits",
        n=3,
        output=out,
        model_args={"depth": 8, "width": 0.5},
        start_epochs=2,
        epochs=1,
        progress=False,
    )
    return out


def test_train_members_writes_checkpoints_from_one_start(cli, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "m"
    code, stdout, err = cli(
        "train-members",
        "-m",
        "resnet_cifar",
        "-d",
        "digits",
        "--n",
        "2",
        *SMALL,
        "--start-epochs",
        "1",
        "--epochs",
        "1",
        "-o",
        out,
    )
    assert code == 0, err
    assert "member-1" in stdout
    summary = json.loads((out / "members.json").read_text())
    assert [m["seed"] for m in summary["members"]] == [1, 2] and summary["config"]["from_start"]
    assert summary["kind"] == "shared-start"
    vals = [m["val_accuracy"] for m in summary["members"]]
    assert summary["best_member"] == vals.index(max(vals))  # chosen on validation, not test
    assert "<- best by validation" in stdout
    start, m0, m1 = (sk.load(out / name) for name in ("start", "member-0", "member-1"))
    assert not torch.equal(m0.conv1.weight, m1.conv1.weight)  # different fine-tunes
    for m, record in zip((m0, m1), summary["members"], strict=True):  # recorded figures are the models'
        acc = sk.evaluate(m, sk.data.load("digits"), latency=False).metrics["accuracy"]
        assert record["test_accuracy"] == pytest.approx(acc)
    code, _, err = cli("train-members", "-m", "resnet_cifar", "-d", "digits", "-o", out)
    assert code == 2 and "already exists" in err and err.count("\n") == 1


def test_fuse_stack_saves_a_loadable_ensemble(cli, members_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    ckpts = [members_dir / f"member-{i}" for i in range(3)]
    code, stdout, err = cli("fuse", *ckpts, "--method", "stack", "-d", "digits", "-o", tmp_path / "ens")
    assert code == 0, err
    assert "stack" in stdout
    report = json.loads((tmp_path / "ens" / "report.json").read_text())
    ens = sk.load(tmp_path / "ens")
    assert isinstance(ens, Ensemble) and ens.method == "stack"
    acc = sk.evaluate(ens, sk.data.load("digits"), latency=False).metrics["accuracy"]
    assert report["fused"]["test_accuracy"] == pytest.approx(acc)
    stacker = 3 * 10 * 10  # the logistic regression on 3 members x 10 classes
    assert report["fused"]["macs"] == sum(m["macs"] for m in report["members"]) + stacker


def test_independent_affine_members_fused_by_selection(cli, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "m"
    code, stdout, err = cli(
        "train-members",
        "-m",
        "resnet_cifar",
        "-d",
        "digits",
        "--n",
        "3",
        *SMALL,
        "--independent",
        "--affine",
        "--checkpoint",
        "last",
        "--epochs",
        "1",
        "-o",
        out,
    )
    assert code == 0, err
    summary = json.loads((out / "members.json").read_text())
    assert summary["kind"] == "independent" and not (out / "start").exists()
    assert summary["config"]["augment"] == "affine" and summary["config"]["checkpoint"] == "last"
    ckpts = [out / f"member-{i}" for i in range(3)]
    code, stdout, err = cli("fuse", *ckpts, "--method", "select", "-d", "digits", "-o", tmp_path / "ens")
    assert code == 0, err
    report = json.loads((tmp_path / "ens" / "report.json").read_text())
    assert report["fused"]["val_accuracy"] >= max(m["val_accuracy"] for m in report["members"])
    ens = sk.load(tmp_path / "ens")
    assert isinstance(ens, Ensemble) and ens.method == "select"
    assert float(ens.weights.sum()) == pytest.approx(1.0, abs=1e-6)
    code, _, err = cli(
        "train-members", "-m", "resnet_cifar", "-d", "digits", "--checkpoint", "best", "-o", tmp_path / "bad"
    )
    assert code == 2 and "unknown checkpoint rule 'best'" in err and err.count("\n") == 1
    code, _, err = cli(
        "train-members",
        "-m",
        "resnet_cifar",
        "-d",
        "digits",
        "--n",
        "1",
        *SMALL,
        "--independent",
        "--elastic",
        "--epochs",
        "1",
        "-o",
        tmp_path / "elastic",
    )
    assert code == 0, err
    assert json.loads((tmp_path / "elastic" / "members.json").read_text())["config"]["augment"] == "elastic"
    code, _, err = cli(
        "train-members", "-m", "resnet_cifar", "-d", "digits", "--affine", "--elastic", "-o", tmp_path / "both"
    )
    assert code == 2 and "choose one of --affine and --elastic" in err


def test_fuse_greedy_soup_and_distillation(cli, members_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    ckpts = [members_dir / f"member-{i}" for i in range(3)]
    code, _, err = cli("fuse", *ckpts, "--method", "greedy-soup", "-d", "digits", "-o", tmp_path / "soup")
    assert code == 0, err
    report = json.loads((tmp_path / "soup" / "report.json").read_text())
    assert report["fused"]["val_accuracy"] >= max(m["val_accuracy"] for m in report["members"])
    assert report["fused"]["macs"] == report["members"][0]["macs"]
    sk.load(tmp_path / "soup")  # a soup is a plain zoo model

    vals = [m["val_accuracy"] for m in report["members"]]
    assert report["best_member"] == vals.index(max(vals))

    code, stdout, err = cli(
        "fuse",
        *ckpts,
        "--method",
        "mean",
        "-d",
        "digits",
        "--distill-into",
        "best-member",
        "--epochs",
        "1",
        "-o",
        tmp_path / "from-best",
    )
    assert code == 0, err
    report = json.loads((tmp_path / "from-best" / "report.json").read_text())
    best = report["members"][report["best_member"]]
    assert report["config"]["lr"] == 3e-4 and report["distilled"]["macs"] == best["macs"]
    assert report["distilled"]["start_val_accuracy"] == pytest.approx(best["val_accuracy"])
    assert report["distilled"]["val_accuracy"] >= best["val_accuracy"]  # the start is kept unless beaten

    code, stdout, err = cli(
        "fuse",
        *ckpts,
        "--method",
        "mean",
        "-d",
        "digits",
        "--distill-into",
        "resnet_cifar",
        "--student-arg",
        "depth=8",
        "--student-arg",
        "width=0.25",
        "--epochs",
        "1",
        "-o",
        tmp_path / "student",
    )
    assert code == 0, err
    assert "distilled into resnet_cifar" in stdout
    student = sk.load(tmp_path / "student")
    report = json.loads((tmp_path / "student" / "report.json").read_text())
    assert report["distilled"]["macs"] < report["members"][0]["macs"]  # a smaller student
    assert student.conv1.out_channels == 4


def test_fuse_user_errors_are_one_line(cli, members_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    ckpts = [members_dir / f"member-{i}" for i in range(2)]
    other = sk.zoo.create_for("resnet_cifar", sk.data.load("digits"), depth=8, width=0.25)
    sk.save(other, tmp_path / "narrow")
    cases = [
        ([*ckpts, tmp_path / "narrow", "--method", "uniform-soup", "-d", "digits"], "tensor 'conv1.weight'"),
        ([*ckpts, "--method", "weighted"], "pass --data"),
        ([*ckpts, "--method", "select"], "pass --data"),
        ([*ckpts, "--method", "median"], "unknown fusion method 'median'"),
        ([ckpts[0], "--method", "mean"], "at least 2 checkpoints"),
        ([*ckpts, "--distill-into", "seed_cnn"], "pass --data"),
        ([*ckpts, "-d", "digits", "--distill-into", "best-member", "--student-arg", "width=0.5"], "does not apply"),
    ]
    for args, message in cases:
        code, out, err = cli("fuse", *args, "-o", tmp_path / "out")
        assert code == 2, (args, out, err)
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
