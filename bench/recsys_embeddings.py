"""Row-wise int8 / int4 embedding tables on recommenders: bytes vs AUC (issue 8).

``recsys_mlp`` trained on the real MovieLens-100k click task and on ``synthetic-recsys``; the
tables are quantized row-wise (:class:`slimkit.compress.EmbeddingQuantConfig`) and/or factorized
by SVD (:class:`slimkit.compress.LowRankConfig` on the tables with over 100 rows) and/or ids
seen rarely in the training set share one row (:class:`slimkit.compress.EmbeddingBucketConfig`);
nothing is fine-tuned.
AUC and log-loss on the validation and test splits. Goal: tables >= 4x smaller, AUC drop <= 0.005.

    .venv/bin/python bench/recsys_embeddings.py
"""

from __future__ import annotations

import copy

import torch

import slimkit as sk
from slimkit.compress import EmbeddingBucketConfig, EmbeddingQuantConfig, LowRankConfig, embedding_bytes


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
        tables = [n for n, t in model.named_modules() if isinstance(t, torch.nn.Embedding) and t.num_embeddings > 100]
        variants = {
            "fp32": [],
            "int8": [EmbeddingQuantConfig(bits=8)],
            "int4": [EmbeddingQuantConfig(bits=4)],
            "svd rank 8 (large tables)": [LowRankConfig(rank=8, layers=tuple(tables))],
            "svd rank 8 + int4": [LowRankConfig(rank=8, layers=tuple(tables)), EmbeddingQuantConfig(bits=4)],
            "ids seen < 5 times share a row": [EmbeddingBucketConfig(min_count=5)],
            "ids seen < 5 times share a row + int4": [EmbeddingBucketConfig(min_count=5), EmbeddingQuantConfig(bits=4)],
            "half the ids share a row + int4": [EmbeddingBucketConfig(keep=0.5), EmbeddingQuantConfig(bits=4)],
        }
        for label, configs in variants.items():
            m = copy.deepcopy(model)
            for config in configs:  # usage is counted on the training inputs
                sk.apply_(m, config, example_inputs=data.splits["train"][0])
            val = sk.evaluate(m, data, split="val", latency=False).metrics
            test = sk.evaluate(m, data, latency=False).metrics
            size = embedding_bytes(m) + sum(  # the Linear after a factorized table belongs to the table
                t.weight.numel() * 4 for n, t in m.named_modules() if any(n == f"{x}.1" for x in tables)
            )
            print(
                f"| {name} | {label} | {size:,} | {base_bytes / size:.2f}x | {val['auc']:.4f} "
                f"| {test['auc']:.4f} | {base - test['auc']:+.4f} | {test['log_loss']:.4f} |"
            )


if __name__ == "__main__":
    main()
