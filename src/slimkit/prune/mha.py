"""A drop-in for ``nn.MultiheadAttention`` whose heads can be removed.

``nn.MultiheadAttention`` packs q/k/v into one matrix and ties its inner width to ``embed_dim``,
so a pruned copy cannot be expressed with it. :func:`convert` swaps each instance for this module
(same outputs up to float rounding) with separate ``q_proj``/``k_proj``/``v_proj``/``out_proj``
layers and a ``heads`` count, which the pruner handles like any attention block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.core.surgery import register_module, replace_module


class PrunableMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention``'s interface (self- or cross-attention) with prunable heads."""

    def __init__(
        self,
        embed_dim: int,
        heads: int,
        head_dim: int,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.v_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)
        self.embed_dim, self.heads, self.head_dim = embed_dim, heads, head_dim
        self.batch_first, self.dropout = batch_first, dropout
        # attributes nn.TransformerEncoderLayer inspects; False keeps its fused fast path (packed weights) off
        self._qkv_same_embed_dim = False
        self.in_proj_weight = self.in_proj_bias = None

    @property
    def num_heads(self) -> int:
        return self.heads

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, t, s = query.shape[0], query.shape[1], key.shape[1]

        def heads(x: torch.Tensor, proj: nn.Linear, n: int) -> torch.Tensor:
            return proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, h, n, d)

        q, k, v = heads(query, self.q_proj, t), heads(key, self.k_proj, s), heads(value, self.v_proj, s)
        bias = torch.zeros(b, 1, t, s, dtype=q.dtype)  # additive mask, nn.MultiheadAttention semantics
        if attn_mask is not None:
            mask = attn_mask.view(-1, self.heads, t, s) if attn_mask.dim() == 3 else attn_mask
            bias = bias + (mask.float().masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else mask)
        if is_causal and attn_mask is None:
            bias = bias.masked_fill(torch.ones(t, s, dtype=torch.bool).triu(1), float("-inf"))
        if key_padding_mask is not None:
            pad = key_padding_mask.view(b, 1, 1, s)
            bias = bias + (
                torch.zeros_like(pad, dtype=q.dtype).masked_fill(pad, float("-inf")) if pad.dtype == torch.bool else pad
            )
        scores = q @ k.transpose(-2, -1) / self.head_dim**0.5 + bias  # (B, h, T, S)
        weights = torch.softmax(scores, dim=-1)
        weights = F.dropout(weights, self.dropout, self.training)
        out = (weights @ v).transpose(1, 2).reshape(b, t, self.heads * self.head_dim)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(1) if average_attn_weights else weights


register_module(
    PrunableMultiheadAttention,
    lambda m: {
        "embed_dim": m.embed_dim,
        "heads": m.heads,
        "head_dim": m.head_dim,
        "bias": m.q_proj.bias is not None,
        "batch_first": m.batch_first,
        "dropout": m.dropout,
    },
)


def supported(m: nn.MultiheadAttention) -> str | None:
    """None if ``m`` can be converted, else the reason."""
    if m.bias_k is not None or m.add_zero_attn:
        return "nn.MultiheadAttention with add_bias_kv or add_zero_attn is not supported"
    if m.kdim != m.embed_dim or m.vdim != m.embed_dim:
        return "nn.MultiheadAttention with kdim/vdim different from embed_dim is not supported"
    return None


def from_torch(m: nn.MultiheadAttention) -> PrunableMultiheadAttention:
    """An equivalent :class:`PrunableMultiheadAttention` carrying ``m``'s weights."""
    e, h = m.embed_dim, m.num_heads
    new = PrunableMultiheadAttention(
        e, h, e // h, bias=m.in_proj_bias is not None, batch_first=m.batch_first, dropout=m.dropout
    )
    with torch.no_grad():
        w = (
            m.in_proj_weight
            if m._qkv_same_embed_dim
            else torch.cat([m.q_proj_weight, m.k_proj_weight, m.v_proj_weight])
        )
        for i, proj in enumerate((new.q_proj, new.k_proj, new.v_proj)):
            proj.weight.copy_(w[i * e : (i + 1) * e])
            if m.in_proj_bias is not None:
                proj.bias.copy_(m.in_proj_bias[i * e : (i + 1) * e])
        new.out_proj.weight.copy_(m.out_proj.weight)
        if m.out_proj.bias is not None:
            new.out_proj.bias.copy_(m.out_proj.bias)
    return new.train(m.training)


def convert(model: nn.Module) -> dict[str, str]:
    """Replace every supported ``nn.MultiheadAttention`` in ``model``; returns skipped ones with reasons."""
    skipped = {}
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.MultiheadAttention):
            reason = supported(m)
            if reason:
                skipped[name] = reason
            else:
                replace_module(model, name, from_torch(m))
    return skipped
