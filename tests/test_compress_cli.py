from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import slimkit as sk


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, mnist: sk.data.Dataset) -> Path:
    torch.manual_seed(0)
    model = sk.zoo.create_for("lenet5", mnist)
    sk.train.fit(model, mnist.train, epochs=2, lr=3e-3, progress=False)
    return sk.save(model, tmp_path_factory.mktemp("cli") / "lenet", example=mnist.example)


def test_compress_lowrank_pca(cli, ckpt: Path, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "pca"
    code, stdout, err = cli(
        "compress", ckpt, "--lowrank", "0.5", "--method", "pca", "--layer", "fc1", "-d", "mnist5k", "-o", out
    )
    assert code == 0, err
    assert "changed 1 layer" in stdout and "'kind': 'pca-units'" in stdout and "'refit': 'fc2'" in stdout
    model = sk.load(out)
    assert model.fc1.out_features == 60 and model.fc2.in_features == 60


def test_compress_cluster_with_fine_tuning(cli, ckpt: Path, tmp_path: Path) -> None:  # noqa: ANN001
    code, _, err = cli("compress", ckpt, "--cluster", "16", "--epochs", "1", "-d", "mnist5k", "-o", tmp_path / "k16")
    assert code == 0, err
    model = sk.load(tmp_path / "k16")
    assert len(torch.unique(model.fc1.weight)) <= 16
    assert (tmp_path / "k16" / "weights.safetensors").stat().st_size < 0.3 * (
        ckpt / "weights.safetensors"
    ).stat().st_size


def test_quantize_verb(cli, ckpt: Path, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "m.int8.onnx"
    code, stdout, err = cli(
        "quantize", ckpt, "--data", "mnist5k", "--mode", "static", "--max-drop", "1.0", "--batch", "1", "-o", out
    )
    assert code == 0, err
    assert "int8 (static)" in stdout and "val accuracy" in stdout and out.is_file()
    if importlib.util.find_spec("nncf") is not None:  # both placements made, the faster at batch 1 kept
        assert "the fastest within the limit at batch 1 on onnxruntime" in stdout
    code, _, err = cli("quantize", ckpt, "--data", "mnist5k", "-o", out)
    assert code == 2 and "already exists" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lowrank", "0.5", "--cluster", "16"], "exactly one of"),
        (["--lowrank", "0.5", "--method", "pca"], "pass --data"),
        (["--lowrank", "0.5", "--method", "qr"], "unknown low-rank method"),
        (["--cluster", "16", "--epochs", "2"], "needs --data"),
    ],
)
def test_compress_errors_are_one_line(cli, ckpt: Path, tmp_path: Path, args: list[str], message: str) -> None:  # noqa: ANN001
    code, _, err = cli("compress", ckpt, *args, "-o", tmp_path / "x")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_quantize_int4_block_size(cli, ckpt: Path, tmp_path: Path) -> None:  # noqa: ANN001
    import onnx

    out = tmp_path / "m.int4.onnx"
    code, stdout, err = cli("quantize", ckpt, "-d", "mnist5k", "--mode", "int4", "--block-size", "64", "-o", out)
    assert code == 0, err
    nodes = [n for n in onnx.load(out).graph.node if n.op_type == "MatMulNBits"]
    assert nodes and all(a.i == 64 for n in nodes for a in n.attribute if a.name == "block_size")
    code, _, err = cli("quantize", ckpt, "-d", "mnist5k", "--mode", "int4", "--block-size", "24", "-o", tmp_path / "b")
    assert code == 2 and "block_size must be a power of two" in err and len(err.strip().splitlines()) == 1


def test_quantize_bad_mode(cli, ckpt: Path, tmp_path: Path) -> None:  # noqa: ANN001
    code, _, err = cli("quantize", ckpt, "-d", "mnist5k", "--mode", "int2", "-o", tmp_path / "q.onnx")
    assert code == 2 and "unknown quantization mode" in err
    code, _, err = cli("quantize", ckpt, "-d", "mnist5k", "--embeddings", "int4", "-o", tmp_path / "q.onnx")
    assert code == 2 and "embeddings must be 'auto', 'rowwise' or 'onnx'" in err
    code, _, err = cli("quantize", ckpt, "-d", "mnist5k", "--placement", "tvm", "-o", tmp_path / "q.onnx")
    assert code == 2 and "unknown placement 'tvm'" in err and len(err.strip().splitlines()) == 1
