"""The runtimes an ONNX file is run and timed on: ONNX Runtime and OpenVINO (``--runtime``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import slimkit as sk
from slimkit.core.errors import MissingExtraError, ModelFileError, SlimkitError
from slimkit.io.onnx import OnnxModel
from slimkit.optimize import Target

ov = pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def exported(trained_cnn: torch.nn.Module, mnist: sk.data.Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sk.export(trained_cnn, tmp_path_factory.mktemp("rt") / "cnn.onnx", mnist.example)


def test_openvino_runs_the_onnx_file_and_its_ir_as_onnx_runtime_does(exported: Path, mnist: sk.data.Dataset) -> None:
    x = mnist.splits["test"][0][:300]
    ort, vino = OnnxModel(exported), OnnxModel(exported, runtime="openvino")
    assert vino.runtime == "openvino" and vino.params == ort.params and vino.input_names == ort.input_names
    assert torch.allclose(vino(x), ort(x), atol=1e-4)  # fp32 on OpenVINO, not its bf16 default
    ir = exported.with_name("cnn.xml")
    ov.save_model(ov.convert_model(str(exported)), str(ir), compress_to_fp16=False)
    loaded = sk.load(ir)
    assert isinstance(loaded, OnnxModel) and loaded.runtime == "openvino"
    assert loaded.params == ort.params and loaded.bytes > ir.with_suffix(".bin").stat().st_size
    assert torch.allclose(loaded(x), ort(x), atol=1e-4)
    with pytest.raises(ModelFileError, match="is an OpenVINO IR: run it with runtime openvino"):
        OnnxModel(ir)


def test_evaluate_times_the_chosen_runtime(exported: Path, trained_cnn: torch.nn.Module, mnist) -> None:  # noqa: ANN001
    on_ov = sk.evaluate(OnnxModel(exported, runtime="openvino"), mnist, batch_sizes=(1,), latency_runs=3)
    on_ort = sk.evaluate(OnnxModel(exported), mnist, batch_sizes=(1,), latency_runs=3)
    assert set(on_ov.latency_ms) == {"openvino/b1"} and set(on_ort.latency_ms) == {"onnxruntime/b1"}
    assert on_ov.metrics["accuracy"] == pytest.approx(on_ort.metrics["accuracy"], abs=1e-3)
    module = sk.evaluate(trained_cnn, mnist, batch_sizes=(1,), latency_runs=3, runtime="openvino")
    assert set(module.latency_ms) == {"torch/b1", "openvino/b1"}


def _custom_op_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph([helper.make_node("Foo", ["x"], ["y"], domain="com.example")], "g", [x], [y])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_an_operator_the_runtime_lacks_is_one_line_naming_it(tmp_path: Path, runtime: str) -> None:
    path = _custom_op_model(tmp_path / "foo.onnx")
    with pytest.raises(ModelFileError, match=f"cannot run on {runtime}: .*Foo") as exc:
        OnnxModel(path, runtime=runtime)
    assert "\n" not in str(exc.value)


def test_unknown_or_missing_runtime(monkeypatch: pytest.MonkeyPatch, cli, exported: Path) -> None:  # noqa: ANN001
    with pytest.raises(SlimkitError, match="unknown runtime 'tensorrt': choose onnxruntime or openvino"):
        Target(macs=0.5, runtime="tensorrt")
    code, _, err = cli("evaluate", exported, "-d", "mnist5k", "--runtime", "tensorrt")
    assert code == 2 and "unknown runtime 'tensorrt'" in err and "Traceback" not in err
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'slimkit\[openvino\]'"):
        OnnxModel(exported, runtime="openvino")
    code, _, err = cli("evaluate", exported, "-d", "mnist5k", "--runtime", "openvino")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "slimkit[openvino]" in err


def test_cli_evaluates_an_ir_on_openvino_and_env_names_the_runtimes(cli, exported: Path) -> None:  # noqa: ANN001
    ir = exported.with_name("cli.xml")
    ov.save_model(ov.convert_model(str(exported)), str(ir))  # fp16 weights: OpenVINO's default
    code, out, _ = cli("evaluate", ir, "-d", "mnist5k", "--runtime", "openvino", "--runs", "2")
    assert code == 0 and "openvino/b64" in out and "accuracy" in out
    code, _, err = cli("evaluate", ir, "-d", "mnist5k", "--runs", "2")
    assert code == 2 and "is an OpenVINO IR: run it with runtime openvino" in err
    code, out, _ = cli("env")
    assert code == 0 and "onnxruntime, openvino" in out


def test_int8_for_openvino_is_made_by_nncf_and_checked_on_openvino(
    trained_cnn: torch.nn.Module,
    mnist: sk.data.Dataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import onnx

    from slimkit.compress import QuantizeConfig, quantize

    pytest.importorskip("nncf")
    r = quantize(trained_cnn, mnist, QuantizeConfig(runtime="openvino"), tmp_path / "ov.int8.onnx")
    assert r.mode == "static" and "NNCF" in r.settings["format"] and "OpenVINO" in r.reason
    assert r.drop <= 0.5 and r.bytes_int8 < 0.3 * r.bytes_fp32
    ops = {n.op_type for n in onnx.load(str(r.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "Pad" not in ops  # no ORT-only channel padding
    x = mnist.splits["test"][0][:256]
    on_ov, on_ort = OnnxModel(r.path, runtime="openvino")(x), OnnxModel(r.path)(x)
    assert (on_ov.argmax(1) == on_ort.argmax(1)).float().mean() > 0.98  # a plain QDQ file: both runtimes run it
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(MissingExtraError, match=r"nncf is not installed.*slimkit\[openvino\]"):
        quantize(trained_cnn, mnist, QuantizeConfig(runtime="openvino"), tmp_path / "no.onnx")
    assert not (tmp_path / "no.onnx").exists()
