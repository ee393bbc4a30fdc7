"""Pure tensor code of low-rank compression: build replacement layers from weights and statistics.

Every function here takes layers (and, for the data-aware ones, activation statistics) and returns
new ``torch.nn`` modules; nothing is changed in place. :mod:`slimkit.compress.lowrank` decides
which layers and ranks, and installs the results with recorded surgery.

- :func:`svd_linear`: ``W (O, I) = U S V^T`` -> ``Linear(I, r)`` then ``Linear(r, O)``.
- :func:`svd_conv`: ``k x k`` conv with ``r`` filters then a ``1 x 1`` conv (``"channel"``), or a
  ``kh x 1`` conv then a ``1 x kw`` conv (``"spatial"``, Jaderberg et al. 2014).
- :func:`pca_factor`: activation-aware: project the layer's outputs on their top-``r`` principal
  components (exact at full rank, best rank-``r`` fit of the outputs on the calibration data).
- :func:`select_units` + :func:`refit_consumer`: keep ``r`` of a hidden layer's units (those that
  best span the post-activation space) and refit the next layer by least squares.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from slimkit.compress.embedding import FactorizedEmbedding


def _root_split(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of ``w`` (M, N) in float64: left (M, r) and right (r, N) factors with sqrt(S) on each side."""
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)  # (M, k), (k,), (k, N)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank], s


def _set(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, like: torch.Tensor) -> nn.Module:
    """``layer`` (a new one) on ``like``'s device and dtype, holding ``weight`` and ``bias``."""
    layer.to(like.device, like.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight.to(like.dtype))
        if bias is not None:
            layer.bias.copy_(bias.to(like.dtype))
    return layer


def svd_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """``Linear(I, O)`` -> ``Linear(I, r, bias=False)``, ``Linear(r, O)`` (exact at ``r = min(I, O)``)."""
    w = layer.weight.detach()  # (O, I)
    out_f, in_f = w.shape
    left, right, _ = _root_split(w, rank)  # (O, r), (r, I)
    first = _set(nn.Linear(in_f, rank, bias=False), right, None, w)
    second = _set(nn.Linear(rank, out_f, bias=layer.bias is not None), left, _bias(layer), w)
    return nn.Sequential(first, second)


def svd_embedding(
    table: nn.Embedding, rank: int, counts: torch.Tensor | None = None, exact_rows: int = 0
) -> FactorizedEmbedding:
    """``Embedding(n, d)`` -> :class:`~slimkit.compress.embedding.FactorizedEmbedding` of rank ``rank``
    (exact at ``r = min(n, d)``).

    With ``counts`` (how often each id is read on calibration data) the ``exact_rows`` most used ids
    keep their rows exactly, and the rank-``r`` subspace is the best one for the other rows weighted
    by ``count + 1``: frequent tokens stay close, the never-seen tail shares what is left. Every row
    is projected on the subspace (``up`` has orthonormal columns).
    """
    from slimkit.compress.embedding import FactorizedEmbedding

    w = table.weight.detach()
    n, d = w.shape
    kept, _, basis = embedding_basis(w, counts, exact_rows)
    basis = basis[:rank]  # (r, d)
    narrow = w.double() @ basis.T  # (n, r)
    new = FactorizedEmbedding(n, rank, d, len(kept), table.padding_idx)
    _set(new.narrow, narrow, None, w)
    _set(new.up, basis.T, None, w)
    if len(kept):
        with torch.no_grad():
            new.exact.weight[1:] = (w[kept].double() - narrow[kept] @ basis).to(w.dtype)
            new.slot[kept] = torch.arange(1, len(kept) + 1, dtype=torch.int32)
    return new


def embedding_basis(
    w: torch.Tensor, counts: torch.Tensor | None, exact_rows: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``exact_rows`` most used ids (ties: lower id first), then the singular values and right
    singular vectors (rows), best first, of the other rows of ``w`` weighted by ``sqrt(count + 1)``
    (plain SVD without counts)."""
    n = len(w)
    if exact_rows and counts is None:
        raise ValueError("exact rows are the most used ids: they need usage counts")
    kept = torch.sort(-counts, stable=True).indices[:exact_rows] if exact_rows else torch.zeros(0, dtype=torch.long)
    rest = torch.ones(n, dtype=torch.bool)
    rest[kept] = False
    rows = w.detach().double()[rest]
    if counts is not None:
        rows = rows * (counts[rest].double() + 1).sqrt()[:, None]
    _, s, vh = torch.linalg.svd(rows, full_matrices=False)
    return kept, s, vh


def _bias(layer: nn.Module) -> torch.Tensor | None:
    return None if layer.bias is None else layer.bias.detach().double()


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def svd_conv(conv: nn.Conv2d, rank: int, variant: str = "channel") -> nn.Sequential:
    """Factorize a ``Conv2d`` (groups 1) into two convolutions of rank ``rank``.

    ``"channel"``: ``W (O, C, kh, kw)`` as a matrix ``(O, C*kh*kw)`` -> a ``kh x kw`` conv with ``r``
    filters (original stride, padding, dilation) then a ``1 x 1`` conv; exact at ``r = min(O, C*kh*kw)``.
    ``"spatial"``: ``W`` as ``(C*kh, O*kw)`` -> a ``kh x 1`` conv then a ``1 x kw`` conv (stride,
    padding and dilation split by axis); exact at ``r = min(C*kh, O*kw)``.
    """
    w = conv.weight.detach()  # (O, C, kh, kw)
    o, c, kh, kw = w.shape
    if variant == "channel":
        left, right, _ = _root_split(w.reshape(o, -1), rank)  # (O, r), (r, C*kh*kw)
        first = nn.Conv2d(
            c, rank, (kh, kw), conv.stride, conv.padding, conv.dilation, bias=False, padding_mode=conv.padding_mode
        )
        second = nn.Conv2d(rank, o, 1, bias=conv.bias is not None)
        _set(first, right.reshape(rank, c, kh, kw), None, w)
        _set(second, left.reshape(o, rank, 1, 1), _bias(conv), w)
        return nn.Sequential(first, second)
    if variant != "spatial":
        raise ValueError(f"unknown conv variant {variant!r}")
    (sh, sw), (ph, pw), (dh, dw) = _pair(conv.stride), _pair(conv.padding), _pair(conv.dilation)
    m = w.permute(1, 2, 0, 3).reshape(c * kh, o * kw)  # M[(c, i), (o, j)] = W[o, c, i, j]
    left, right, _ = _root_split(m, rank)  # (C*kh, r), (r, O*kw)
    first = nn.Conv2d(c, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), bias=False, padding_mode=conv.padding_mode)
    second = nn.Conv2d(
        rank, o, (1, kw), (1, sw), (0, pw), (1, dw), bias=conv.bias is not None, padding_mode=conv.padding_mode
    )
    _set(first, left.reshape(c, kh, rank).permute(2, 0, 1).unsqueeze(-1), None, w)  # (r, C, kh, 1)
    _set(second, right.reshape(rank, o, kw).permute(1, 0, 2).unsqueeze(2), _bias(conv), w)  # (O, r, 1, kw)
    return nn.Sequential(first, second)


def output_pca(mean: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns) of an output covariance (float64)."""
    evals, evecs = torch.linalg.eigh(cov.double())  # ascending
    return evals.flip(0).clamp_min(0), evecs.flip(1)


def pca_factor(layer: nn.Linear | nn.Conv2d, mean: torch.Tensor, components: torch.Tensor) -> nn.Sequential:
    """Activation-aware factorization: ``y -> P P^T y + (I - P P^T) mean`` folded into two layers.

    ``components`` P (O, r) are orthonormal principal directions of the layer's outputs and
    ``mean`` (O,) their mean on calibration data. The first layer computes ``P^T (W x + b)``, the
    second ``P z + (I - P P^T) mean``. Exact when ``r = O``.
    """
    w = layer.weight.detach()
    p = components.double()  # (O, r)
    o, r = p.shape
    b = _bias(layer)
    first_b = None if b is None else p.T @ b  # (r,)
    second_b = mean.double() - p @ (p.T @ mean.double())  # (O,)
    if isinstance(layer, nn.Linear):
        first = _set(nn.Linear(layer.in_features, r, bias=b is not None), p.T @ w.double(), first_b, w)
        second = _set(nn.Linear(r, o), p, second_b, w)
        return nn.Sequential(first, second)
    c, kh, kw = w.shape[1:]
    first = nn.Conv2d(
        c, r, (kh, kw), layer.stride, layer.padding, layer.dilation, bias=b is not None, padding_mode=layer.padding_mode
    )
    _set(first, torch.einsum("or,ocij->rcij", p, w.double()), first_b, w)  # (r, C, kh, kw)
    second = _set(nn.Conv2d(r, o, 1), p.reshape(o, r, 1, 1), second_b, w)
    return nn.Sequential(first, second)


def select_units(h: torch.Tensor, rank: int) -> torch.Tensor:
    """Indices (sorted) of ``rank`` columns of ``h`` (N, D) that best span its centred column space.

    PCA-guided column subset selection: pivoted QR on the top-``rank`` principal loadings
    ``V_r^T`` (r, D) picks the units whose activations carry the leading components most
    independently (the DEIM / Q-DEIM rule), which is cheap and stable even for D in the thousands.
    """
    from scipy.linalg import qr

    hc = (h - h.mean(0)).double().cpu().numpy()  # (N, D)
    _, _, vt = np.linalg.svd(hc, full_matrices=False)  # (k, D)
    _, _, piv = qr(vt[:rank], pivoting=True, mode="economic")
    return torch.from_numpy(np.sort(piv[:rank]))


def input_gram(h: torch.Tensor) -> torch.Tensor:
    """``[h, 1]^T [h, 1]`` (D + 1, D + 1) for inputs ``h`` (N, D), in float64 to be summed over batches:
    what :func:`refit_from_gram` needs."""
    a = torch.cat([h.detach().float(), torch.ones(len(h), 1, device=h.device)], 1)
    return (a.T @ a).double()  # one batch's products in float32 (fast), sums over batches in float64


def refit_from_gram(
    weight: torch.Tensor, bias: torch.Tensor | None, gram: torch.Tensor, keep: torch.Tensor, ridge: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weights (O, r) and bias of a layer ``x -> weight @ x + bias`` seeing only the inputs ``keep``.

    The dropped inputs are replaced by their least-squares reconstruction from the kept ones plus a
    constant, ``h_drop ~ [h_keep, 1] B`` (without the constant when the layer has no bias), from the
    Gram matrix ``gram`` of its inputs (:func:`input_gram`); the dropped columns are folded through
    ``B``. This equals fitting the layer's outputs directly (they are linear in ``h``). ``ridge``
    (relative to the mean diagonal of the Gram matrix) keeps the solve well conditioned.
    """
    d = gram.shape[0] - 1
    drop = torch.ones(d, dtype=torch.bool)
    drop[keep] = False
    rows = torch.cat([torch.as_tensor(keep).reshape(-1), torch.tensor([d])]) if bias is not None else keep
    a = gram[rows][:, rows].clone()
    a += ridge * a.diagonal().mean() * torch.eye(len(a), dtype=a.dtype, device=a.device)
    coef = torch.linalg.solve(a, gram[rows][:, drop.nonzero().flatten()])  # B: (r [+ 1], D - r)
    w = weight.detach().double()  # (O, D)
    new_w = w[:, keep] + w[:, drop] @ coef[: len(keep)].T  # (O, r)
    if bias is None:
        return new_w, None
    return new_w, w[:, drop] @ coef[-1] + bias.detach().double()


def refit_consumer(
    consumer: nn.Linear, h: torch.Tensor, keep: torch.Tensor, ridge: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (O, r) and bias (O,) of ``consumer`` seeing only the units ``keep`` of ``h`` (N, D)
    (:func:`refit_from_gram` with a constant term, so the bias absorbs the dropped units' mean)."""
    bias = consumer.bias if consumer.bias is not None else torch.zeros(consumer.out_features, device=h.device)
    return refit_from_gram(consumer.weight, bias, input_gram(h), keep, ridge)
