"""Prediction ensembles and weight soups of Keras models, as plain Keras models.

The Keras counterparts of :mod:`slimkit.fuse` (same method names and semantics):

- :func:`ensemble`: one Functional ``keras.Model`` that runs every member on its input and
  combines their class probabilities: ``mean``, ``weighted`` (weights fitted on validation data
  by log loss) or ``vote`` (majority vote, ties to the higher mean probability). It is built from
  built-in layers and ``keras.ops`` only, so it saves as ``.keras``, reloads with plain
  ``keras.models.load_model`` and exports to ONNX.
- :func:`uniform_soup`, :func:`greedy_soup`: the average of the weights of same-architecture
  models (fine-tuned from one start), with BatchNormalization statistics re-estimated after
  averaging (:func:`reestimate_bn`); greedy by validation accuracy, never below the best model.

Unlike :class:`slimkit.fuse.Ensemble`, whose output is the log of the combined probabilities
(PyTorch models output logits), a Keras ensemble outputs the combined **probabilities** (Keras
classifiers usually end in a softmax; compile it with ``from_logits=False``). Members that output
logits are detected and passed through a softmax first.

>>> import numpy as np, slimkit.keras as skk
>>> keras = skk.keras_module()
>>> def member(seed):
...     keras.utils.set_random_seed(seed)
...     return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
>>> a, b = member(0), member(1)
>>> ens, record = skk.ensemble([a, b], "mean")
>>> x = np.ones((2, 4), dtype="float32")
>>> bool(np.allclose(ens.predict(x, verbose=0), (a.predict(x, verbose=0) + b.predict(x, verbose=0)) / 2, atol=1e-6))
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from slimkit.core.errors import SlimkitError
from slimkit.core.transform import TransformRecord
from slimkit.keras._graph import Graph, keras_module, load
from slimkit.keras.data import xy
from slimkit.keras.prune import KerasResult

__all__ = [
    "METHODS",
    "check_same_architecture",
    "ensemble",
    "greedy_soup",
    "outputs_probabilities",
    "probabilities",
    "reestimate_bn",
    "uniform_soup",
]

METHODS = ("mean", "vote", "weighted")
VOTE_TIE_BREAK = 1e-3  # the share of the mean probability mixed into a vote (as in slimkit.fuse)
_SOFTMAX_KINDS = ("Softmax",)


def outputs_probabilities(model: Any) -> bool:
    """Whether ``model`` outputs class probabilities (a softmax at the end) rather than logits.

    Read from the graph when the output comes from a softmax layer or activation; otherwise a probe
    batch of zeros decides (rows that are non-negative and sum to 1 are probabilities).
    """
    keras = keras_module()
    try:
        graph = Graph(model)
        call = graph.producer.get(graph.outputs[0])
        if call is not None and isinstance(call.layer, keras.Layer):
            if call.kind in _SOFTMAX_KINDS or call.layer.get_config().get("activation") == "softmax":
                return True
    except SlimkitError:
        pass
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        return False
    probe = np.zeros((2, *shape), dtype=keras.backend.standardize_dtype(model.inputs[0].dtype))
    out = np.asarray(keras.ops.convert_to_numpy(model(probe, training=False)), dtype=np.float64)
    return bool(out.ndim == 2 and out.min() >= 0 and np.allclose(out.sum(-1), 1.0, atol=1e-4))


def probabilities(model: Any, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Class probabilities ``(N, K)`` of ``model`` on ``x`` (a softmax applied to logit outputs)."""
    out = np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float64)
    if outputs_probabilities(model):
        return out
    out = np.exp(out - out.max(-1, keepdims=True))
    return out / out.sum(-1, keepdims=True)


def _accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(-1) == np.asarray(y).reshape(-1)).mean())


def ensemble(
    members: Sequence[Any],
    method: str = "mean",
    *,
    val: Any = None,
    name: str = "ensemble",
) -> KerasResult:
    """Combine trained Keras ``members`` into one Functional model (holding copies of the members).

    ``method``: ``mean`` (average of probabilities), ``weighted`` (probability weights on the
    simplex fitted on ``val`` by log loss) or ``vote`` (majority vote; ties go to the higher mean
    probability). ``val`` is an ``(x, y)`` pair or a slimkit Dataset (its ``val`` split, laid out
    for the members); ``weighted`` needs it, the others use it to record each member's validation
    accuracy. Members must share the input and output shapes; each may be a model or a ``.keras``
    file. The result outputs probabilities.

    Example::

        ens, record = slimkit.keras.ensemble([m1, m2, m3], "weighted", val=(x_val, y_val))
        ens.save("ensemble.keras")  # plain keras.models.load_model reloads it
    """
    keras = keras_module()
    if method == "stack":
        raise SlimkitError("stacking is not available for Keras models; choose one of " + ", ".join(METHODS))
    if method not in METHODS:
        raise SlimkitError(f"unknown ensemble method {method!r}; choose one of {', '.join(METHODS)}")
    if not members:
        raise SlimkitError("an ensemble needs at least one member")
    members = [load(m) for m in members]
    for i, m in enumerate(members):
        if len(m.inputs) != 1 or len(m.outputs) != 1:
            raise SlimkitError(
                f"member {i} ({m.name}) has {len(m.inputs)} inputs and {len(m.outputs)} outputs; "
                "ensembles take single-input, single-output classifiers"
            )
    in_shapes = [tuple(m.inputs[0].shape[1:]) for m in members]
    out_shapes = [tuple(m.outputs[0].shape[1:]) for m in members]
    for i in range(1, len(members)):
        if in_shapes[i] != in_shapes[0] or out_shapes[i] != out_shapes[0]:
            raise SlimkitError(
                f"member {i} maps {in_shapes[i]} -> {out_shapes[i]} but member 0 maps {in_shapes[0]} -> "
                f"{out_shapes[0]}; ensemble members must share the input and output shapes"
            )
    if len(out_shapes[0]) != 1:
        raise SlimkitError(f"ensemble members must output class scores (batch, classes), got {out_shapes[0]}")
    num_classes = int(out_shapes[0][0])
    data = xy(val, members[0], "val", what="val")
    if method == "weighted" and data is None:
        raise SlimkitError("the 'weighted' ensemble is fitted on validation data: pass val=(x, y) or a Dataset")
    details: dict[str, Any] = {}
    m_count = len(members)
    weights = np.full(m_count, 1.0 / m_count)
    member_probs = None
    if data is not None:
        x_val, y_val = data
        member_probs = np.stack([probabilities(m, x_val) for m in members])  # (M, N, K)
        details["val_samples"] = len(y_val)
        details["member_val_accuracy"] = [_accuracy(p, y_val) for p in member_probs]
    if method == "weighted":
        import torch

        from slimkit.fuse.ensemble import fit_weights

        logits = torch.from_numpy(np.log(np.clip(member_probs, 1e-12, None)))
        weights = fit_weights(logits, torch.as_tensor(y_val, dtype=torch.long).reshape(-1)).double().numpy()

    ops, L = keras.ops, keras.layers
    x = keras.Input(shape=in_shapes[0], dtype=members[0].inputs[0].dtype, name="input")
    probs = []
    for i, m in enumerate(members):
        copy = _clone(m, prefix=f"member{i}_")
        sub = keras.Model(copy.inputs[0], copy.outputs[0], name=f"member_{i}")
        p = sub(x)
        if not outputs_probabilities(m):
            p = L.Softmax(name=f"member_{i}_softmax")(p)
        probs.append(p)
    if method == "weighted":
        parts = [ops.multiply(p, float(w)) for p, w in zip(probs, weights, strict=True)]
        mean = L.Add(name="weighted_mean")(parts) if m_count > 1 else parts[0]
    else:
        mean = L.Average(name="mean")(probs) if m_count > 1 else probs[0]
    out = mean
    if method == "vote":
        votes = [ops.one_hot(ops.argmax(p, axis=-1), num_classes) for p in probs]
        share = L.Average(name="votes")(votes) if m_count > 1 else votes[0]
        out = ops.add(ops.multiply(share, 1.0 - VOTE_TIE_BREAK), ops.multiply(mean, VOTE_TIE_BREAK))
    model = keras.Model(x, out, name=name)
    if member_probs is not None:
        combined = _combine(member_probs, weights, method)
        details["val_accuracy"] = _accuracy(combined, y_val)
    details["weights"] = [round(float(w), 6) for w in weights]
    record = TransformRecord("keras.ensemble", {"method": method, "members": m_count}, details=details)
    return KerasResult(model, record)


def _combine(member_probs: np.ndarray, weights: np.ndarray, method: str) -> np.ndarray:
    """The ensemble's probabilities from the members' ``(M, N, K)``, as the graph computes them."""
    w = weights.reshape(-1, 1, 1)
    mean = (w * member_probs).sum(0)
    if method != "vote":
        return mean
    one_hot = np.eye(member_probs.shape[-1])[member_probs.argmax(-1)]  # (M, N, K)
    return (1 - VOTE_TIE_BREAK) * one_hot.mean(0) + VOTE_TIE_BREAK * mean


# -- soups ---------------------------------------------------------------------------------------
def _named_weights(model: Any) -> list[tuple[str, Any]]:
    """``(path, variable)`` of every weight, paths without the model's own name (same across copies)."""
    prefix = model.name + "/"
    return [(v.path[len(prefix) :] if v.path.startswith(prefix) else v.path, v) for v in model.weights]


def check_same_architecture(models: Sequence[Any]) -> None:
    """Raise :class:`~slimkit.fuse.ArchitectureMismatchError` naming the first weight in which a
    model differs from the first one (name or shape); layer order is the models' own."""
    from slimkit.fuse.soup import ArchitectureMismatchError

    if len(models) < 1:
        raise SlimkitError("a soup needs at least one model")
    ref = _named_weights(models[0])
    hint = "weight averaging needs models of one architecture (fine-tuned from one start)"
    for i, model in enumerate(models[1:], start=1):
        other = _named_weights(model)
        names = {n: v for n, v in other}
        for k, (name, v) in enumerate(ref):
            if name not in names:
                raise ArchitectureMismatchError(
                    f"cannot average: model {i} has no weight {name!r} (model 0: {tuple(v.shape)}); {hint}"
                )
            got = tuple(names[name].shape)
            if got != tuple(v.shape):
                raise ArchitectureMismatchError(
                    f"cannot average: weight {name!r} is {tuple(v.shape)} in model 0 but {got} in model {i}; {hint}"
                )
            if k < len(other) and other[k][0] != name:
                raise ArchitectureMismatchError(
                    f"cannot average: weight {k} is {name!r} in model 0 but {other[k][0]!r} in model {i}; {hint}"
                )
        if len(other) > len(ref):
            extra = [n for n, _ in other if n not in {n for n, _ in ref}] or [other[len(ref)][0]]
            raise ArchitectureMismatchError(
                f"cannot average: model {i} has a weight {extra[0]!r} that model 0 lacks; {hint}"
            )


def _clone(model: Any, prefix: str = "") -> Any:
    """A copy of ``model`` with the same weights; ``prefix`` renames its layers (``member0_conv1``).

    Members of one ensemble need distinct layer names: the torch backend tracks weights by path
    (``conv1/kernel``), and equal paths would make the ensemble's ONNX export miss some weights.
    """
    keras = keras_module()

    def renamed(layer: Any) -> Any:
        cfg = layer.get_config()
        cfg["name"] = prefix + layer.name
        return layer.__class__.from_config(cfg)

    if prefix:
        with keras.name_scope(prefix.rstrip("_")):
            copy = keras.models.clone_model(model, clone_function=renamed)
    else:
        copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _average(models: Sequence[Any]) -> Any:
    """A copy of ``models[0]`` holding the mean of every floating weight (float64 sums)."""
    soup = _clone(models[0])
    states = [m.get_weights() for m in models]
    averaged = []
    for k, w0 in enumerate(states[0]):
        if np.issubdtype(w0.dtype, np.floating):
            averaged.append((sum(s[k].astype(np.float64) for s in states) / len(states)).astype(w0.dtype))
        else:  # counters and seed states are not averaged
            averaged.append(w0.copy())
    soup.set_weights(averaged)
    return soup


def _batchnorms(model: Any) -> list[Any]:
    keras = keras_module()
    return [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]


def reestimate_bn(model: Any, x: np.ndarray, *, batch_size: int = 64) -> int:
    """Recompute the moving statistics of every BatchNormalization of ``model`` (in place) on ``x``.

    The statistics are the running average of the batch statistics over ``x`` in order (PyTorch's
    ``momentum=None``), as after weight averaging; other weights are unchanged. Returns the
    number of BatchNormalization layers updated.
    """
    import torch

    bns = _batchnorms(model)
    if not bns:
        return 0
    saved = [(bn.momentum, bn.trainable) for bn in bns]
    for bn in bns:
        bn.moving_mean.assign(np.zeros(bn.moving_mean.shape, dtype="float32"))
        bn.moving_variance.assign(np.ones(bn.moving_variance.shape, dtype="float32"))
        bn.trainable = True  # Keras only updates the statistics of trainable BatchNormalization layers
    try:
        with torch.no_grad():
            for i, start in enumerate(range(0, len(x), batch_size), start=1):
                for bn in bns:
                    bn.momentum = (i - 1) / i  # running average: batch i weighs 1/i
                model(x[start : start + batch_size], training=True)
    finally:
        for bn, (momentum, trainable) in zip(bns, saved, strict=True):
            bn.momentum, bn.trainable = momentum, trainable
    return len(bns)


def _refresh_bn(soup: Any, bn_x: np.ndarray | None) -> None:
    if _batchnorms(soup):
        if bn_x is None:
            raise SlimkitError(
                "the model has BatchNormalization layers whose statistics must be re-estimated after averaging: "
                "pass bn_data (training inputs, an (x, y) pair or a slimkit Dataset)"
            )
        reestimate_bn(soup, bn_x)


def _bn_inputs(bn_data: Any, model: Any) -> np.ndarray | None:
    if bn_data is None:
        return None
    if isinstance(bn_data, np.ndarray):
        return bn_data
    pair = xy(bn_data, model, "train", what="bn_data")
    return None if pair is None else pair[0]


def uniform_soup(models: Sequence[Any], *, bn_data: Any = None) -> KerasResult:
    """The average of ``models``' weights, as a new Keras model (the inputs are unchanged).

    ``bn_data`` (training inputs: an array, an ``(x, y)`` pair or a slimkit Dataset, whose train
    split is read) is needed when the model has BatchNormalization: its statistics are re-estimated
    after averaging. Models that differ in any weight name or shape raise
    :class:`~slimkit.fuse.ArchitectureMismatchError` naming the first such weight.

    Example::

        soup, record = slimkit.keras.uniform_soup([m1, m2, m3], bn_data=x_train)
    """
    models = [load(m) for m in models]
    check_same_architecture(models)
    soup = _average(models)
    _refresh_bn(soup, _bn_inputs(bn_data, models[0]))
    record = TransformRecord(
        "keras.uniform_soup", {"models": len(models)}, details={"ingredients": list(range(len(models)))}
    )
    return KerasResult(soup, record)


def greedy_soup(models: Sequence[Any], val: Any, *, bn_data: Any = None) -> KerasResult:
    """Greedy soup: add models in order of validation accuracy, keeping each only if the soup does not get worse.

    As :func:`slimkit.fuse.greedy_soup`: the soup starts as (a copy of) the best model by
    validation accuracy; each next model is averaged in (BatchNorm statistics re-estimated on
    ``bn_data``) and kept when the soup's validation accuracy does not drop, so the result is never
    below the best single model on ``val``. ``val`` is an ``(x, y)`` pair or a slimkit Dataset
    (then its train split also serves as ``bn_data`` unless given). The record lists the order
    tried, the models kept and the validation accuracy after each step.

    Example::

        soup, record = slimkit.keras.greedy_soup(models, (x_val, y_val), bn_data=x_train)
        record.details["kept"]
    """
    models = [load(m) for m in models]
    check_same_architecture(models)
    data = xy(val, models[0], "val", what="val")
    if data is None:
        raise SlimkitError("greedy soup needs validation data: val=(x, y) or a slimkit Dataset")
    x_val, y_val = data
    if bn_data is None and not isinstance(val, tuple | list):
        bn_data = val
    bn_x = _bn_inputs(bn_data, models[0])
    scores = [_accuracy(probabilities(m, x_val), y_val) for m in models]
    order = sorted(range(len(models)), key=lambda i: -scores[i])  # stable: ties keep input order
    kept = [order[0]]
    best, best_acc = _clone(models[order[0]]), scores[order[0]]
    steps = [{"model": order[0], "val_accuracy": best_acc, "kept": True}]
    for i in order[1:]:
        candidate = _average([models[j] for j in [*kept, i]])
        _refresh_bn(candidate, bn_x)
        acc = _accuracy(probabilities(candidate, x_val), y_val)
        keep = acc >= best_acc
        steps.append({"model": i, "val_accuracy": acc, "kept": keep})
        if keep:
            kept.append(i)
            best, best_acc = candidate, acc
    details = {"order": order, "kept": kept, "member_val_accuracy": scores, "val_accuracy": best_acc, "steps": steps}
    return KerasResult(best, TransformRecord("keras.greedy_soup", {"models": len(models)}, details=details))
