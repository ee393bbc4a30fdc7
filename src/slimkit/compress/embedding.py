"""Compact embedding tables: row-wise int8 / int4 quantization.

A recommender's embedding tables are most of its bytes (``recsys_mlp`` on MovieLens: 97%), and a
lookup reads one row, so each row is quantized on its own: ``bits``-bit codes between the row's
minimum and maximum, with a float16 scale and offset per row. The table becomes a
:class:`QuantizedEmbedding` (codes and scales are buffers: frozen; fine-tune the rest of the
model afterwards if needed) that checkpoints record, reload and export to ONNX.

>>> import torch, slimkit as sk
>>> model = sk.zoo.create("recsys_mlp")
>>> bytes_ = sk.records(sk.apply_(model, EmbeddingQuantConfig(bits=4)))[-1].details["bytes"]
>>> round(bytes_["after"] / bytes_["before"], 3)  # 16-dim rows: 64 bytes -> 8 bytes of codes + 4 of scales
0.188
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from slimkit.core.errors import SlimkitError
from slimkit.core.surgery import register_module, replace_module
from slimkit.core.transform import Config, TransformRecord, register_config, register_transform, select

__all__ = ["EmbeddingQuantConfig", "QuantizedEmbedding", "embedding_bytes"]


class QuantizedEmbedding(nn.Module):
    """An embedding table stored as ``bits``-bit codes with a float16 scale and offset per row.

    Row ``i`` is ``codes[i] * scale[i] + offset[i]``; with 4 bits two codes share a byte (low
    nibble first). Lookups dequantize only the rows they read.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, bits: int = 8) -> None:
        super().__init__()
        if bits not in (4, 8):
            raise SlimkitError(f"embedding quantization takes 4 or 8 bits, got {bits}")
        self.num_embeddings, self.embedding_dim, self.bits = num_embeddings, embedding_dim, bits
        width = embedding_dim if bits == 8 else (embedding_dim + 1) // 2
        self.register_buffer("codes", torch.zeros(num_embeddings, width, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(num_embeddings, dtype=torch.float16))
        self.register_buffer("offset", torch.zeros(num_embeddings, dtype=torch.float16))

    @classmethod
    def from_embedding(cls, table: nn.Embedding, bits: int) -> QuantizedEmbedding:
        new = cls(table.num_embeddings, table.embedding_dim, bits)
        w = table.weight.detach().float()
        lo, hi = w.min(1).values, w.max(1).values
        levels = 2**bits - 1
        offset = lo.half()
        scale = ((hi - offset.float()) / levels).half()
        short = scale.float() * levels < hi - offset.float()  # rounded down: step to the next float16 up
        scale[short] = (scale[short].view(torch.int16) + 1).view(torch.float16)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # constant rows (e.g. padding)
        codes = ((w - offset.float()[:, None]) / scale.float()[:, None]).round().clamp(0, levels).to(torch.uint8)
        if bits == 4:
            if codes.shape[1] % 2:
                codes = torch.cat([codes, torch.zeros_like(codes[:, :1])], 1)
            codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
        new.codes.copy_(codes)
        new.scale.copy_(scale)
        new.offset.copy_(offset)
        return new

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        codes = self.codes[ids]
        if self.bits == 4:  # integer arithmetic (not bit ops) so that ONNX Runtime runs it on every type
            packed = codes.to(torch.int32)
            high = torch.div(packed, 16, rounding_mode="floor")
            codes = torch.stack([packed - 16 * high, high], -1).flatten(-2)[..., : self.embedding_dim]
        return codes.float() * self.scale[ids].float().unsqueeze(-1) + self.offset[ids].float().unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}"


register_module(
    QuantizedEmbedding,
    lambda m: {"num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim, "bits": m.bits},
)


def embedding_bytes(model: nn.Module) -> int:
    """Bytes held by the model's embedding tables (plain or quantized)."""
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding | QuantizedEmbedding)]
    return sum(t.numel() * t.element_size() for m in tables for t in (*m.parameters(), *m.buffers()))


@register_config
@dataclasses.dataclass(frozen=True, kw_only=True)
class EmbeddingQuantConfig(Config):
    """Quantize embedding tables row-wise to ``bits`` (8 or 4); ``layers``: names or ``re:``
    patterns (default: every ``nn.Embedding`` with at least ``min_rows`` rows)."""

    bits: int = 8
    layers: tuple[str, ...] | None = None
    min_rows: int = 2

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise SlimkitError(f"embedding quantization takes bits=4 or bits=8, got {self.bits}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))


@register_transform(EmbeddingQuantConfig)
def quantize_embeddings_(
    model: nn.Module, cfg: EmbeddingQuantConfig, example_inputs: torch.Tensor | None = None
) -> TransformRecord:
    """Replace the selected ``nn.Embedding`` tables by :class:`QuantizedEmbedding` (in place)."""
    record = TransformRecord("EmbeddingQuantConfig", cfg.to_dict())
    names = select(model, cfg.layers, (nn.Embedding,))
    if not names:
        raise SlimkitError("the model has no nn.Embedding table to quantize")
    before = embedding_bytes(model)
    errors = {}
    for name in names:
        table = model.get_submodule(name)
        if table.num_embeddings < cfg.min_rows:
            record.skipped[name] = f"{table.num_embeddings} rows (min_rows={cfg.min_rows})"
            continue
        if table.max_norm is not None or table.sparse:
            record.skipped[name] = "max_norm / sparse embeddings are not supported"
            continue
        new = QuantizedEmbedding.from_embedding(table, cfg.bits)
        with torch.no_grad():
            ids = torch.arange(table.num_embeddings)
            w = table.weight.float()
            errors[name] = float((new(ids) - w).pow(2).mean() / w.pow(2).mean().clamp_min(1e-30))
        replace_module(model, name, new)
        record.changed.append(name)
    record.details = {"bytes": {"before": before, "after": embedding_bytes(model)}, "relative_mse": errors}
    return record
