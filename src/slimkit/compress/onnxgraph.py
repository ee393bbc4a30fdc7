"""Reading an ONNX graph: multiply-accumulates per operator kind and the quantizable nodes.

Used by :mod:`slimkit.compress.quantize` to choose static or dynamic int8 and to list the nodes
whose quantization can be undone one by one. Needs the ``onnx`` extra (imported lazily).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

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


def mac_shares(path: Path, example: torch.Tensor) -> dict[str, int]:
    """MACs of one sample by kind (``conv``, ``dense``, ``rnn``) from ONNX shape inference.

    The graph input is fixed to ``example``'s shape with batch 1 so that every shape is concrete.
    """
    onnx = require("onnx", extra="onnx")
    model = onnx.load(str(path))
    shape = [1, *example.shape[1:]]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, shape, strict=False):
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
