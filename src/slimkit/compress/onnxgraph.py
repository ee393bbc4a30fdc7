"""Reading an ONNX graph: multiply-accumulates per operator kind and the quantizable nodes.

Used by :mod:`slimkit.compress.quantize` to choose static or dynamic int8 and to list the nodes
whose quantization can be undone one by one. Needs the ``onnx`` extra (imported lazily).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core.optional import require

CONV_OPS = ("Conv", "ConvTranspose")
DENSE_OPS = ("MatMul", "Gemm")
RNN_OPS = ("LSTM", "GRU", "RNN")
QUANTIZABLE = (*CONV_OPS, *DENSE_OPS, *RNN_OPS, "Gather", "Attention")


def _shapes(model: Any) -> dict[str, list[int | None]]:
    onnx = require("onnx", extra="onnx")
    out: dict[str, list[int | None]] = {}
    g = model.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for t in g.initializer:
        out[t.name] = list(t.dims)
    del onnx
    return out


def mac_shares(path: Path, example: Any) -> dict[str, int]:
    """MACs of one sample by kind (``conv``, ``dense``, ``rnn``) from ONNX shape inference.

    The graph inputs are fixed to ``example``'s shapes with batch 1 so that every shape is concrete
    (``example``: one tensor, a tuple in the graph's input order, or a dict by input name).
    """
    onnx = require("onnx", extra="onnx")
    model = onnx.load(str(path))
    inputs = model.graph.input
    if isinstance(example, dict):
        shapes = {i.name: example[i.name].shape for i in inputs if i.name in example}
    else:
        tensors = example if isinstance(example, tuple | list) else (example,)
        shapes = {i.name: t.shape for i, t in zip(inputs, tensors, strict=False)}
    for graph_input in inputs:
        if graph_input.name in shapes:
            dims = graph_input.type.tensor_type.shape.dim
            for d, v in zip(dims, [1, *shapes[graph_input.name][1:]], strict=False):
                d.ClearField("dim_param")
                d.dim_value = int(v)
    model = onnx.shape_inference.infer_shapes(model)
    shapes = _shapes(model)
    macs = {"conv": 0, "dense": 0, "rnn": 0}

    def known(name: str) -> list[int] | None:
        s = shapes.get(name)
        return s if s is not None and all(v is not None for v in s) else None  # type: ignore[return-value]

    for node in model.graph.node:
        out = known(node.output[0]) if node.output else None
        w = known(node.input[1]) if len(node.input) > 1 else None
        if out is None or w is None:
            continue
        if node.op_type in CONV_OPS:
            macs["conv"] += math.prod(out) * math.prod(w[1:])  # out elements x (C/groups * kh * kw)
        elif node.op_type in DENSE_OPS:
            k = w[0] if node.op_type == "MatMul" or not _transposed_b(node) else w[1]
            macs["dense"] += math.prod(out) * k
        elif node.op_type in RNN_OPS:
            r = known(node.input[2])
            x = known(node.input[0])
            if r is not None and x is not None:  # W (dirs, G*H, I), R (dirs, G*H, H), X (T, B, I)
                macs["rnn"] += x[0] * x[1] * w[0] * w[1] * (w[2] + r[2])
    return macs


def _transposed_b(node: Any) -> bool:
    return any(a.name == "transB" and a.i == 1 for a in node.attribute)


def quantizable_nodes(path: Path) -> list[tuple[str, str]]:
    """``(name, op_type)`` of the nodes int8 quantization would touch that carry a weight."""
    onnx = require("onnx", extra="onnx")
    model = onnx.load(str(path))
    weights = {t.name for t in model.graph.initializer}
    return [
        (n.name, n.op_type) for n in model.graph.node if n.op_type in QUANTIZABLE and any(i in weights for i in n.input)
    ]


def has_attention(path: Path) -> bool:
    """Whether the graph computes attention: a Softmax whose output a MatMul reads within three
    element-wise steps (PyTorch's exporter puts a NaN guard between them), or an Attention op."""
    onnx = require("onnx", extra="onnx")
    nodes = onnx.load(str(path), load_external_data=False).graph.node
    if any(n.op_type == "Attention" for n in nodes):
        return True
    reached = {o for n in nodes if n.op_type == "Softmax" for o in n.output}
    for _ in range(4):
        readers = [n for n in nodes if reached & set(n.input)]
        if any(n.op_type == "MatMul" for n in readers):
            return True
        reached = {o for n in readers for o in n.output}
    return False


def pad_conv_inputs(path: Path, out: Path, channels: int = 4) -> dict[str, str]:
    """Write ``path`` to ``out`` with the input of every convolution that reads fewer than
    ``channels`` channels zero-padded to ``channels`` (and zero weights added for them): exact, and
    ONNX Runtime's int8 convolution kernels run a 1-channel layer (e.g. a grayscale image's first
    conv: 9-term dot products) about 3x slower than a 4-channel one. Returns ``{conv: its Pad node}``."""
    onnx = require("onnx", extra="onnx")
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    padded = {}
    for node in list(graph.node):
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = inits.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if weight is None or group != 1 or uses[weight.name] != 1 or weight.dims[1] >= channels:
            continue
        w = numpy_helper.to_array(weight)
        extra = channels - w.shape[1]
        weight.CopyFrom(
            numpy_helper.from_array(np.concatenate([w, np.zeros_like(w[:, :1]).repeat(extra, 1)], 1), weight.name)
        )
        pads = [0] * (2 * w.ndim)
        pads[w.ndim + 1] = extra  # at the end of the channel axis
        pads_name, wide = f"{node.name}_channel_pads", f"{node.input[0]}_to_{channels}_channels"
        graph.initializer.append(numpy_helper.from_array(np.array(pads, dtype=np.int64), pads_name))
        position = list(graph.node).index(node)
        graph.node.insert(
            position, helper.make_node("Pad", [node.input[0], pads_name], [wide], name=f"{node.name}_pad")
        )
        node.input[0] = wide
        padded[node.name] = f"{node.name}_pad"
    onnx.save(model, str(out))
    return padded


def gemm_to_matmul(path: Path, out: Path) -> int:
    """Write ``path`` to ``out`` with every ``Gemm`` that multiplies by a weight (``alpha = beta = 1``,
    ``A`` not transposed) as ``MatMul`` (+ ``Add`` of its bias): the same function, in the form
    weight-only block quantization (``MatMulNBits``) reads. PyTorch exports ``nn.Linear`` on 2-D
    inputs as ``Gemm``. Returns how many nodes were rewritten (``out`` is written either way)."""
    onnx = require("onnx", extra="onnx")
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = inits.get(node.input[1]) if node.op_type == "Gemm" else None
        if weight is None or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA"):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight)
        name = f"{weight.name}_kn"  # (in, out) as MatMul reads it
        if name not in inits:
            inits[name] = numpy_helper.from_array(np.ascontiguousarray(w.T if attrs.get("transB") else w), name)
            graph.initializer.append(inits[name])
        product = f"{node.output[0]}_matmul" if len(node.input) > 2 else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [product], name=node.name))
        if len(node.input) > 2:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(out))
    return rewritten
