"""slimkit.keras ensembles, weight soups and distillation (KERAS_BACKEND=torch)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from slimkit.core.errors import SlimkitError
from slimkit.train import DistillConfig

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
skk = pytest.importorskip("slimkit.keras")
L = keras.layers

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def net(seed: int, *, bn: bool = False, width: int = 4, logits: bool = False, name: str = "net"):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((8, 8, 1)), L.Conv2D(width, 3, name="c")]
    if bn:
        layers.append(L.BatchNormalization(name="bn"))
    layers += [L.ReLU(name="r"), L.Flatten(name="f"), L.Dense(3, activation=None if logits else "softmax", name="o")]
    return keras.Sequential(layers, name=name)


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(0)
    x = rng.random((96, 8, 8, 1), dtype=np.float32)
    y = (x[:, :4].mean((1, 2, 3)) * 6).astype(int) % 3  # learnable labels
    return x, y


def predict(model, x):
    return np.asarray(model.predict(x, verbose=0, batch_size=len(x)))


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# -- ensembles ---------------------------------------------------------------------------------
def test_ensemble_mean_is_mean_of_member_probabilities(xy):
    x, y = xy
    members = [net(0), net(1), net(2, logits=True)]  # a logit member is softmaxed first
    ens, record = skk.ensemble(members, "mean", val=(x, y))
    probs = [predict(members[0], x), predict(members[1], x), softmax(predict(members[2], x))]
    np.testing.assert_allclose(predict(ens, x), np.mean(probs, 0), atol=1e-6)
    assert record.details["weights"] == [pytest.approx(1 / 3, abs=1e-6)] * 3
    assert record.details["val_accuracy"] == pytest.approx(float((np.mean(probs, 0).argmax(1) == y).mean()))


def test_ensemble_vote_and_weighted(xy):
    x, y = xy
    members = [net(i) for i in range(3)]
    vote, _ = skk.ensemble(members, "vote")
    out = predict(vote, x)
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-5)
    votes = np.stack([predict(m, x).argmax(1) for m in members])  # (M, N)
    counts = np.stack([(votes == k).sum(0) for k in range(3)], 1)  # (N, K)
    assert (counts[np.arange(len(x)), out.argmax(1)] == counts.max(1)).all()  # the winner has the most votes
    weighted, record = skk.ensemble(members, "weighted", val=(x, y))
    w = np.array(record.details["weights"])
    assert w.sum() == pytest.approx(1.0, abs=1e-5) and (w >= 0).all()
    expected = sum(wi * predict(m, x) for wi, m in zip(w, members, strict=True))
    np.testing.assert_allclose(predict(weighted, x), expected, atol=1e-4)


def test_ensemble_errors(xy):
    members = [net(0), net(1)]
    with pytest.raises(SlimkitError, match="'weighted' ensemble is fitted on validation data"):
        skk.ensemble(members, "weighted")
    with pytest.raises(SlimkitError, match="stacking is not available for Keras.*mean, vote, weighted"):
        skk.ensemble(members, "stack")
    with pytest.raises(SlimkitError, match="unknown ensemble method"):
        skk.ensemble(members, "median")
    wide = keras.Sequential([keras.Input((8, 8, 1)), L.Flatten(), L.Dense(4, activation="softmax")])
    with pytest.raises(SlimkitError, match="member 1 maps .* must share the input and output shapes"):
        skk.ensemble([members[0], wide])

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(3)

        def call(self, x):
            return self.d(x)

    sub = Sub()
    sub(np.zeros((1, 8, 8, 1), dtype="float32"))
    with pytest.raises(SlimkitError, match="subclassed"):
        skk.ensemble([members[0], sub])


@pytest.mark.parametrize("method", ["mean", "vote"])
def test_ensemble_saves_reloads_and_exports(tmp_path, xy, method):
    import torch

    import slimkit as sk

    pytest.importorskip("onnxruntime")
    x, _ = xy
    ens, _ = skk.ensemble([net(0), net(1, bn=True)], method)
    ref = predict(ens, x)
    skk.save(ens, tmp_path / "ens.keras")
    again = keras.models.load_model(tmp_path / "ens.keras")  # plain Keras, no custom objects
    np.testing.assert_allclose(predict(again, x), ref, atol=1e-6)
    skk.export_onnx(again, tmp_path / "ens.onnx")
    onnx = sk.load(tmp_path / "ens.onnx")
    np.testing.assert_allclose(np.asarray(onnx(torch.from_numpy(x))), ref, atol=1e-5)


# -- soups -------------------------------------------------------------------------------------
def test_uniform_soup_of_identical_models_is_that_model(xy):
    x, _ = xy
    model = net(0)
    soup, record = skk.uniform_soup([model, net(0), net(0)])
    np.testing.assert_allclose(predict(soup, x), predict(model, x), atol=1e-6)
    assert record.details["ingredients"] == [0, 1, 2] and soup is not model
    # with BatchNorm: the soup equals the model with its statistics re-estimated on the same data
    bn_model = net(0, bn=True)
    bn_soup, _ = skk.uniform_soup([bn_model, net(0, bn=True)], bn_data=x)
    skk.reestimate_bn(bn_model, x)
    np.testing.assert_allclose(predict(bn_soup, x), predict(bn_model, x), atol=1e-5)


def test_uniform_soup_averages_weights():
    a, b = net(0), net(1)
    soup, _ = skk.uniform_soup([a, b])
    for ws, wa, wb in zip(soup.get_weights(), a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(ws, (wa + wb) / 2, atol=1e-7)


def test_reestimate_bn_gives_the_data_statistics(xy):
    x, _ = xy
    model = net(3, bn=True)
    skk.reestimate_bn(model, x, batch_size=len(x))  # one batch: the statistics of x itself
    conv = keras.Model(model.inputs[0], model.get_layer("c").output)
    h = predict(conv, x).reshape(-1, 4)
    np.testing.assert_allclose(model.get_layer("bn").moving_mean.numpy(), h.mean(0), atol=1e-5)
    np.testing.assert_allclose(model.get_layer("bn").moving_variance.numpy(), h.var(0), rtol=1e-4)
    assert model.get_layer("bn").momentum == 0.99  # restored


def test_greedy_soup_never_below_best_on_validation(xy):
    x, y = xy
    models = [net(i, bn=True) for i in range(4)]
    soup, record = skk.greedy_soup(models, (x, y), bn_data=x)
    d = record.details
    assert d["val_accuracy"] >= max(d["member_val_accuracy"])
    assert d["kept"][0] == d["order"][0] == int(np.argmax(d["member_val_accuracy"]))
    acc = float((predict(soup, x).argmax(1) == y).mean())
    assert acc == pytest.approx(d["val_accuracy"])


def test_soup_mismatch_and_bn_errors(xy):
    from slimkit.fuse import ArchitectureMismatchError

    with pytest.raises(
        ArchitectureMismatchError,
        match=r"weight 'c/kernel' is \(3, 3, 1, 4\) in model 0 but "
        r"\(3, 3, 1, 5\) in model 1",
    ):
        skk.uniform_soup([net(0), net(1, width=5)])
    with pytest.raises(ArchitectureMismatchError, match="model 1 has no weight 'bn/gamma'"):
        skk.uniform_soup([net(0, bn=True), net(1)])
    with pytest.raises(SlimkitError, match="BatchNormalization.*bn_data"):
        skk.uniform_soup([net(0, bn=True), net(1, bn=True)])


# -- distillation ------------------------------------------------------------------------------
def test_distiller_trains_the_student_with_your_own_fit(tmp_path, xy):
    x, y = xy
    teacher, _ = skk.ensemble([net(0), net(1)], "mean")
    student = net(5, logits=True, width=2)

    def gap():
        t, s = predict(teacher, x), softmax(predict(student, x))
        return float(np.sum(t * (np.log(t + 1e-12) - np.log(s + 1e-12)), 1).mean())

    before, t_weights = gap(), [w.copy() for w in teacher.get_weights()]
    d = skk.distiller(student, teacher, DistillConfig(temperature=2.0, alpha=1.0))
    d.compile(optimizer=keras.optimizers.Adam(1e-2), metrics=["accuracy"])
    hist = d.fit(x, y, epochs=15, batch_size=32, verbose=0)
    assert np.isfinite(hist.history["loss"]).all() and hist.history["loss"][-1] < hist.history["loss"][0]
    assert gap() < 0.5 * before  # the student moved towards the teacher
    for a, b in zip(teacher.get_weights(), t_weights, strict=True):
        np.testing.assert_array_equal(a, b)  # the teacher is not trained
    skk.save(student, tmp_path / "student.keras")
    again = keras.models.load_model(tmp_path / "student.keras")
    np.testing.assert_allclose(predict(again, x), predict(student, x), atol=1e-6)


def test_distill_returns_the_student_and_a_record(xy):
    x, y = xy
    student = net(7)
    same, record = skk.distill(student, net(0), (x, y), val=(x, y), epochs=2, lr=1e-2)
    assert same is student
    d = record.details
    assert set(d) >= {"teacher_val_accuracy", "start_val_accuracy", "val_accuracy"}
    assert d["val_accuracy"] >= d["start_val_accuracy"]  # the best validation epoch is kept
    with pytest.raises(SlimkitError, match="needs val"):
        skk.distill(student, net(0), (x, y))
    with pytest.raises(SlimkitError, match="outputs .* but the teacher"):
        skk.distiller(student, keras.Sequential([keras.Input((8, 8, 1)), L.Flatten(), L.Dense(4)]))
