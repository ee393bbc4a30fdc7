"""slimkit.keras: native rebuilding of Sequential / Functional Keras models (torch backend)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from slimkit.core.errors import ModelFileError, SlimkitError

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
sk_keras = pytest.importorskip("slimkit.keras")
L = keras.layers

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def predict(model, x):
    return np.asarray(model.predict(x, verbose=0, batch_size=len(x)))


def seeded(model, seed=0):
    """Give every weight (incl. BatchNorm statistics) reproducible random values."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = layer.get_weights()
        if isinstance(layer, L.BatchNormalization):
            c = ws[0].shape[0]
            ws = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c), rng.uniform(0.5, 2, c)]
        else:
            ws = [rng.normal(0, 0.3, w.shape) for w in ws]
        layer.set_weights([w.astype("float32") for w in ws])
    return model


def brief_cnn(width=8, hidden=32):
    """The design brief's CNN (``brief_cnn(64, 1024)`` is its exact model), narrowed by default for fast tests."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Conv2D(width, 3, activation="relu", name="conv1"),
            L.MaxPooling2D(2, name="pool1"),
            L.Conv2D(width, 3, activation="relu", name="conv2"),
            L.MaxPooling2D(2, name="pool2"),
            L.Flatten(name="flatten"),
            L.Dense(hidden, activation="relu", name="fc1"),
            L.Dense(10, activation="softmax", name="fc2"),
        ],
        name="brief",
    )


def residual_net():
    """Conv -> BN -> ReLU, a residual Add, a Concatenate and Flatten -> Dense: every coupling rule."""
    x = keras.Input((10, 10, 3), name="image")
    a = L.Conv2D(8, 3, padding="same", name="stem")(x)
    a = L.BatchNormalization(name="stem_bn")(a)
    a = L.ReLU(name="stem_relu")(a)
    b = L.Conv2D(8, 3, padding="same", name="res")(a)
    b = L.BatchNormalization(name="res_bn")(b)
    s = L.Add(name="add")([a, b])
    c = L.Conv2D(6, 1, activation="relu", name="side")(x)
    cat = L.Concatenate(name="cat")([s, c])
    p = L.MaxPooling2D(2, name="pool")(cat)
    f = L.Flatten(name="flat")(p)
    h = L.Dense(12, activation="relu", name="fc")(f)
    out = L.Dense(4, name="out")(h)
    return keras.Model(x, out, name="resnetish")


@pytest.fixture(scope="module")
def x_img():
    return np.random.default_rng(1).random((16, 10, 10, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def x_mnist():
    return np.random.default_rng(2).random((8, 28, 28, 1), dtype=np.float32)


def zero_units(model, layer, units, bn=None):
    """Zero the kernel columns and bias of ``units`` (and the matching BN gamma/beta)."""
    lay = model.get_layer(layer)
    ws = lay.get_weights()
    ws[0][..., units] = 0
    if len(ws) > 1:
        ws[1][units] = 0
    lay.set_weights(ws)
    if bn:
        bw = model.get_layer(bn).get_weights()
        bw[0][units] = 0  # gamma
        bw[1][units] = 0  # beta
        model.get_layer(bn).set_weights(bw)


# -- load --------------------------------------------------------------------------------------
def test_import_slimkit_does_not_import_keras():
    import subprocess
    import sys

    code = "import sys, slimkit; assert 'keras' not in sys.modules, 'keras imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_subclassed_model_is_refused_with_what_is_supported():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.zeros((1, 3), dtype="float32"))
    with pytest.raises(SlimkitError, match="subclassed.*Sequential"):
        sk_keras.load(net)
    with pytest.raises(SlimkitError, match="subclassed"):
        sk_keras.prune_units(net, 0.5)


def test_unbuilt_sequential_and_bad_files(tmp_path):
    with pytest.raises(SlimkitError, match="not built"):
        sk_keras.load(keras.Sequential([L.Dense(2)]))
    with pytest.raises(ModelFileError, match="no such file"):
        sk_keras.load(tmp_path / "missing.keras")
    with pytest.raises(ModelFileError, match=r"\.keras"):
        sk_keras.load(tmp_path / "model.h5")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match="cannot load"):
        sk_keras.load(bad)


def test_load_keras_file(tmp_path, x_mnist):
    model = seeded(brief_cnn())
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = sk_keras.load(path)
    np.testing.assert_allclose(predict(loaded, x_mnist), predict(model, x_mnist), atol=1e-6)
    small, _ = sk_keras.prune_units(str(path), {"conv1": 0.5})
    assert small.get_layer("conv1").filters == 4


# -- prune_units -------------------------------------------------------------------------------
def test_prune_zero_filters_is_exact_and_input_untouched(x_mnist):
    model = seeded(brief_cnn())
    zero_units(model, "conv1", [0, 2, 5, 7])
    before_w = [w.copy() for w in model.get_weights()]
    ref = predict(model, x_mnist)
    small, record = sk_keras.prune_units(model, {"conv1": 0.5}, importance="l1")
    assert isinstance(small, keras.Sequential)
    assert small.get_layer("conv1").filters == 4
    assert small.get_layer("conv2").get_weights()[0].shape == (3, 3, 4, 8)
    assert small.count_params() < model.count_params()
    np.testing.assert_allclose(predict(small, x_mnist), ref, atol=1e-5)
    assert record.details["units"] == {"conv1": [8, 4]}
    assert sorted(record.changed) == ["conv1", "conv2"]
    for a, b in zip(model.get_weights(), before_w, strict=True):
        np.testing.assert_array_equal(a, b)


def test_flatten_dense_blocks_are_channels_last(x_mnist):
    """Pruning conv2 must drop rows c, c+C, c+2C... of fc1 (each position holds a block of C channels)."""
    model = seeded(brief_cnn())
    zero_units(model, "conv2", [1, 3, 4, 6])
    ref = predict(model, x_mnist)
    small, _ = sk_keras.prune_units(model, {"conv2": 0.5}, importance="l2")
    assert small.get_layer("fc1").get_weights()[0].shape == (5 * 5 * 4, 32)
    np.testing.assert_allclose(predict(small, x_mnist), ref, atol=1e-5)
    kept = np.array([0, 2, 5, 7])
    rows = (np.arange(25)[:, None] * 8 + kept).ravel()
    np.testing.assert_array_equal(
        small.get_layer("fc1").get_weights()[0], model.get_layer("fc1").get_weights()[0][rows]
    )


def test_residual_add_concat_bn_pruned_consistently(x_img):
    model = seeded(residual_net())
    gone = [1, 4, 6]
    zero_units(model, "stem", gone, bn="stem_bn")
    zero_units(model, "res", gone, bn="res_bn")
    side_w = model.get_layer("side").get_weights()
    model.get_layer("side").set_weights([side_w[0], np.full_like(side_w[1], 0.5)])  # no dead ReLUs
    ref = predict(model, x_img)
    small, record = sk_keras.prune_units(model, {"stem": 0.375, "side": 0.5})
    assert small.get_layer("stem").filters == small.get_layer("res").filters == 5
    assert small.get_layer("res").get_weights()[0].shape == (3, 3, 5, 5)
    assert small.get_layer("stem_bn").get_weights()[0].shape == (5,)
    assert small.get_layer("side").filters == 3
    assert small.get_layer("fc").get_weights()[0].shape == (5 * 5 * 8, 12)
    assert record.details["coupled"] == [["res", "stem"]]
    # side's pruned filters were not zero: only the residual path is exact, so compare with them zeroed
    side_kept = small.get_layer("side").get_weights()[0]
    assert side_kept.shape == (1, 1, 3, 3)
    side = model.get_layer("side").get_weights()[0]
    dropped = [c for c in range(6) if not any(np.array_equal(side[..., c], side_kept[..., k]) for k in range(3))]
    zero_units(model, "side", dropped)
    np.testing.assert_allclose(predict(small, x_img), predict(model, x_img), atol=1e-4)
    assert not np.allclose(predict(model, x_img), ref)  # the side filters did matter


def test_uniform_ratio_skips_output_and_reports(x_img):
    model = seeded(residual_net())
    small, record = sk_keras.prune_units(model, 0.5)
    assert record.skipped == {"out": "feeds the model output"}
    assert small.count_params() < model.count_params() / 2
    assert predict(small, x_img).shape == (16, 4)


def test_ratio_zero_changes_nothing(x_img):
    model = seeded(residual_net())
    same, record = sk_keras.prune_units(model, 0.0)
    assert same.count_params() == model.count_params() and record.changed == []
    np.testing.assert_allclose(predict(same, x_img), predict(model, x_img), atol=1e-6)


def test_unsliceable_consumer_is_skipped_with_reason():
    x = keras.Input((6, 6, 2))
    h = L.Conv2D(4, 3, name="conv")(x)
    h = L.Reshape((16, 4), name="reshape")(h)
    out = L.Dense(3, name="out")(L.Flatten()(h))
    model = keras.Model(x, out)
    small, record = sk_keras.prune_units(model, {"conv": 0.5})
    assert "reshape" in record.skipped["conv"] and "Reshape" in record.skipped["conv"]
    assert small.count_params() == model.count_params()


def test_bad_names_and_arguments():
    model = brief_cnn()
    with pytest.raises(SlimkitError, match="no layer named 'conv9'.*conv1"):
        sk_keras.prune_units(model, {"conv9": 0.5})
    with pytest.raises(SlimkitError, match="pool1 is a MaxPooling2D.*prunable layers: conv1"):
        sk_keras.prune_units(model, {"pool1": 0.5})
    with pytest.raises(SlimkitError, match="ratio"):
        sk_keras.prune_units(model, {"conv1": 1.0})
    with pytest.raises(SlimkitError, match="importance"):
        sk_keras.prune_units(model, 0.5, importance="taylor")
    with pytest.raises(SlimkitError, match="no layer named"):
        sk_keras.remove_layers(model, ["nope"])
    with pytest.raises(SlimkitError, match="Dense layer named 'nope'"):
        sk_keras.pca_dense(model, "nope", 4, np.zeros((8, 28, 28, 1)))


# -- save / reload / train ---------------------------------------------------------------------
def test_rebuilt_model_trains_saves_and_reloads(tmp_path, x_img):
    model = seeded(residual_net())
    small, _ = sk_keras.prune_units(model, 0.5)
    path = tmp_path / "small.keras"
    small.save(path)
    again = keras.models.load_model(path)  # plain Keras, no custom objects
    np.testing.assert_allclose(predict(again, x_img), predict(small, x_img), atol=1e-6)
    small.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    y = np.arange(16) % 4
    hist = small.fit(x_img, y, epochs=2, batch_size=8, verbose=0)
    assert np.isfinite(hist.history["loss"]).all()


# -- pca_dense ---------------------------------------------------------------------------------
def test_pca_dense_exact_when_activations_have_low_rank(x_mnist):
    """fc1's units 16..31 copy units 0..15: 16 units span everything, so the refit is exact."""
    model = seeded(brief_cnn())
    w = model.get_layer("fc1").get_weights()
    w[0][:, 16:], w[1][16:] = w[0][:, :16], w[1][:16]
    model.get_layer("fc1").set_weights(w)
    calib = np.random.default_rng(3).random((64, 28, 28, 1), dtype=np.float32)
    small, record = sk_keras.pca_dense(model, "fc1", 16, calib)
    assert small.get_layer("fc1").units == 16
    assert small.get_layer("fc2").get_weights()[0].shape == (16, 10)
    assert record.details["rel_error"] < 1e-4
    assert small.count_params() < model.count_params()
    np.testing.assert_allclose(predict(small, x_mnist), predict(model, x_mnist), atol=1e-4)


def test_pca_dense_errors():
    model = brief_cnn()
    calib = np.zeros((40, 28, 28, 1), dtype=np.float32)
    with pytest.raises(SlimkitError, match="needs a Dense"):
        sk_keras.pca_dense(model, "conv1", 4, calib)
    with pytest.raises(SlimkitError, match="model output"):
        sk_keras.pca_dense(model, "fc2", 4, calib)
    with pytest.raises(SlimkitError, match="between 1 and 31"):
        sk_keras.pca_dense(model, "fc1", 32, calib)
    with pytest.raises(SlimkitError, match="calibration samples"):
        sk_keras.pca_dense(model, "fc1", 30, calib[:10])


# -- remove_layers -----------------------------------------------------------------------------
def test_remove_pooling_repairs_dense_shapes(x_mnist):
    model = seeded(brief_cnn())
    bigger, record = sk_keras.remove_layers(model, ["pool1", "pool2"])
    assert [layer.name for layer in bigger.layers] == ["conv1", "conv2", "flatten", "fc1", "fc2"]
    assert bigger.get_layer("fc1").get_weights()[0].shape == (24 * 24 * 8, 32)
    assert "transfer" in record.details["repaired"]["fc1"]
    np.testing.assert_array_equal(bigger.get_layer("conv2").get_weights()[0], model.get_layer("conv2").get_weights()[0])
    assert predict(bigger, x_mnist).shape == (8, 10)
    init, rec2 = sk_keras.remove_layers(model, "pool2", repair="init")
    assert rec2.details["repaired"]["fc1"].startswith("re-initialised")


def test_resample_grid_preserves_constant_maps():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(5 * 5 * 3, 7))
    new = sk_keras.resample_grid(kernel, (5, 5, 3), (24, 24, 3))
    assert new.shape == (24 * 24 * 3, 7)
    feat = rng.normal(size=3)  # the same channel vector at every position
    np.testing.assert_allclose(np.tile(feat, 24 * 24) @ new, np.tile(feat, 25) @ kernel, rtol=1e-10)


def test_remove_layers_refuses_output_shape_changes_and_merges():
    model = brief_cnn()
    with pytest.raises(SlimkitError, match="output shape"):
        sk_keras.remove_layers(model, ["flatten"])
    with pytest.raises(SlimkitError, match="single-input"):
        sk_keras.remove_layers(residual_net(), ["add"])


# -- fold_batchnorm ----------------------------------------------------------------------------
def test_fold_batchnorm_exact_and_skips_reported(x_img):
    model = seeded(residual_net())
    ref = predict(model, x_img)
    folded, record = sk_keras.fold_batchnorm(model)
    assert record.details["folded"] == {"stem_bn": "stem", "res_bn": "res"}
    assert not any(isinstance(layer, L.BatchNormalization) for layer in folded.layers)
    assert folded.count_params() < model.count_params()
    np.testing.assert_allclose(predict(folded, x_img), ref, atol=1e-4)

    x = keras.Input((6, 6, 2))
    h = L.BatchNormalization(name="bn")(L.Conv2D(3, 3, activation="relu", name="conv")(x))
    _, rec = sk_keras.fold_batchnorm(keras.Model(x, L.Flatten()(h)))
    assert rec.skipped == {"bn": "conv applies relu before the BatchNormalization"}


def test_onnx_export_runs_in_slimkit(tmp_path, x_mnist):
    import torch

    import slimkit as sk

    pytest.importorskip("onnxruntime")
    small, _ = sk_keras.prune_units(seeded(brief_cnn()), {"conv1": 0.5})
    path = tmp_path / "small.onnx"
    small.export(str(path), format="onnx", verbose=False)
    onnx_model = sk.load(path)
    out = np.asarray(onnx_model(torch.from_numpy(x_mnist)))  # NHWC, as the Keras model
    np.testing.assert_allclose(out, predict(small, x_mnist), atol=1e-5)
    # slimkit's datasets are NCHW: a channels-last ONNX model takes them too (sk.evaluate works)
    nchw = np.asarray(onnx_model(torch.from_numpy(x_mnist).permute(0, 3, 1, 2)))
    np.testing.assert_allclose(nchw, out, atol=1e-6)


def test_higher_ratio_never_adds_params():
    model = residual_net()
    counts = [sk_keras.prune_units(model, r).model.count_params() for r in (0.0, 0.25, 0.5, 0.75)]
    assert counts == sorted(counts, reverse=True) and counts[0] == model.count_params() > counts[-1]


@pytest.mark.slow
def test_the_briefs_keras_workflow_end_to_end(tmp_path):
    """The brief's exact CNN on mnist5k: remove both pools, PCA Dense 1024 -> 512, prune Conv1 64 -> 32
    by l1, fine-tune with ``fit``; every step predicts, saves and reloads identically; the final
    accuracy is within 1 point of the original (figures: ``bench/keras_brief.py``)."""
    import slimkit as sk

    keras.utils.set_random_seed(0)
    data = sk.data.load("mnist5k")
    train, val, test = (
        (data.splits[s][0].numpy().transpose(0, 2, 3, 1).copy(), data.splits[s][1].numpy())
        for s in ("train", "val", "test")
    )
    model = brief_cnn(width=64, hidden=1024)  # the brief's exact model

    def fit(m, lr, epochs):
        m.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        m.fit(*train, epochs=epochs, batch_size=64, validation_data=val, verbose=0)

    def checked(step, m):
        probs = predict(m, test[0])
        path = tmp_path / f"{len(accuracies)}.keras"
        m.save(path)
        assert np.allclose(predict(keras.models.load_model(path), test[0][:64]), probs[:64], atol=1e-5), step
        accuracies[step] = float((probs.argmax(1) == test[1]).mean())
        print(f"{step}: test accuracy {100 * accuracies[step]:.2f}%")

    accuracies: dict[str, float] = {}
    fit(model, 1e-3, 5)
    checked("original", model)
    m, record = sk_keras.remove_layers(model, ["pool1", "pool2"])
    assert m.get_layer("fc1").kernel.shape == (24 * 24 * 64, 1024)  # the Dense after them repaired
    checked("pools removed", m)
    m, _ = sk_keras.pca_dense(m, "fc1", 512, train[0][:2000])
    assert m.get_layer("fc1").units == 512 and m.get_layer("fc2").kernel.shape == (512, 10)
    checked("PCA fc1 1024 -> 512", m)
    m, _ = sk_keras.prune_units(m, {"conv1": 0.5}, importance="l1")
    assert m.get_layer("conv1").filters == 32 and m.get_layer("conv2").kernel.shape[2] == 32
    checked("conv1 64 -> 32 (l1)", m)
    fit(m, 3e-4, 3)
    checked("fine-tuned", m)
    assert abs(accuracies["fine-tuned"] - accuracies["original"]) <= 0.01 + 1e-9  # 1 point: 10 of 1,000 digits
    assert model.get_layer("conv1").filters == 64  # every step returned a new model


def test_apply_dispatches_on_the_framework_and_returns_the_new_keras_model(x_img):
    import slimkit as sk
    from slimkit.compress import LowRankConfig
    from slimkit.keras.cost import count_macs
    from slimkit.prune import ChannelPruneConfig
    from slimkit.simplify import FoldConfig

    model = seeded(residual_net())
    ref = predict(model, x_img)
    weights = [w.copy() for w in model.get_weights()]
    folded = sk.apply_(model, FoldConfig())
    assert folded is not model and not any(isinstance(layer, L.BatchNormalization) for layer in folded.layers)
    np.testing.assert_allclose(predict(folded, x_img), ref, atol=1e-4)
    small = sk.apply_(folded, ChannelPruneConfig(target_macs=0.6))
    assert count_macs(small) <= 0.6 * count_macs(model)
    assert [r.transform for r in sk.records(small)] == ["keras.fold_batchnorm", "keras.prune_units"]
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights, strict=True))  # input untouched
    with pytest.raises(SlimkitError, match="LowRankConfig is not available for keras models"):
        sk.apply_(model, LowRankConfig(ratio=0.5))
    with pytest.raises(SlimkitError, match="importance 'taylor' is not available for Keras"):
        sk.apply_(model, ChannelPruneConfig(ratio=0.5, importance="taylor"))
