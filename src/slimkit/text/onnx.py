"""Sentence encoders as ONNX: export (tokens -> pooled, normalized embedding), dynamic int8, run.

Dynamic int8 (weights int8 per output channel, activations quantized per batch) suits BERT's
Linear-heavy graph; on all-MiniLM-L6-v2 per-channel scales kept a mean cosine of 0.992 to the
original where ONNX Runtime's per-tensor default gave 0.962 and static QDQ 0.35.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.core.errors import ModelFileError, SlimkitError, first_line
from slimkit.core.files import atomic_path, check_output
from slimkit.core.optional import quiet, require
from slimkit.io.onnx import open_session
from slimkit.text.hf import encoder_of

__all__ = ["OnnxEncoder", "PooledEncoder", "TorchEncoder", "export_onnx", "quantize_onnx", "tokenize"]


def tokenize(tokenizer: Any, sentences: Sequence[str], max_length: int = 128, pad_to: int | None = None) -> dict:
    """``input_ids`` / ``attention_mask`` int64 tensors for ``sentences`` (padded to the longest or ``pad_to``)."""
    enc = tokenizer(
        list(sentences),
        padding="max_length" if pad_to else True,
        truncation=True,
        max_length=pad_to or max_length,
        return_tensors="pt",
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``hidden`` (B, T, D) over the real tokens of ``attention_mask`` (B, T): (B, D)."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


POOLINGS = ("mean", "cls")


class PooledEncoder(nn.Module):
    """``(input_ids, attention_mask) -> embedding``: the encoder, pooling, optional L2 norm.

    ``pooling``: ``"mean"`` over the real tokens (all-MiniLM-L6-v2, all-mpnet-base-v2 and most
    sentence-transformers models) or ``"cls"``, the first token's state (BGE, for example).
    :meth:`of` checks a ``SentenceTransformer`` really is such a pipeline.
    """

    def __init__(self, encoder: nn.Module, normalize: bool = True, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise SlimkitError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.encoder, self.normalize, self.pooling = encoder, normalize, pooling

    @classmethod
    def of(cls, model: nn.Module) -> PooledEncoder:
        """Wrap a ``SentenceTransformer`` (Transformer, mean or CLS Pooling, optional Normalize), an HF
        encoder (mean pooling) or another :class:`PooledEncoder` (a new wrapper around the same encoder)."""
        if isinstance(model, PooledEncoder):
            return cls(model.encoder, normalize=model.normalize, pooling=model.pooling)
        if hasattr(model, "tokenizer") and hasattr(model, "__getitem__"):
            kinds = [type(m).__name__ for m in model]
            pooling = getattr(model[1], "pooling_mode", None) if len(kinds) > 1 else None
            if (
                kinds[:2] != ["Transformer", "Pooling"]
                or kinds[2:] not in ([], ["Normalize"])
                or pooling not in POOLINGS
            ):
                raise SlimkitError(
                    f"only Transformer -> mean or CLS Pooling [-> Normalize] pipelines are supported, got {kinds}"
                    + (f" with {pooling} pooling" if pooling and pooling not in POOLINGS else "")
                )
            return cls(encoder_of(model), normalize=kinds[2:] == ["Normalize"], pooling=pooling)
        return cls(encoder_of(model))

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The sentence embedding (B, D) of token states ``hidden`` (B, T, D), before normalization."""
        return hidden[:, 0] if self.pooling == "cls" else mean_pool(hidden, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, D)
        e = self.pool(h, attention_mask)  # (B, D)
        return nn.functional.normalize(e, dim=-1) if self.normalize else e


class TorchEncoder:
    """``sentences -> (n, d)`` embeddings in PyTorch (for :func:`slimkit.evaluate.fidelity`)."""

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int = 128) -> None:
        self.module = model if isinstance(model, PooledEncoder) else PooledEncoder.of(model)
        self.tokenizer, self.max_length = tokenizer, max_length

    @torch.no_grad()
    def __call__(self, sentences: Sequence[str]) -> torch.Tensor:
        self.module.eval()
        return self.module(**tokenize(self.tokenizer, sentences, self.max_length))


def export_onnx(model: nn.Module, path: str | os.PathLike[str], tokenizer: Any, *, force: bool = False) -> Path:
    """Export ``model`` (``SentenceTransformer`` or HF encoder) to one ONNX file, batch and length dynamic.

    Inputs ``input_ids`` and ``attention_mask`` (int64), output ``sentence_embedding``.
    """
    require("onnxscript", extra="onnx")
    from torch.export import Dim

    from slimkit.io.onnx import quiet, strip_debug_info

    module = PooledEncoder.of(model).eval()
    x = tokenize(tokenizer, ["An example sentence to trace.", "A second, longer example sentence to trace it."])
    batch, seq = Dim("batch"), Dim("seq")
    dynamic = ({0: batch, 1: seq}, {0: batch, 1: seq})
    with atomic_path(path, force=force) as tmp, quiet():
        try:
            torch.onnx.export(
                module,
                (x["input_ids"], x["attention_mask"]),
                str(tmp),
                dynamo=True,
                external_data=False,
                dynamic_shapes=dynamic,
                input_names=["input_ids", "attention_mask"],
                output_names=["sentence_embedding"],
            )
        except Exception as exc:  # the exporter raises many types; name the model and the cause
            raise SlimkitError(f"ONNX export failed: {first_line(exc)}") from exc
        strip_debug_info(tmp)
    return Path(path)


def quantize_onnx(
    source: str | os.PathLike[str], output: str | os.PathLike[str], *, per_channel: bool = True, force: bool = False
) -> Path:
    """Dynamic int8 copy of an fp32 ONNX encoder: int8 weights (per output channel by default).

    ``output`` is written atomically. ONNX Runtime's ``quant_pre_process`` is not run: its
    symbolic shape inference fails on the exported BERT graph, and on failure it leaves
    ``sym_shape_infer_temp.onnx`` and a copy of the weights in the working directory.
    """
    q = require("onnxruntime.quantization", extra="onnx", package="onnxruntime")
    source = Path(source)
    if not source.is_file():
        raise ModelFileError(f"{source} does not exist; export the fp32 model first")
    check_output(output, force)
    with quiet(), atomic_path(output, force=force) as target:
        q.quantize_dynamic(str(source), str(target), per_channel=per_channel, weight_type=q.QuantType.QInt8)
    return Path(output)


class OnnxEncoder:
    """An ONNX sentence encoder in ONNX Runtime: ``encoder(sentences)`` or ``encoder.run(ids, mask)``.

    ``threads`` is the runtime's intra-op thread count (1 gives steadier timings on a shared machine);
    ``runtime="openvino"`` runs the file on OpenVINO.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        tokenizer: Any,
        *,
        threads: int = 1,
        max_length: int = 128,
        runtime: str = "onnxruntime",
    ) -> None:
        if not Path(path).is_file():
            raise ModelFileError(f"{path} does not exist")
        self.session = open_session(Path(path), runtime, threads)
        self.tokenizer, self.max_length, self.path = tokenizer, max_length, Path(path)

    def run(self, input_ids: torch.Tensor | np.ndarray, attention_mask: torch.Tensor | np.ndarray) -> np.ndarray:
        feeds = {
            "input_ids": np.asarray(input_ids, dtype=np.int64),
            "attention_mask": np.asarray(attention_mask, dtype=np.int64),
        }
        return self.session.run(None, feeds)[0]

    def __call__(self, sentences: Sequence[str]) -> np.ndarray:
        x = tokenize(self.tokenizer, sentences, self.max_length)
        return self.run(x["input_ids"], x["attention_mask"])
