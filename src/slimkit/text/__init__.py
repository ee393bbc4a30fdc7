"""Hugging Face sentence encoders (optional extra ``text``): prune, factorize, distil, int8 ONNX.

Works on the encoders of ``transformers`` / ``sentence-transformers`` with BERT's layout (BERT,
RoBERTa, XLM-RoBERTa, ELECTRA, CamemBERT...), MPNet's or DistilBERT's, mean or CLS pooled; everything
here keeps the model loadable by those libraries (see :mod:`slimkit.text.hf`). Importing this package
needs ``pip install 'slimkit[text]'``.

Example::

    from slimkit import text
    from slimkit.evaluate import fidelity

    original = text.load_minilm()              # all-MiniLM-L6-v2, offline
    model = text.load_minilm()
    calib = [text.tokenize(model.tokenizer, s) for s in chunks_of_sentences]
    text.prune_(model, calib, heads=0.25, ffn=0.5)   # least-squares refits keep the outputs close
    text.distil_(model, original, sentences, model.tokenizer, max_seconds=600)
    text.save(model, "runs/minilm-pruned")     # reloads with SentenceTransformer(path)
    text.export_onnx(model, "runs/m.onnx", model.tokenizer)
    text.quantize_onnx("runs/m.onnx", "runs/m.int8.onnx")
"""

from __future__ import annotations

from slimkit.text.corpus import held_out_sentences, news_paragraphs, training_sentences
from slimkit.text.distil import distil_
from slimkit.text.hf import (
    LAYOUTS,
    Layout,
    SlimBertConfig,
    SlimBertModel,
    count_params,
    encoder_of,
    layout_of,
    load,
    load_minilm,
    save,
    shapes,
    slim_classes,
)
from slimkit.text.onnx import OnnxEncoder, PooledEncoder, TorchEncoder, export_onnx, quantize_onnx, tokenize
from slimkit.text.optimize import encoder_recipe, optimize_encoder, sentence_data, sentence_loaders
from slimkit.text.prune import (
    collect_inputs,
    factorize_embeddings_,
    keep_layers_,
    lowrank_linears_,
    prune_,
    prune_ffn_,
    prune_heads_,
)

__all__ = [
    "LAYOUTS",
    "Layout",
    "OnnxEncoder",
    "PooledEncoder",
    "SlimBertConfig",
    "SlimBertModel",
    "TorchEncoder",
    "collect_inputs",
    "count_params",
    "distil_",
    "encoder_of",
    "encoder_recipe",
    "export_onnx",
    "factorize_embeddings_",
    "held_out_sentences",
    "keep_layers_",
    "layout_of",
    "load",
    "load_minilm",
    "lowrank_linears_",
    "news_paragraphs",
    "optimize_encoder",
    "prune_",
    "prune_ffn_",
    "prune_heads_",
    "quantize_onnx",
    "save",
    "sentence_data",
    "sentence_loaders",
    "shapes",
    "slim_classes",
    "tokenize",
    "training_sentences",
]
