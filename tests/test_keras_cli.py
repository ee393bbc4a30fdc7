"""The CLI verbs on ``.keras`` files (KERAS_BACKEND=torch): prune, optimize, and the others' dispatch."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
skk = pytest.importorskip("slimkit.keras")
pytest.importorskip("onnxruntime")
L = keras.layers

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory, digits) -> Path:  # noqa: ANN001
    """A small brief-style CNN for scikit-learn's 8x8 digits (channels-last), trained briefly."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            L.MaxPooling2D(2, name="pool1"),
            L.Conv2D(16, 3, padding="same", activation="relu", name="conv2"),
            L.Flatten(name="flatten"),
            L.Dense(32, activation="relu", name="fc1"),
            L.Dense(10, activation="softmax", name="fc2"),
        ],
        name="digits_cnn",
    )
    x, y = skk.data.arrays(skk.for_model(digits, model), "train")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=8, batch_size=64, verbose=0)
    path = tmp_path_factory.mktemp("keras") / "cnn.keras"
    model.save(path)
    return path


def test_for_model_lays_out_channels_last(digits) -> None:  # noqa: ANN001
    model = keras.Sequential([keras.Input((8, 8, 1)), L.Flatten(), L.Dense(10)])
    ds = skk.for_model(digits, model)
    assert ds.input_shape == (8, 8, 1) and digits.input_shape == (1, 8, 8)
    np.testing.assert_array_equal(ds.splits["val"][0].numpy()[..., 0], digits.splits["val"][0].numpy()[:, 0])
    from slimkit.core.errors import ShapeError

    with pytest.raises(ShapeError, match="takes inputs"):
        skk.for_model(digits, keras.Sequential([keras.Input((5, 5, 1)), L.Flatten(), L.Dense(10)]))


def test_cli_prune_keras(cli, model_file: Path, tmp_path: Path) -> None:  # noqa: ANN001
    from slimkit.keras.cost import count_macs

    code, out, err = cli(
        "prune",
        model_file,
        "--target-macs",
        "0.5",
        "--importance",
        "l1",
        "-d",
        "digits",
        "-o",
        tmp_path / "small.keras",
    )
    assert code == 0, err
    small = keras.models.load_model(tmp_path / "small.keras")  # plain Keras
    original = keras.models.load_model(model_file)
    assert count_macs(small) <= 0.5 * count_macs(original)
    assert "accuracy" in out and "MACs" in out and "fc2: feeds the model output" in " ".join(out.split())
    code, out, err = cli("prune", model_file, "--ratio", "0.25", "-o", tmp_path / "folder")
    assert code == 0, err
    report = json.loads((tmp_path / "folder" / "report.json").read_text())
    assert report["params"][1] < report["params"][0] and (tmp_path / "folder" / "model.keras").is_file()
    for flags, what in (
        (["--sparsity", "0.5"], "--sparsity"),
        (["--importance", "taylor"], "--importance taylor"),
        (["--global"], "--global"),
        (["--aggregate", "sum"], "--aggregate"),
    ):
        code, _, err = cli("prune", model_file, *flags, "-o", tmp_path / "x.keras")
        assert code == 2 and f"{what} is not available for .keras models; supported for Keras: --ratio" in err


def test_cli_optimize_keras(cli, model_file: Path, tmp_path: Path) -> None:  # noqa: ANN001
    out_dir = tmp_path / "opt"
    code, out, err = cli(
        "optimize",
        model_file,
        "-d",
        "digits",
        "--target",
        "macs=0.5",
        "--max-drop",
        "3",
        "--finetune-epochs",
        "1",
        "--rounds",
        "1",
        "--quantize",
        "-o",
        out_dir,
    )
    assert code == 0, err
    for name in ("model.keras", "model.onnx", "model.int8.onnx", "report.json", "report.html", "recipe.json"):
        assert (out_dir / name).is_file(), name
    report = json.loads((out_dir / "report.json").read_text())
    assert report["framework"] == "keras" and report["files"]["keras"] == "model.keras"
    chosen = report["candidates"][report["chosen"]]
    assert chosen["costs"]["macs"] <= 0.5 * report["validation"]["original"]["costs"]["macs"]
    assert report["test"]["after"]["macs"] < report["test"]["before"]["macs"]
    assert "int8" in report["test"]["after"]["model"]
    assert "<img" in (out_dir / "report.html").read_text()
    assert "outputs in" in out and "model.keras" in out
    small = keras.models.load_model(out_dir / "model.keras")
    assert small.get_layer("conv1").filters < 16 or small.get_layer("conv2").filters < 16
    code, _, err = cli(
        "optimize", model_file, "-d", "digits", "--target", "macs=0.5", "--task", "regression", "-o", tmp_path / "x"
    )
    assert code == 2 and "--task is not available for .keras models" in err


def test_cli_optimize_keras_searches_and_resumes_through_the_one_loop(cli, model_file: Path, tmp_path: Path) -> None:  # noqa: ANN001
    out_dir = tmp_path / "search"
    args = [
        "optimize",
        model_file,
        "-d",
        "digits",
        "--target",
        "macs=0.5",
        "--max-drop",
        "5",
        "--finetune-epochs",
        "1",
        "--no-quantize",
        "-o",
        out_dir,
    ]
    code, out, err = cli(*args, "--trials", "2")
    assert code == 0, err
    first = json.loads((out_dir / "report.json").read_text())
    assert [t["state"] for t in first["trials"]] == ["COMPLETE", "COMPLETE"]
    assert all(t["params"]["s0.allocation"] in ("sensitivity", "uniform") for t in first["trials"])  # no global
    code, out, err = cli(*args, "--trials", "3")
    assert code == 2 and "--resume" in err  # an existing run is never replaced silently
    code, out, err = cli(*args, "--trials", "3", "--resume")
    assert code == 0, err
    assert "2 finished trial(s) in the study, 1 to run" in out
    report = json.loads((out_dir / "report.json").read_text())
    assert len(report["trials"]) == 3 and report["framework"] == "keras"
    assert [t["params"] for t in report["trials"][:2]] == [t["params"] for t in first["trials"]]  # kept, not re-run
    chosen = report["candidates"][report["chosen"]]
    assert chosen["costs"]["macs"] <= 0.5 * report["validation"]["original"]["costs"]["macs"]
    from slimkit.keras.cost import count_macs

    assert count_macs(keras.models.load_model(out_dir / "model.keras")) == chosen["costs"]["macs"]


def test_keras_optimize_resumes_after_the_last_finished_step(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slimkit.keras.optimize import KerasBackend, optimize

    recipe = {
        "steps": [
            {"SensitivityPruneConfig": {"target_macs": 0.5, "probe_ratios": [0.5]}},
            {"FineTuneConfig": {"epochs": 1}},
            {"FoldConfig": {}},
        ]
    }
    out = tmp_path / "run"

    def killed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt  # as if the process died during the fold step

    with monkeypatch.context() as m:
        m.setattr(KerasBackend, "transform", killed)
        with pytest.raises(KeyboardInterrupt):
            optimize(model_file, "digits", "macs=0.5", recipe=recipe, output=out)
    assert [p.name for p in (out / "progress").iterdir()] == ["pass01-step02"]
    lines: list[str] = []
    result = optimize(model_file, "digits", "macs=0.5", recipe=recipe, output=out, resume=True, log=lines.append)
    assert any("resumed after step 2 of pass 1" in s for s in lines)
    assert not any("sensitivity:" in s or "prune round" in s for s in lines)  # nothing done twice
    assert [c.step for c in result.candidates] == ["prune round 1/1 (sensitivity)", "fold"]
    assert result.target_met and (out / "model.keras").is_file() and not (out / "progress").exists()


def test_cli_other_verbs_take_keras(cli, model_file: Path, tmp_path: Path) -> None:  # noqa: ANN001
    code, out, err = cli("evaluate", model_file, "-d", "digits", "--runs", "3")
    assert code == 0, err
    assert "accuracy" in out and "onnxruntime/b1" in out
    code, out, err = cli("evaluate", model_file, "-d", "digits", "--runs", "2", "--runtime", "openvino")
    assert code == 0, err
    assert "openvino/b1" in out and "onnxruntime/b1" not in out
    code, out, err = cli("export", model_file, "-o", tmp_path / "m.onnx", "-d", "digits")
    assert code == 0, err
    assert "top-1 agreement 100.00%" in out
    code, out, err = cli("quantize", model_file, "-d", "digits", "-o", tmp_path / "m.int8.onnx")
    assert code == 0, err
    assert (tmp_path / "m.int8.onnx").stat().st_size < (tmp_path / "m.onnx").stat().st_size
    if importlib.util.find_spec("nncf"):  # the same ONNX path, int8 placed for OpenVINO and checked there
        code, out, err = cli(
            "quantize", model_file, "-d", "digits", "-o", tmp_path / "ov.onnx", "--runtime", "openvino"
        )
        assert code == 0, err
        assert "NNCF" in out or "OpenVINO" in out
    code, out, err = cli(
        "compress", model_file, "--lowrank", "0.5", "--method", "pca", "-d", "digits", "-o", tmp_path / "c.keras"
    )
    assert code == 0, err
    assert keras.models.load_model(tmp_path / "c.keras").get_layer("fc1").units == 16
    code, _, err = cli("compress", model_file, "--cluster", "16", "-o", tmp_path / "c2.keras")
    assert code == 2 and "not available for .keras models" in err
    code, out, err = cli("simplify", model_file, "--remove-type", "MaxPooling2D", "-o", tmp_path / "s.keras")
    assert code == 0, err
    assert "pool1" not in [layer.name for layer in keras.models.load_model(tmp_path / "s.keras").layers]
    code, _, err = cli("distill", model_file, "-d", "digits", "--student", "lenet5", "-o", tmp_path / "d.keras")
    assert code == 2 and "--student is not available for .keras models" in err
    code, _, err = cli("export", model_file, "-o", tmp_path / "m.pt2")
    assert code == 2 and ".pt2 is for PyTorch" in err


def test_cli_unsupported_layer_is_reported(cli, tmp_path: Path) -> None:  # noqa: ANN001
    x = keras.Input((8, 8, 1))
    h = L.Conv2D(8, 3, name="conv")(x)
    h = L.LayerNormalization(name="norm")(h)
    h = L.Conv2D(8, 3, name="conv2")(h)
    out = L.Dense(10, activation="softmax", name="out")(L.Flatten()(h))
    path = tmp_path / "ln.keras"
    keras.Model(x, out, name="ln").save(path)
    code, out_text, err = cli("prune", path, "--ratio", "0.5", "-o", tmp_path / "ln-small.keras")
    assert code == 0, err
    text = " ".join(out_text.split())
    assert "conv: consumed by norm (LayerNormalization), which slimkit cannot slice" in text
    small = keras.models.load_model(tmp_path / "ln-small.keras")
    assert small.get_layer("conv").filters == 8 and small.get_layer("conv2").filters == 4


def test_cli_fuse_keras(cli, model_file: Path, tmp_path: Path, digits) -> None:  # noqa: ANN001
    member = keras.models.load_model(model_file)
    x, _ = skk.data.arrays(skk.for_model(digits, member), "test")
    expected = np.asarray(member.predict(x, verbose=0))
    for method in ("mean", "uniform-soup"):  # two copies of one model: both fuse to that model
        out = tmp_path / f"{method}.keras"
        code, text, err = cli("fuse", model_file, model_file, "--method", method, "-d", "digits", "-o", out)
        assert code == 0, err
        assert "accuracy" in text
        fused = keras.models.load_model(out)
        np.testing.assert_allclose(np.asarray(fused.predict(x, verbose=0)), expected, atol=1e-5)
    code, _, err = cli("fuse", model_file, model_file, "--method", "stack", "-o", tmp_path / "s.keras")
    assert code == 2 and "--method stack is not available for .keras models" in err
    code, _, err = cli("fuse", model_file, tmp_path, "-o", tmp_path / "x.keras")
    assert code == 2 and "all .keras files or all PyTorch checkpoints" in err
    code, _, err = cli("fuse", model_file, model_file, "--distill-into", "best-member", "-o", tmp_path / "d.keras")
    assert code == 2 and "--distill-into is not available for .keras models" in err
