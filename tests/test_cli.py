from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import slimkit as sk


def test_env(cli) -> None:  # noqa: ANN001
    code, out, _ = cli("env")
    assert code == 0
    assert "torch" in out and "2.13.0" in out and "mnist5k" in out and "seed_cnn" in out


def test_train_evaluate_export(cli, tmp_path: Path) -> None:  # noqa: ANN001
    ckpt = tmp_path / "ckpt"
    code, out, err = cli(
        "train",
        "--model",
        "resnet_cifar",
        "--arg",
        "depth=8",
        "--arg",
        "width=0.5",
        "--data",
        "digits",
        "--epochs",
        "3",
        "--lr",
        "3e-3",
        "-o",
        ckpt,
    )
    assert code == 0, err
    assert {p.name for p in ckpt.iterdir()} == {
        "spec.json",
        "weights.safetensors",
        "report.json",
        "config.json",
        "history.json",
    }
    report = json.loads((ckpt / "report.json").read_text())
    assert report["metrics"]["accuracy"] > 0.8
    assert json.loads((ckpt / "config.json").read_text())["model_args"] == {"depth": 8, "width": 0.5}

    code, out, err = cli("evaluate", ckpt, "--data", "digits", "--runs", "3", "--json", tmp_path / "eval.json")
    assert code == 0, err
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["metrics"] == report["metrics"]  # same weights, same test split, same numbers

    code, out, err = cli("export", ckpt, "-o", tmp_path / "m.onnx", "--data", "digits")
    assert code == 0, err
    assert "top-1 agreement 100.00%" in out
    code, _, err = cli("export", ckpt, "-o", tmp_path / "m.onnx")
    assert code == 2 and "already exists" in err and "--force" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--model", "seed_cnn", "--data", "cifar10", "-o", "{tmp}/x"], "unknown dataset 'cifar10'"),
        (["train", "--model", "vgg", "--data", "digits", "-o", "{tmp}/x"], "unknown model 'vgg'"),
        (["evaluate", "{tmp}/missing", "--data", "digits"], "no such model file or checkpoint"),
        (["evaluate", "{tmp}/evil.pt", "--data", "digits"], "--trust-pickle"),
        (["evaluate", "{tmp}/truncated", "--data", "digits"], "spec.json is not valid JSON"),
        (["evaluate", "{tmp}/corrupt", "--data", "digits"], "not a valid safetensors file"),
        (["evaluate", "{tmp}/good", "--data", "digits"], "expects inputs of shape (N, 1, 28, 28)"),
        (["train", "--model", "seed_cnn", "--data", "digits", "--arg", "oops", "-o", "{tmp}/x"], "key=value"),
    ],
)
def test_user_errors_are_one_line_without_traceback(cli, tmp_path: Path, args: list[str], message: str) -> None:  # noqa: ANN001
    model = sk.zoo.create("seed_cnn")
    for name in ("truncated", "corrupt", "good"):
        sk.save(model, tmp_path / name, example=torch.zeros(1, 1, 28, 28))
    spec = tmp_path / "truncated" / "spec.json"
    spec.write_text(spec.read_text()[:30])
    (tmp_path / "corrupt" / "weights.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"a": 1}))
    code, out, err = cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in out + err


def test_real_entry_point_has_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "slimkit", "evaluate", str(tmp_path / "nope"), "--data", "digits"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "no such model file" in proc.stderr
