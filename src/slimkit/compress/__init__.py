"""Compression: low-rank factorization (SVD, activation PCA), int8 quantization, weight sharing.

- :class:`LowRankConfig`, :class:`ClusterConfig`, :class:`EmbeddingQuantConfig` (row-wise
  int8/int4 embedding tables) and :class:`EmbeddingBucketConfig` (rare ids share one row) are
  in-place transforms: ``sk.apply_(model, cfg, example_inputs=x)``.
- :func:`quantize` writes an int8 ONNX file with ONNX Runtime (static QDQ or dynamic) and returns
  a :class:`QuantizeResult`; :func:`quantize_dynamic_torch` gives a PyTorch dynamic-int8 copy.
- :func:`fake_quantized` (quantization-aware training around any training loop) and
  :class:`QATConfig` (its optimize-loop step).

onnx and onnxruntime are imported only when quantizing.
"""

from __future__ import annotations

from slimkit.compress.cluster import ClusterConfig, tied
from slimkit.compress.embedding import (
    BucketedEmbedding,
    EmbeddingBucketConfig,
    EmbeddingQuantConfig,
    FactorizedEmbedding,
    QuantizedEmbedding,
    embedding_bytes,
)
from slimkit.compress.lowrank import LowRankConfig
from slimkit.compress.qat import QATConfig, fake_quantized
from slimkit.compress.quantize import QuantizeConfig, QuantizeResult, quantize, quantize_dynamic_torch

__all__ = [
    "ClusterConfig",
    "BucketedEmbedding",
    "EmbeddingBucketConfig",
    "EmbeddingQuantConfig",
    "FactorizedEmbedding",
    "QuantizedEmbedding",
    "embedding_bytes",
    "LowRankConfig",
    "tied",
    "QATConfig",
    "fake_quantized",
    "QuantizeConfig",
    "QuantizeResult",
    "quantize",
    "quantize_dynamic_torch",
]
