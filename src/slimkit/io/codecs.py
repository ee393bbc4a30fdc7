"""Lossless compact storage for sparse and weight-shared tensors inside safetensors files.

Dense CPU kernels gain nothing from zeros or repeated values, but files do. When a tensor is
mostly zeros (unstructured or N:M pruning) or takes few distinct values (weight clustering),
:func:`encode_state` stores it in the smallest exact form:

- ``sparse``: a packed bitmask of the non-zero positions plus the non-zero values;
- ``palette``: the distinct values (at most 256) plus bit-packed indices into them.

Both decode to the identical tensor. The chosen codec and the original shape are written to the
checkpoint's ``spec.json``; the entries stay plain safetensors tensors.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from slimkit.core.errors import ModelFileError

SEP = ".__"  # encoded parts are stored as f"{name}{SEP}{part}"
MAX_PALETTE = 256


def _pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned integers < 2**bits into a uint8 array, ``bits`` bits each (big-endian)."""
    unpacked = (values[:, None] >> np.arange(bits - 1, -1, -1)) & 1  # (N, bits)
    return np.packbits(unpacked.astype(np.uint8).ravel())


def _unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    flat = np.unpackbits(packed)[: count * bits].reshape(count, bits).astype(np.int64)
    return (flat << np.arange(bits - 1, -1, -1)).sum(1)


def _sizes(t: torch.Tensor) -> dict[str, tuple[int, Any]]:
    """Bytes each codec would need for ``t`` (with what it needs to know)."""
    n, item = t.numel(), t.element_size()
    out: dict[str, tuple[int, Any]] = {"dense": (n * item, None)}
    nnz = int(torch.count_nonzero(t))
    out["sparse"] = (math.ceil(n / 8) + nnz * item, nnz)
    if torch.isfinite(t).all():
        values = torch.unique(t)
        if len(values) <= MAX_PALETTE:
            bits = max(1, math.ceil(math.log2(len(values))))
            out["palette"] = (len(values) * item + math.ceil(n * bits / 8), (values, bits))
    return out


def encode_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """Encode each floating-point tensor in its smallest exact form; returns tensors and encodings."""
    tensors: dict[str, torch.Tensor] = {}
    encodings: dict[str, dict[str, Any]] = {}
    for name, t in state.items():
        if not t.is_floating_point() or t.numel() < 64:
            tensors[name] = t
            continue
        sizes = _sizes(t)
        codec = min(sizes, key=lambda k: sizes[k][0])
        if sizes[codec][0] > 0.9 * sizes["dense"][0]:  # not worth an encoding
            codec = "dense"
        flat = t.reshape(-1)
        meta = {"codec": codec, "shape": list(t.shape)}
        if codec == "dense":
            tensors[name] = t
            continue
        if codec == "sparse":
            mask = (flat != 0).numpy()
            tensors[f"{name}{SEP}mask"] = torch.from_numpy(np.packbits(mask))
            tensors[f"{name}{SEP}values"] = flat[torch.from_numpy(mask)].clone()
        else:
            values, bits = sizes["palette"][1]
            index = torch.searchsorted(values, flat).numpy()
            tensors[f"{name}{SEP}palette"] = values
            tensors[f"{name}{SEP}index"] = torch.from_numpy(_pack_bits(index, bits))
            meta["bits"] = bits
        encodings[name] = meta
    return tensors, encodings


def decode_state(tensors: dict[str, torch.Tensor], encodings: dict[str, dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Invert :func:`encode_state`."""
    state = {k: v for k, v in tensors.items() if SEP not in k}
    for name, meta in encodings.items():
        try:
            shape, n = meta["shape"], math.prod(meta["shape"])
            if meta["codec"] == "sparse":
                mask = np.unpackbits(tensors[f"{name}{SEP}mask"].numpy())[:n].astype(bool)
                values = tensors[f"{name}{SEP}values"]
                flat = torch.zeros(n, dtype=values.dtype)
                flat[torch.from_numpy(mask)] = values
            elif meta["codec"] == "palette":
                palette = tensors[f"{name}{SEP}palette"]
                index = _unpack_bits(tensors[f"{name}{SEP}index"].numpy(), meta["bits"], n)
                flat = palette[torch.from_numpy(index)]
            else:
                raise ModelFileError(f"unknown codec {meta['codec']!r}")
            state[name] = flat.reshape(shape)
        except (KeyError, RuntimeError, ValueError, IndexError) as exc:
            raise ModelFileError(f"encoded tensor {name!r} is damaged ({type(exc).__name__}: {exc})") from None
    return state
