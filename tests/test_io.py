from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

import slimkit as sk
from slimkit.core.errors import ModelFileError, OutputExistsError, ShapeError
from slimkit.io import OnnxModel, onnx_agreement
from tests.conftest import zoo_example


def randomize_buffers(model: torch.nn.Module) -> None:
    """Give BatchNorm statistics non-default values so that a round trip really tests them."""
    g = torch.Generator().manual_seed(1)
    for _name, buf in model.named_buffers():
        if buf.is_floating_point():
            buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)


@pytest.mark.parametrize("name", sk.zoo.list())
def test_save_load_round_trip_is_bit_identical(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = sk.zoo.create(name).eval()
    randomize_buffers(model)
    x = zoo_example(name)
    sk.save(model, tmp_path / "ckpt", example=x)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["spec.json", "weights.safetensors"]
    loaded = sk.load(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path: Path) -> None:
    model = sk.zoo.create("text_lstm", vocab_size=50, embed_dim=8, hidden=8, num_classes=8)
    model.fc.weight = model.embedding.weight  # (50 x 8) tied, as language models do
    model.fc.bias = torch.nn.Parameter(torch.zeros(50))
    sk.save(model, tmp_path / "tied")
    spec = json.loads((tmp_path / "tied" / "spec.json").read_text())
    assert spec["tied"] == {"fc.weight": "embedding.weight"}


def test_existing_output_is_not_overwritten(tmp_path: Path) -> None:
    model = sk.zoo.create("lenet5")
    sk.save(model, tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "weights.safetensors").read_bytes()
    with pytest.raises(OutputExistsError, match="--force"):
        sk.save(sk.zoo.create("lenet5"), tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "weights.safetensors").read_bytes() == before
    torch.manual_seed(5)
    sk.save(sk.zoo.create("lenet5"), tmp_path / "ckpt", force=True)
    assert (tmp_path / "ckpt" / "weights.safetensors").read_bytes() != before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporaries left behind


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="cannot save Linear"):
        sk.save(torch.nn.Linear(2, 2), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_missing_file() -> None:
    with pytest.raises(ModelFileError, match="no such model file"):
        sk.load("does/not/exist")


def test_corrupt_safetensors(tmp_path: Path) -> None:
    sk.save(sk.zoo.create("lenet5"), tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(ModelFileError, match="not a valid safetensors file") as exc:
        sk.load(tmp_path / "ckpt")
    assert "\n" not in str(exc.value)


def test_truncated_spec(tmp_path: Path) -> None:
    sk.save(sk.zoo.create("lenet5"), tmp_path / "ckpt")
    spec = tmp_path / "ckpt" / "spec.json"
    spec.write_text(spec.read_text()[:40])
    with pytest.raises(ModelFileError, match="spec.json is not valid JSON"):
        sk.load(tmp_path / "ckpt")


def test_weights_that_do_not_fit_the_architecture(tmp_path: Path) -> None:
    sk.save(sk.zoo.create("lenet5"), tmp_path / "ckpt")
    spec_path = tmp_path / "ckpt" / "spec.json"
    spec = json.loads(spec_path.read_text())
    spec["arch"]["kwargs"] = {"num_classes": 7}
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(
        ModelFileError, match="'fc3.weight' has shape \\(10, 84\\), the architecture expects \\(7, 84\\)"
    ):
        sk.load(tmp_path / "ckpt")


class _Exploit:
    """Unpickling this object would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.marker, "pwned"))


def test_pickle_is_refused_without_trust_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = tmp_path / "model.pt"
    evil.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(ModelFileError, match="trust_pickle=True"):
        sk.load(evil)
    assert not marker.exists()


def test_trusted_state_dict_pickle_with_factory(tmp_path: Path) -> None:
    model = sk.zoo.create("lenet5").eval()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ModelFileError, match="holds a state dict"):
        sk.load(tmp_path / "weights.pt", trust_pickle=True)
    loaded = sk.load(tmp_path / "weights.pt", trust_pickle=True, factory="slimkit.zoo.cnn:lenet5")
    x = zoo_example("lenet5")
    assert torch.equal(model(x), loaded(x))


def test_safetensors_with_factory_and_factory_checkpoints(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = sk.zoo.create("lenet5").eval()
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(ModelFileError, match="factory="):
        sk.load(tmp_path / "w.safetensors")
    loaded = sk.load(tmp_path / "w.safetensors", factory="slimkit.zoo.cnn:lenet5")
    x = zoo_example("lenet5")
    assert torch.equal(model(x), loaded(x))
    # a factory-built model saves as a checkpoint that only loads when the factory is confirmed
    sk.save(loaded, tmp_path / "ckpt")
    with pytest.raises(ModelFileError, match="imports that code"):
        sk.load(tmp_path / "ckpt")
    again = sk.load(tmp_path / "ckpt", factory="slimkit.zoo.cnn:lenet5")
    assert torch.equal(model(x), again(x))
    with pytest.raises(ModelFileError, match="cannot import factory"):
        sk.load(tmp_path / "w.safetensors", factory="no_such_module:make")


def test_unknown_suffix(tmp_path: Path) -> None:
    f = tmp_path / "model.h5"
    f.write_bytes(b"x")
    with pytest.raises(ModelFileError, match="unknown file type '.h5'"):
        sk.load(f)


def test_onnx_export_matches_pytorch_on_mnist_test(
    trained_cnn: torch.nn.Module, mnist: sk.data.Dataset, tmp_path: Path
) -> None:
    path = sk.export(trained_cnn, tmp_path / "m.onnx", mnist.example)
    x_test = mnist.splits["test"][0]
    check = onnx_agreement(trained_cnn, path, x_test)
    assert check["top1_agreement"] >= 0.999
    assert check["max_abs_diff"] < 1e-3
    onnx_model = OnnxModel(path)
    assert onnx_model(x_test[:1]).shape == (1, 10)  # dynamic batch: 1 and 1,000 both run
    assert onnx_model.params == sum(p.numel() for p in trained_cnn.parameters())


@pytest.mark.parametrize("name", ["text_lstm", "recsys_mlp", "resnet_cifar"])
def test_onnx_export_other_families(name: str, tmp_path: Path) -> None:
    model = sk.zoo.create(name).eval()
    randomize_buffers(model)
    x = zoo_example(name, batch=6)
    path = sk.export(model, tmp_path / f"{name}.onnx", x)
    assert onnx_agreement(model, path, x)["max_abs_diff"] < 1e-4


def test_pt2_round_trip(tmp_path: Path) -> None:
    model = sk.zoo.create("text_transformer").eval()
    x = zoo_example("text_transformer")
    path = sk.export(model, tmp_path / "m.pt2", x)
    loaded = sk.load(path)
    assert torch.allclose(model(x), loaded(torch.cat([x, x])[:5])[:4], atol=1e-6)  # batch size is dynamic


def test_export_uses_recorded_input_and_checks_shapes(tmp_path: Path) -> None:
    model = sk.zoo.create("seed_cnn")
    with pytest.raises(ModelFileError, match="example input"):
        sk.export(model, tmp_path / "m.onnx")
    sk.save(model, tmp_path / "ckpt", example=torch.zeros(2, 1, 28, 28))
    loaded = sk.load(tmp_path / "ckpt")
    with pytest.raises(ShapeError, match=r"expects inputs of shape \(N, 1, 28, 28\), got shape \(2, 3, 28, 28\)"):
        sk.export(loaded, tmp_path / "m.onnx", torch.zeros(2, 3, 28, 28))
    assert not (tmp_path / "m.onnx").exists()
    sk.export(loaded, tmp_path / "m.pt2")  # no example needed: the checkpoint recorded the shape
    with pytest.raises(ModelFileError, match="use a .onnx or .pt2"):
        sk.export(loaded, tmp_path / "m.tflite")


def test_corrupt_onnx_and_pt2(tmp_path: Path) -> None:
    for suffix in (".onnx", ".pt2"):
        bad = tmp_path / f"bad{suffix}"
        bad.write_bytes(b"garbage")
        with pytest.raises(ModelFileError, match="not a loadable"):
            sk.load(bad)


def _ops_reading(path: Path, producers: set[str]) -> list[str]:
    """Op types of the Transpose nodes that read the output of a node of a type in ``producers``."""
    import onnx

    graph = onnx.load(str(path)).graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    return [
        made_by.get(n.input[0], "input")
        for n in graph.node
        if n.op_type == "Transpose" and made_by.get(n.input[0]) in producers
    ]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_export_leaves_no_transposes_of_activations_around_rnns(cell: str, tmp_path: Path) -> None:
    """A batch-first RNN exports with transposes of its input, output and the masked mean; all three
    are rewritten (ids transposed instead of rows, a reshape, the mask transposed) without changing
    any output."""
    import onnx

    from slimkit.io.transposes import drop_transposes

    model = sk.zoo.create("text_lstm", cell=cell).eval()
    x = zoo_example("text_lstm", batch=6)
    x[:, -3:] = 0  # padding, so that the masked mean matters
    path = sk.export(model, tmp_path / "m.onnx", x)
    assert _ops_reading(path, {"Gather", "LSTM", "GRU", "Reshape", "Squeeze"}) == []
    assert onnx_agreement(model, path, x)["max_abs_diff"] < 1e-5
    assert OnnxModel(path)(x[:1]).shape == (1, 2)  # still any batch size
    assert drop_transposes(onnx.load(str(path))) == 0  # nothing left to rewrite


def test_real_transposes_stay(tmp_path: Path) -> None:
    """A transpose that moves a dimension larger than 1, or whose gathered rows are read twice, is kept."""
    bidirectional = sk.zoo.create("text_lstm", bidirectional=True).eval()
    x = zoo_example("text_lstm", batch=6)
    path = sk.export(bidirectional, tmp_path / "bi.onnx", x)
    assert _ops_reading(path, {"LSTM"}) == ["LSTM"]  # num_directions is 2: moving it is a real transpose
    assert onnx_agreement(bidirectional, path, x)["max_abs_diff"] < 1e-5

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.fc = torch.nn.Embedding(20, 4), torch.nn.Linear(5, 3)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            rows = self.emb(ids)  # (B, T, 4)
            moved = rows.transpose(0, 1)  # rows read twice: the gather stays
            return self.fc(torch.cat([moved.sum(0), rows.mean(1)[:, :1]], 1)).transpose(0, 1)  # a real (B, 3) -> (3, B)

    model = Net().eval()
    x = torch.randint(0, 20, (6, 5))
    path = sk.export(model, tmp_path / "m.onnx", x)
    assert sorted(_ops_reading(path, {"Gather", "Gemm"})) == ["Gather", "Gemm"]
    assert onnx_agreement(model, path, x)["max_abs_diff"] < 1e-5
