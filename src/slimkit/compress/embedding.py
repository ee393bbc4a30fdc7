"""Compact embedding tables: row-wise int8 / int4 quantization, shared rows for rare ids.

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
from slimkit.core.model import eval_mode
from slimkit.core.surgery import register_module, replace_module
from slimkit.core.transform import Config, TransformRecord, register_config, register_transform, select

__all__ = [
    "BucketedEmbedding",
    "EmbeddingBucketConfig",
    "EmbeddingQuantConfig",
    "FactorizedEmbedding",
    "QuantizedEmbedding",
    "embedding_bytes",
]


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


class FactorizedEmbedding(nn.Module):
    """An embedding table factorized into ``Embedding(n, rank)`` then ``Linear(rank, dim)`` (children
    ``0`` and ``1``), plus exact rows for the most used ids: ``exact`` holds their residuals (row 0
    is zero: every other id reads it; ``slot[i]`` is id ``i``'s row), so a few thousand frequent
    tokens come out exactly as in the original table while the long tail shares the low-rank part.
    Built by :func:`slimkit.compress.factor.svd_embedding`.
    """

    def __init__(
        self, num_embeddings: int, rank: int, embedding_dim: int, exact_rows: int = 0, padding_idx: int | None = None
    ) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.add_module("0", nn.Embedding(num_embeddings, rank, padding_idx=padding_idx))
        self.add_module("1", nn.Linear(rank, embedding_dim, bias=False))
        self.exact = nn.Embedding(exact_rows + 1, embedding_dim, padding_idx=0) if exact_rows else None
        self.register_buffer("slot", torch.zeros(num_embeddings, dtype=torch.int32) if exact_rows else None)

    @property
    def narrow(self) -> nn.Embedding:
        return self._modules["0"]

    @property
    def up(self) -> nn.Linear:
        return self._modules["1"]

    @property
    def rank(self) -> int:
        return self.narrow.embedding_dim

    @property
    def exact_rows(self) -> int:
        return 0 if self.exact is None else self.exact.num_embeddings - 1

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.up(self.narrow(ids))
        if self.exact is not None:  # stored as int32; lookups (ONNX Gather) take int64
            out = out + self.exact(self.slot[ids].long())
        return out

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}, exact_rows={self.exact_rows}"


register_module(
    FactorizedEmbedding,
    lambda m: {
        "num_embeddings": m.num_embeddings,
        "rank": m.rank,
        "embedding_dim": m.embedding_dim,
        "exact_rows": m.exact_rows,
        "padding_idx": m.narrow.padding_idx,
    },
)


def embedding_bytes(model: nn.Module) -> int:
    """Bytes held by the model's embedding tables (plain or quantized)."""
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding | QuantizedEmbedding | BucketedEmbedding)]
    owned = (t for m in tables for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)))
    return sum(t.numel() * t.element_size() for t in owned)


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


class BucketedEmbedding(nn.Module):
    """An embedding table whose rarely used rows share one row (the *bucket*).

    ``remap[i]`` is the row of ``table`` that id ``i`` reads: kept ids have their own row, the rest
    read the last row. ``table`` is a plain ``nn.Embedding`` (quantize it afterwards with
    :class:`EmbeddingQuantConfig` if wanted: the two compose).
    """

    def __init__(self, num_embeddings: int, rows: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.table = nn.Embedding(rows, embedding_dim)
        self.register_buffer("remap", torch.zeros(num_embeddings, dtype=torch.int32))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(self.remap[ids].long())  # stored as int32; lookups (ONNX Gather) take int64

    def extra_repr(self) -> str:
        return f"{self.num_embeddings} ids -> {self.table.num_embeddings} rows, {self.embedding_dim}"


register_module(
    BucketedEmbedding,
    lambda m: {"num_embeddings": m.num_embeddings, "rows": m.table.num_embeddings, "embedding_dim": m.embedding_dim},
)


@register_config
@dataclasses.dataclass(frozen=True, kw_only=True)
class EmbeddingBucketConfig(Config):
    """Give only the most used ids of each embedding table a row of their own; the rest share one
    row, the usage-weighted mean of the rows they had. Usage is counted on calibration inputs
    (``example_inputs``: e.g. the training set's features).

    ``keep``: fraction of the rows kept (the most used; ties broken by the lower id); or
    ``min_count``: keep the ids seen at least that often. The padding row is always kept.
    ``layers``: names or ``re:`` patterns (default: every ``nn.Embedding`` with ``min_rows``+ rows).
    """

    keep: float | None = None
    min_count: int | None = None
    layers: tuple[str, ...] | None = None
    min_rows: int = 100

    def __post_init__(self) -> None:
        if (self.keep is None) == (self.min_count is None):
            raise SlimkitError("give exactly one of keep (fraction of rows) or min_count (uses per id)")
        if self.keep is not None and not 0 < self.keep <= 1:
            raise SlimkitError(f"keep is a fraction of the rows in (0, 1], got {self.keep}")
        if self.min_count is not None and self.min_count < 1:
            raise SlimkitError(f"min_count must be at least 1, got {self.min_count}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))


def _usage(model: nn.Module, names: list[str], inputs: torch.Tensor, batch_size: int = 4096) -> dict[str, torch.Tensor]:
    """How often each id of each table ``names`` is read when ``model`` runs on ``inputs``."""
    counts = {n: torch.zeros(model.get_submodule(n).num_embeddings, dtype=torch.long) for n in names}

    def hook(name: str):  # noqa: ANN202
        def count(_: nn.Module, args: tuple) -> None:  # returns None: the input goes on unchanged
            counts[name] += torch.bincount(args[0].reshape(-1), minlength=len(counts[name]))

        return count

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad(), eval_mode(model):
            for start in range(0, len(inputs), batch_size):
                model(inputs[start : start + batch_size])
    finally:
        for h in handles:
            h.remove()
    return counts


def _bucketed(table: nn.Embedding, count: torch.Tensor, cfg: EmbeddingBucketConfig) -> BucketedEmbedding | None:
    n = table.num_embeddings
    if cfg.keep is not None:
        order = torch.sort(-count, stable=True).indices  # most used first, lower id first among ties
        kept = torch.zeros(n, dtype=torch.bool)
        kept[order[: max(1, round(cfg.keep * n))]] = True
    else:
        kept = count >= cfg.min_count
    if table.padding_idx is not None:
        kept[table.padding_idx] = True
    rows = int(kept.sum())
    if rows >= n - 1:  # one shared row for at most one id saves nothing
        return None
    new = BucketedEmbedding(n, rows + 1, table.embedding_dim)
    w = table.weight.detach()
    gone = ~kept
    weight = count[gone].double()
    weight = weight if weight.sum() > 0 else torch.ones_like(weight)  # no uses seen: the plain mean
    shared = (weight[:, None] * w[gone].double()).sum(0) / weight.sum()
    with torch.no_grad():
        new.table.weight.copy_(torch.cat([w[kept], shared[None].to(w.dtype)]))
        remap = torch.full((n,), rows, dtype=torch.int32)
        remap[kept] = torch.arange(rows, dtype=torch.int32)
        new.remap.copy_(remap)
    new.table.weight.requires_grad_(table.weight.requires_grad)
    new.train(table.training)
    return new


@register_transform(EmbeddingBucketConfig)
def bucket_embeddings_(
    model: nn.Module, cfg: EmbeddingBucketConfig, example_inputs: torch.Tensor | None = None
) -> TransformRecord:
    """Replace the selected ``nn.Embedding`` tables by :class:`BucketedEmbedding` (in place)."""
    if example_inputs is None:
        raise SlimkitError("bucketing rare embedding rows counts id usage: pass example_inputs (the training inputs)")
    record = TransformRecord("EmbeddingBucketConfig", cfg.to_dict())
    names = []
    for name in select(model, cfg.layers, (nn.Embedding,)):
        table = model.get_submodule(name)
        if name.endswith(".table") and isinstance(model.get_submodule(name.rpartition(".")[0]), BucketedEmbedding):
            record.skipped[name] = "already bucketed"
        elif table.num_embeddings < cfg.min_rows:
            record.skipped[name] = f"{table.num_embeddings} rows (min_rows={cfg.min_rows})"
        elif table.max_norm is not None or table.sparse:
            record.skipped[name] = "max_norm / sparse embeddings are not supported"
        else:
            names.append(name)
    if not names:
        raise SlimkitError(f"no embedding table to bucket (skipped: {record.skipped or 'none found'})")
    before = embedding_bytes(model)
    usage = _usage(model, names, example_inputs)
    rows = {}
    for name in names:
        table = model.get_submodule(name)
        new = _bucketed(table, usage[name], cfg)
        if new is None:
            record.skipped[name] = "every id (but at most one) is used often enough to keep"
            continue
        seen = usage[name] > 0
        rows[name] = {
            "ids": table.num_embeddings,
            "rows": new.table.num_embeddings,
            "ids_seen": int(seen.sum()),
            "uses_in_bucket": float(
                usage[name][new.remap == new.table.num_embeddings - 1].sum() / usage[name].sum().clamp_min(1)
            ),
        }
        replace_module(model, name, new)
        record.changed.append(name)
    record.details = {"bytes": {"before": before, "after": embedding_bytes(model)}, "tables": rows}
    return record
