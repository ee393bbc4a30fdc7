"""Read a Sequential / Functional Keras model as a list of layer calls, and rebuild it natively.

Every transform in :mod:`slimkit.keras` works the same way: :class:`Graph` lists the layer calls
of the model in execution order (which tensor goes in, which comes out, their static shapes);
the transform decides new layer configs and weights; :func:`rebuild` creates fresh layers from
those configs (``layer.__class__.from_config``), wires them exactly like the original graph
(minus removed layers) and sets the weights. The input model is never modified, and the result
is an ordinary Keras model: it trains with ``compile``/``fit``, saves as ``.keras`` and reloads
without custom objects.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from slimkit.core.errors import SlimkitError
from slimkit.core.optional import require

SUPPORTED = "keras.Sequential and functional keras.Model(inputs, outputs) models"


def keras_module() -> ModuleType:
    """Import keras, choosing the torch backend unless ``KERAS_BACKEND`` is already set."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return require("keras", extra="keras")


def _functional_cls() -> type:
    keras_module()
    from keras.src.models.functional import Functional

    return Functional


def check_supported(model: Any) -> None:
    """Raise a :class:`SlimkitError` unless ``model`` is a built Sequential or Functional model."""
    keras = keras_module()
    if not isinstance(model, keras.Model):
        raise SlimkitError(f"expected a keras.Model or a .keras file, got {type(model).__name__}")
    if type(model) not in (keras.Sequential, _functional_cls()):
        raise SlimkitError(
            f"{type(model).__name__} is a subclassed keras.Model, whose graph slimkit cannot read; "
            f"supported: {SUPPORTED} (rewrite the model with the functional API)"
        )
    if isinstance(model, keras.Sequential) and getattr(model, "_functional", None) is None:
        raise SlimkitError(
            f"Sequential model {model.name!r} is not built: start it with keras.Input(shape=...) "
            "or call it on a batch once"
        )


def load(path_or_model: str | Path | Any) -> Any:
    """A Keras model from a ``.keras`` file (safe mode: no arbitrary code) or an in-memory model.

    Only Sequential and Functional models are accepted; a subclassed model raises a
    :class:`SlimkitError` that names what is supported.
    """
    if isinstance(path_or_model, str | Path):
        from slimkit.keras.files import load_file  # lazy: files imports this module

        model = load_file(path_or_model)
    else:
        model = path_or_model
    check_supported(model)
    return model


@dataclasses.dataclass
class Call:
    """One layer call of the graph: ``outputs = layer(inputs)``, tensors named by id."""

    layer: Any
    inputs: list[int]  # ids of the input KerasTensors, flattened in argument order
    outputs: list[int]

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def kind(self) -> str:
        return type(self.layer).__name__


class Graph:
    """The layer calls of a Sequential / Functional model in execution order, with tensor shapes."""

    def __init__(self, model: Any) -> None:
        check_supported(model)
        keras = keras_module()
        self.model = model
        self.sequential = isinstance(model, keras.Sequential)
        self.functional = model._functional if self.sequential else model
        self.calls: list[Call] = []
        self.shapes: dict[int, tuple] = {}
        self.tensors: dict[int, Any] = {}  # id -> KerasTensor of the original graph
        self.producer: dict[int, Call] = {}
        self.consumers: dict[int, list[Call]] = {}
        for t in self.functional.inputs:
            self.shapes[id(t)] = tuple(t.shape)
            self.tensors[id(t)] = t
        by_depth = self.functional._nodes_by_depth
        for depth in sorted(by_depth, reverse=True):
            for node in by_depth[depth]:
                if not node.operation or node.is_input:
                    continue
                call = Call(node.operation, [id(t) for t in node.input_tensors], [id(t) for t in node.outputs])
                for t in node.outputs:
                    self.shapes[id(t)] = tuple(t.shape)
                    self.tensors[id(t)] = t
                    self.producer[id(t)] = call
                for t in call.inputs:
                    self.consumers.setdefault(t, []).append(call)
                self.calls.append(call)
        self.inputs = [id(t) for t in self.functional.inputs]
        self.outputs = [id(t) for t in self.functional.outputs]
        counts: dict[int, int] = {}
        for c in self.calls:
            counts[id(c.layer)] = counts.get(id(c.layer), 0) + 1
        self.shared = {c.name for c in self.calls if counts[id(c.layer)] > 1}
        self.by_name = {c.name: c for c in self.calls}

    def names(self) -> list[str]:
        return [c.name for c in self.calls]

    def get(self, name: str, what: str = "layer") -> Call:
        """The call of the layer ``name``; a clear error listing the layers for a bad name."""
        if name not in self.by_name:
            raise SlimkitError(
                f"no {what} named {name!r} in model {self.model.name!r}; layers: {', '.join(self.names())}"
            )
        return self.by_name[name]

    def input_shape(self, call: Call) -> tuple:
        return self.shapes[call.inputs[0]]


def weights_of(layer: Any) -> list[np.ndarray]:
    return [np.asarray(w) for w in layer.get_weights()]


Repair = Callable[[Any, Any, list[np.ndarray]], "list[np.ndarray] | None"]


def rebuild(
    graph: Graph,
    *,
    remove: frozenset[str] | set[str] = frozenset(),
    configs: dict[str, dict] | None = None,
    weights: dict[str, list[np.ndarray]] | None = None,
    repair: Repair | None = None,
) -> Any:
    """A new model with fresh layers: ``configs``/``weights`` override those of the named layers.

    ``remove`` names single-input layers to drop (their output is replaced by their input). A
    layer whose copied weights no longer fit (its input changed shape) goes to ``repair(old, new,
    old_weights)``, which returns the weights to set or None to keep the fresh initialisation;
    without ``repair`` that is an error (a bug in the calling transform).
    """
    keras = keras_module()
    configs, weights = configs or {}, weights or {}
    fresh: dict[int, Any] = {}

    def new_layer(layer: Any) -> Any:
        if id(layer) not in fresh:
            if isinstance(layer, keras.Layer):
                cfg = configs.get(layer.name, layer.get_config())
                fresh[id(layer)] = layer.__class__.from_config(cfg)
            else:  # a stateless keras.ops operation recorded in a functional graph
                fresh[id(layer)] = layer
        return fresh[id(layer)]

    def identity(x: Any, *args: Any, **kwargs: Any) -> Any:
        return x

    def op_fn(op: Any) -> Any:
        return identity if getattr(op, "name", None) in remove else new_layer(op)

    old_inputs = graph.functional.inputs
    new_inputs = [
        keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype, name=t._keras_history[0].name) for t in old_inputs
    ]
    if graph.sequential:
        layers = [new_layer(layer) for layer in graph.model.layers if layer.name not in remove]
        model = keras.Sequential([new_inputs[0], *layers], name=graph.model.name)
    else:
        structured = keras.tree.pack_sequence_as(graph.functional._inputs_struct, new_inputs)
        outputs = graph.functional._run_through_graph(structured, operation_fn=op_fn)
        model = keras.Model(structured, outputs, name=graph.model.name)
    for call in graph.calls:
        old = call.layer
        if old.name in remove or not isinstance(old, keras.Layer) or id(old) not in fresh:
            continue
        new = fresh[id(old)]
        w = weights.get(old.name)
        if w is None:
            w = weights_of(old)
        if [tuple(v.shape) for v in new.weights] == [tuple(np.shape(v)) for v in w]:
            new.set_weights(w)
        elif repair is not None:
            fixed = repair(old, new, w)
            if fixed is not None:
                new.set_weights(fixed)
        else:
            have = [tuple(v.shape) for v in new.weights]
            raise SlimkitError(f"internal error: weights of {old.name} {[np.shape(v) for v in w]} do not fit {have}")
    _call_once(model, new_inputs)
    return model


def _call_once(model: Any, inputs: list[Any]) -> None:
    """Run one tiny batch through the model: Keras' ONNX export refuses models never called."""
    keras = keras_module()
    if any(None in tuple(t.shape)[1:] for t in inputs):
        return
    batch = [np.zeros((1, *tuple(t.shape)[1:]), dtype=keras.backend.standardize_dtype(t.dtype)) for t in inputs]
    model(batch[0] if len(batch) == 1 else keras.tree.pack_sequence_as(model._inputs_struct, batch), training=False)
