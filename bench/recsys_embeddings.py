"""Row-wise int8 / int4 embedding tables on recommenders: bytes vs AUC (issue 8).

``recsys_mlp`` trained on the real MovieLens-100k click task and on ``synthetic-recsys``; the
tables are quantized with :class:`slimkit.compress.EmbeddingQuantConfig`, nothing is fine-tuned.
AUC and log-loss on the validation and test splits. Goal: tables >= 4x smaller, AUC drop <= 0.005.

    .venv/bin/python bench/recsys_embeddings.py
"""

from __future__ import annotations

import copy

import torch

import slimkit as sk
from slimkit.compress import EmbeddingQuantConfig, embedding_bytes


def main() -> None:
    print("| data | tables | table bytes | smaller | val AUC | test AUC | test AUC drop | test log-loss |")
    print("|---|---|---|---|---|---|---|---|")
    for name, epochs in (("movielens-100k", 3), ("synthetic-recsys", 3)):
        data = sk.data.load(name)
        torch.manual_seed(0)
        model = sk.zoo.create_for("recsys_mlp", data)
        sk.train.fit(model, data.train, val=data.val, epochs=epochs, progress=False)
        base_bytes = embedding_bytes(model)
        base = sk.evaluate(model, data, latency=False).metrics["auc"]
        for bits in (None, 8, 4):
            m = copy.deepcopy(model)
            if bits:
                sk.apply_(m, EmbeddingQuantConfig(bits=bits))
            val = sk.evaluate(m, data, split="val", latency=False).metrics
            test = sk.evaluate(m, data, latency=False).metrics
            size, tables = embedding_bytes(m), f"int{bits}" if bits else "fp32"
            print(f"| {name} | {tables} | {size:,} | {base_bytes / size:.2f}x | {val['auc']:.4f} "
                  f"| {test['auc']:.4f} | {base - test['auc']:+.4f} | {test['log_loss']:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
