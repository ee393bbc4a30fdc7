"""Text classifiers over token ids (0 = padding): an LSTM/GRU and a small transformer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.core.errors import SlimkitError
from slimkit.zoo.registry import register


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``h`` (B, T, D) over the positions where ``mask`` (B, T) is true."""
    m = mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


class TextRNN(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embed_dim: int,
        hidden: int,
        layers: int,
        cell: str,
        bidirectional: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}.get(cell)
        if rnn is None:
            raise SlimkitError(f"text_lstm cell must be 'lstm' or 'gru', got {cell!r}")
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.rnn = rnn(embed_dim, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T) int64
        h, _ = self.rnn(self.embedding(tokens))  # (B, T, H * directions)
        return self.fc(self.dropout(masked_mean(h, tokens != 0)))


@register("text_lstm", limits={"dropout": (0.0, 1.0), "layers": (1, 1000)})
def text_lstm(
    vocab_size: int = 1000,
    num_classes: int = 2,
    embed_dim: int = 64,
    hidden: int = 128,
    layers: int = 1,
    cell: str = "lstm",
    bidirectional: bool = False,
    dropout: float = 0.2,
) -> TextRNN:
    """Embedding -> LSTM or GRU -> mean over real (non-padding) positions -> Linear."""
    return TextRNN(vocab_size, num_classes, embed_dim, hidden, layers, cell, bidirectional, dropout)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections (whole heads prunable)."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.q_proj = nn.Linear(dim, heads * head_dim)
        self.k_proj = nn.Linear(dim, heads * head_dim)
        self.v_proj = nn.Linear(dim, heads * head_dim)
        self.out_proj = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:  # x (B, T, D), keep (B, T)
        b, t, _ = x.shape

        def split(proj: nn.Linear) -> torch.Tensor:
            return proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, h, T, d)

        mask = keep[:, None, None, :]  # (B, 1, 1, T): attend to real tokens only
        y = F.scaled_dot_product_attention(split(self.q_proj), split(self.k_proj), split(self.v_proj), attn_mask=mask)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dim // heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(ffn, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), keep))
        return x + self.dropout(self.fc2(self.act(self.fc1(self.norm2(x)))))


class TextTransformer(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        seq_len: int,
        dim: int,
        heads: int,
        layers: int,
        ffn: int,
        dropout: float,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise SlimkitError(f"text_transformer dim ({dim}) must be divisible by heads ({heads})")
        self.seq_len = seq_len
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.position = nn.Embedding(seq_len, dim)
        self.blocks = nn.ModuleList([EncoderBlock(dim, heads, ffn, dropout) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T) int64, T <= seq_len
        keep = tokens != 0  # (B, T)
        keep = keep | ~keep.any(1, keepdim=True)  # an all-padding row attends to everything, not nothing
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embedding(tokens) + self.position(positions)  # (B, T, D)
        for block in self.blocks:
            x = block(x, keep)
        return self.fc(masked_mean(self.norm(x), keep))


@register("text_transformer", limits={"dropout": (0.0, 1.0), "layers": (0, 1000)})
def text_transformer(
    vocab_size: int = 1000,
    num_classes: int = 2,
    seq_len: int = 64,
    dim: int = 64,
    heads: int = 4,
    layers: int = 2,
    ffn: int = 128,
    dropout: float = 0.1,
) -> TextTransformer:
    """Token + learned position embeddings -> pre-norm encoder blocks -> masked mean -> Linear."""
    return TextTransformer(vocab_size, num_classes, seq_len, dim, heads, layers, ffn, dropout)
