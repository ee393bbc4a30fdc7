"""Structured surgery on HF encoders: attention heads, FFN units, layers, low-rank factors.

BERT, RoBERTa, MPNet, DistilBERT... (:data:`slimkit.text.hf.LAYOUTS`).

Every function changes the encoder in place, keeps its module attributes (``num_attention_heads``,
``all_head_size``) and config true to the new shapes (:func:`slimkit.text.hf.sync_config_`) and
returns the model. With calibration batches, the layer that reads the pruned units is refitted by
least squares (:func:`slimkit.compress.factor.refit_consumer`): the dropped heads' or units'
contribution is predicted from the kept ones, which keeps far more of the original's behaviour
than cutting alone.

>>> from transformers import BertConfig, BertModel
>>> bert = BertModel(BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64,
...                             num_hidden_layers=2, vocab_size=100))
>>> prune_heads_(bert, {0: [1, 2]}).encoder.layer[0].attention.self.num_attention_heads
2
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from slimkit.compress import factor
from slimkit.compress.factor import refit_consumer, select_units, svd_linear
from slimkit.core.errors import SlimkitError
from slimkit.core.transform import compile_pattern
from slimkit.text.hf import encoder_of, head_size, layout_of, sync_config_

Batch = Mapping[str, torch.Tensor]

__all__ = [
    "collect_inputs",
    "factorize_embeddings_",
    "keep_layers_",
    "lowrank_linears_",
    "prune_",
    "prune_ffn_",
    "prune_heads_",
]


class _Stop(Exception):
    """Raised by a hook once it has what it needs, to skip the rest of the forward pass."""


@torch.no_grad()
def collect_inputs(
    model: nn.Module, module_name: str, batches: Iterable[Batch], max_tokens: int = 8192
) -> torch.Tensor:
    """Inputs (N, D) of encoder submodule ``module_name`` at the non-padding tokens of ``batches``.

    The forward pass stops at that module, so collecting for early layers is cheap.
    """
    bert = encoder_of(model)
    module = bert.get_submodule(module_name)
    rows: list[torch.Tensor] = []
    mask: list[torch.Tensor] = []

    def hook(_m: nn.Module, args: tuple) -> None:
        x = args[0]  # (B, T, D)
        rows.append(x.reshape(-1, x.shape[-1])[mask[0].reshape(-1).bool()].float())
        raise _Stop

    handle = module.register_forward_pre_hook(hook)
    was_training = bert.training
    bert.eval()
    try:
        for batch in batches:
            mask[:] = [batch["attention_mask"]]
            try:
                bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            except _Stop:
                pass
            if sum(len(r) for r in rows) >= max_tokens:
                break
    finally:
        handle.remove()
        bert.train(was_training)
    if not rows:
        raise SlimkitError("no calibration batches were given")
    return torch.cat(rows)[:max_tokens]


def _check_layer(bert: nn.Module, layer: int) -> nn.Module:
    layout = layout_of(bert)
    layers = layout.layer_list(bert)
    if not 0 <= layer < len(layers):
        raise SlimkitError(f"layer {layer} does not exist; the encoder has {len(layers)} layers")
    found = layers[layer]
    mods = (
        *layout.projections(found),
        *(found.get_submodule(p) for p in (layout.attn_out, layout.ffn_in, layout.ffn_out)),
    )
    if not all(isinstance(m, nn.Linear) for m in mods):
        raise SlimkitError(f"layer {layer} has factorized linears; prune heads and FFN units before low-ranking")
    return found


def _slice_linear(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping rows (``dim=0``, outputs) or columns (``dim=1``, inputs) ``index``."""
    w = layer.weight.detach().index_select(dim, index)
    bias = layer.bias is not None
    new = nn.Linear(w.shape[1], w.shape[0], bias=bias).to(w.device, w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if bias:
            new.bias.copy_(layer.bias.detach() if dim == 1 else layer.bias.detach()[index])
    return new


def _refit(consumer: nn.Linear, h: torch.Tensor | None, keep: torch.Tensor) -> nn.Linear:
    """``consumer`` reading only ``keep`` of its inputs; least-squares refit on ``h`` when given."""
    new = _slice_linear(consumer, keep, 1)
    if h is not None:
        w, b = refit_consumer(consumer, h, keep)
        with torch.no_grad():
            new.weight.copy_(w.to(new.weight.dtype))
            new.bias.copy_(b.to(new.bias.dtype))
    return new


def prune_heads_(
    model: nn.Module, heads: Mapping[int, Iterable[int]], *, calibration: Sequence[Batch] | None = None
) -> nn.Module:
    """Remove attention ``heads`` (``{layer: [head, ...]}``, indices into the layer's current heads).

    At least one head per layer must stay; in MPNet, whose layers share a position bias per head,
    the same heads go from every layer. With ``calibration`` batches the attention output
    projection is refitted to the kept heads. Bad input changes nothing.
    """
    bert = encoder_of(model)
    layout = layout_of(bert)
    dim = head_size(bert)
    plan = {}  # layer -> kept heads, all checked before anything changes
    for layer_idx, remove in heads.items():
        n = layout.projections(_check_layer(bert, layer_idx))[0].out_features // dim
        remove = sorted(set(int(h) for h in remove))
        if any(not 0 <= h < n for h in remove):
            raise SlimkitError(f"layer {layer_idx} has heads 0..{n - 1}; cannot remove {remove}")
        if len(remove) >= n:
            raise SlimkitError(f"cannot remove all {n} heads of layer {layer_idx}; keep at least one")
        if remove:
            plan[layer_idx] = [h for h in range(n) if h not in remove]
    shared = layout.head_bias and plan
    if shared and (len(plan) != len(layout.layer_list(bert)) or len({tuple(k) for k in plan.values()}) > 1):
        raise SlimkitError(
            f"every {layout.name} layer reads one position bias per head: remove the same heads from all"
        )
    inputs = {  # with a shared bias no forward pass runs between the cuts: collect every input first
        i: collect_inputs(bert, layout.module_name(i, layout.attn_out), calibration)
        for i in (plan if shared and calibration is not None else ())
    }
    for layer_idx, kept in plan.items():
        layer = layout.layer_list(bert)[layer_idx]
        index = torch.cat([torch.arange(h * dim, (h + 1) * dim) for h in kept])
        h = inputs.get(layer_idx)
        if h is None and calibration is not None:
            h = collect_inputs(bert, layout.module_name(layer_idx, layout.attn_out), calibration)
        for name, m in zip(layout.qkv, layout.projections(layer), strict=True):
            layer.set_submodule(f"{layout.attention}.{name}", _slice_linear(m, index, 0))
        layout.set_heads(layer, len(kept), dim)
        layer.set_submodule(layout.attn_out, _refit(layer.get_submodule(layout.attn_out), h, index))
    if shared:
        bias = bert.get_submodule(layout.head_bias)
        kept = next(iter(plan.values()))
        new = nn.Embedding(bias.num_embeddings, len(kept)).to(bias.weight.device, bias.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(bias.weight[:, kept])
        bert.set_submodule(layout.head_bias, new)
    sync_config_(bert)
    return model


def prune_ffn_(
    model: nn.Module, keep: Mapping[int, Sequence[int] | torch.Tensor], *, calibration: Sequence[Batch] | None = None
) -> nn.Module:
    """Keep only the FFN units ``keep`` (``{layer: [unit, ...]}``) of each listed layer.

    With ``calibration`` batches the FFN output layer is refitted to the kept units. Keeping the
    same number in every layer leaves a plain ``BertConfig`` (``intermediate_size``).
    """
    bert = encoder_of(model)
    layout = layout_of(bert)
    for layer_idx, units in keep.items():
        layer = _check_layer(bert, layer_idx)
        n = layer.get_submodule(layout.ffn_in).out_features
        index = torch.as_tensor(sorted(set(int(u) for u in units)), dtype=torch.long)
        if len(index) == 0 or index.min() < 0 or index.max() >= n:
            raise SlimkitError(f"layer {layer_idx} has FFN units 0..{n - 1}; keep a non-empty subset of them")
        out_name = layout.module_name(layer_idx, layout.ffn_out)
        h = collect_inputs(bert, out_name, calibration) if calibration is not None else None
        layer.set_submodule(layout.ffn_in, _slice_linear(layer.get_submodule(layout.ffn_in), index, 0))
        layer.set_submodule(layout.ffn_out, _refit(layer.get_submodule(layout.ffn_out), h, index))
    sync_config_(bert)
    return model


def _head_scores(bert: nn.Module, layer_idx: int, ctx: torch.Tensor) -> torch.Tensor:
    """Mean squared norm of each head's contribution to the attention output, (heads,)."""
    dim = head_size(bert)
    layout = layout_of(bert)
    out = layout.layer_list(bert)[layer_idx].get_submodule(layout.attn_out)
    w = out.weight.detach().float()  # (hidden, heads * dim)
    n = w.shape[1] // dim
    return torch.stack(
        [(ctx[:, h * dim : (h + 1) * dim] @ w[:, h * dim : (h + 1) * dim].T).pow(2).sum(1).mean() for h in range(n)]
    )


def prune_(
    model: nn.Module,
    calibration: Sequence[Batch],
    *,
    heads: float = 0.0,
    ffn: float = 0.0,
    refit: bool = True,
    max_tokens: int = 8192,
) -> dict[str, Any]:
    """Remove the fraction ``heads`` of attention heads and ``ffn`` of FFN units in every layer.

    Layer by layer, on the already-pruned model's own activations: heads with the smallest output
    contribution go (in MPNet the same heads from every layer, by their contribution summed over
    the layers); FFN units are chosen to span the activation space (:func:`select_units`) and,
    with ``refit``, each consumer is refitted by least squares. Same counts in every layer, so the
    FFN size stays a plain ``intermediate_size``. Returns what was removed.
    """
    if not (0 <= heads < 1 and 0 <= ffn < 1):
        raise SlimkitError(f"heads and ffn are fractions in [0, 1), got heads={heads}, ffn={ffn}")
    bert = encoder_of(model)
    layout = layout_of(bert)
    dim = head_size(bert)
    record: dict[str, Any] = {"heads_removed": {}, "ffn_kept": {}}
    layers = layout.layer_list(bert)
    if layout.head_bias and heads:  # the same heads from every layer: the least contribution summed over layers
        n = layout.projections(layers[0])[0].out_features // dim
        drop = min(round(heads * n), n - 1)
        scores = sum(
            _head_scores(bert, i, collect_inputs(bert, layout.module_name(i, layout.attn_out), calibration, max_tokens))
            for i in range(len(layers))
        )
        remove = sorted(scores.argsort()[:drop].tolist())
        if remove:
            prune_heads_(bert, dict.fromkeys(range(len(layers)), remove), calibration=calibration if refit else None)
            record["heads_removed"] = dict.fromkeys(range(len(layers)), remove)
        heads = 0.0
    for i, layer in enumerate(layers):
        n = layout.projections(layer)[0].out_features // dim
        drop = min(round(heads * n), n - 1)
        if drop:
            ctx = collect_inputs(bert, layout.module_name(i, layout.attn_out), calibration, max_tokens)
            remove = _head_scores(bert, i, ctx).argsort()[:drop].tolist()
            prune_heads_(bert, {i: remove}, calibration=calibration if refit else None)
            record["heads_removed"][i] = sorted(remove)
        units = layer.get_submodule(layout.ffn_in).out_features
        kept = units - round(ffn * units)
        if kept < units:
            h = collect_inputs(bert, layout.module_name(i, layout.ffn_out), calibration, max_tokens)
            index = select_units(h, kept)
            prune_ffn_(bert, {i: index}, calibration=calibration if refit else None)
            record["ffn_kept"][i] = kept
    sync_config_(bert)
    return record


def keep_layers_(model: nn.Module, layers: Sequence[int]) -> nn.Module:
    """Keep only encoder ``layers`` (in the given order): the start of a shallower student."""
    bert = encoder_of(model)
    layout = layout_of(bert)
    old = layout.layer_list(bert)
    n = len(old)
    if not layers or any(not 0 <= i < n for i in layers) or len(set(layers)) != len(layers):
        raise SlimkitError(f"layers must be distinct indices in 0..{n - 1}, got {list(layers)}")
    bert.set_submodule(layout.layers, nn.ModuleList(old[i] for i in layers))
    for new_idx, layer in enumerate(layout.layer_list(bert)):
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new_idx
    sync_config_(bert)
    return model


def factorize_embeddings_(
    model: nn.Module, rank: int, *, token_counts: torch.Tensor | None = None, exact_rows: int = 0
) -> nn.Module:
    """Word-embedding table ``(V, d)`` -> ``Embedding(V, rank)`` then ``Linear(rank, d)``
    (:func:`slimkit.compress.factor.svd_embedding`).

    The rank-``rank`` subspace is the best one for the rows weighted by ``token_counts + 1``
    (how often each token occurs in a training corpus; uniform without it), and every row is
    projected on it; the ``exact_rows`` most frequent tokens keep their rows exactly.
    """
    bert = encoder_of(model)
    table = bert.embeddings.word_embeddings
    if not isinstance(table, nn.Embedding):
        raise SlimkitError("the word embeddings are already factorized")
    if not 0 < rank <= min(table.weight.shape):
        raise SlimkitError(f"rank must be in 1..{min(table.weight.shape)}, got {rank}")
    if token_counts is not None and token_counts.shape != (table.num_embeddings,):
        raise SlimkitError(
            f"token_counts must have one count per token ({table.num_embeddings}), got {tuple(token_counts.shape)}"
        )
    if exact_rows and token_counts is None:
        raise SlimkitError("exact_rows keeps the most frequent tokens: pass token_counts")
    bert.embeddings.word_embeddings = factor.svd_embedding(table, rank, token_counts, exact_rows)
    sync_config_(bert)
    return model


def lowrank_linears_(model: nn.Module, rank: int | float, pattern: str = r"encoder\.layer\.\d+\..*dense$") -> nn.Module:
    """Factorize the encoder linears whose name matches ``pattern`` into two by truncated SVD.

    ``rank`` is an int, or a fraction of each layer's full rank. Layers where the factors would
    hold as many weights as the original are left alone.
    """
    bert = encoder_of(model)
    regex = compile_pattern(pattern)
    targets = [(n, m) for n, m in bert.named_modules() if isinstance(m, nn.Linear) and regex.search(n)]
    if not targets:
        raise SlimkitError(f"no encoder Linear matches {pattern!r}")
    for name, layer in targets:
        full = min(layer.in_features, layer.out_features)
        r = int(rank) if isinstance(rank, int) else max(1, round(rank * full))
        if r * (layer.in_features + layer.out_features) >= layer.in_features * layer.out_features:
            continue
        bert.set_submodule(name, svd_linear(layer, r))
    sync_config_(bert)
    return model
