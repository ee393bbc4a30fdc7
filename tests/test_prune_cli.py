from __future__ import annotations

import json
from pathlib import Path

import torch

import slimkit as sk


def test_prune_cli_structured_and_sparse(cli, tmp_path: Path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    sk.save(sk.zoo.create("seed_cnn"), tmp_path / "ckpt", example=torch.zeros(1, 1, 28, 28))
    code, out, err = cli("prune", tmp_path / "ckpt", "--target-macs", "0.25", "--global", "-o", tmp_path / "small")
    assert code == 0, err
    report = json.loads((tmp_path / "small" / "report.json").read_text())
    assert report["after"]["macs"] <= 0.25 * report["before"]["macs"]
    assert "MACs" in out and "skipped fc2: feeds the model output" in " ".join(out.split())
    small = sk.load(tmp_path / "small")
    assert small.conv1.out_channels < 64

    code, out, err = cli("prune", tmp_path / "ckpt", "--sparsity", "0.8", "-o", tmp_path / "sparse")
    assert code == 0, err
    report = json.loads((tmp_path / "sparse" / "report.json").read_text())
    assert report["after"]["bytes"] < 0.4 * report["before"]["bytes"]
    assert report["after"]["macs"] == report["before"]["macs"]  # zeros are still multiplied

    code, _, err = cli("prune", tmp_path / "ckpt", "--finetune-epochs", "1", "-o", tmp_path / "x")
    assert code == 2 and "need data: pass --data" in err
    code, _, err = cli("prune", tmp_path / "ckpt", "--steps", "2", "-o", tmp_path / "x")
    assert code == 2 and "need data: pass --data" in err
    code, _, err = cli("prune", tmp_path / "ckpt", "--nm", "2-4", "-o", tmp_path / "x")
    assert code == 2 and "N:M such as 2:4" in err
    code, _, err = cli("prune", tmp_path / "ckpt", "--aggregate", "sum", "-o", tmp_path / "summed")
    assert code == 0, err
    assert json.loads((tmp_path / "summed" / "report.json").read_text())["records"][0]["config"]["aggregate"] == "sum"
    code, _, err = cli("prune", tmp_path / "ckpt", "--aggregate", "max", "-o", tmp_path / "x")
    assert code == 2 and "unknown aggregate 'max'; choose one of normalized, sum" in err
    code, _, err = cli(
        "prune", tmp_path / "ckpt", "--importance", "output", "--refit", "--global", "-o", tmp_path / "refit"
    )
    assert code == 0, err
    record = json.loads((tmp_path / "refit" / "report.json").read_text())["records"][0]
    assert record["config"]["refit"] and record["details"]["refitted"] == ["fc1", "fc2"]  # both read pruned units


def test_prune_cli_with_data_and_finetuning(cli, tmp_path: Path) -> None:  # noqa: ANN001
    code, _, err = cli(
        "train",
        "-m",
        "resnet_cifar",
        "-a",
        "depth=8",
        "-d",
        "digits",
        "--epochs",
        "2",
        "--lr",
        "3e-3",
        "-o",
        tmp_path / "ckpt",
    )
    assert code == 0, err
    code, out, err = cli(
        "prune",
        tmp_path / "ckpt",
        "-d",
        "digits",
        "--ratio",
        "0.3",
        "--importance",
        "taylor",
        "--steps",
        "2",
        "--finetune-epochs",
        "1",
        "-o",
        tmp_path / "pruned",
    )
    assert code == 0, err
    report = json.loads((tmp_path / "pruned" / "report.json").read_text())
    assert report["after"]["params"] < report["before"]["params"]
    assert report["after"]["metrics"]["accuracy"] > 0.5
    assert len(report["records"]) == 2  # one per round
