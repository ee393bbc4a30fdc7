"""The design brief's pruning example on real data: seed_cnn's Conv1 64 -> 32 filters by L1 importance.

Trains seed_cnn on mnist5k (the demo recipe), prunes conv1 to 32 filters (conv2's input channels
follow), then fine-tunes 2 epochs; prints test accuracy, parameters and MACs at each stage.

Run: ``.venv/bin/python bench/prune_brief_example.py`` (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import torch

import slimkit as sk
from slimkit.prune import ChannelPruneConfig, prune_channels


def main() -> None:
    data = sk.data.load("mnist5k")
    torch.manual_seed(0)
    model = sk.zoo.create_for("seed_cnn", data)
    sk.train.fit(model, data.train, val=data.val, epochs=20, augment=data.augment, progress=False)
    rows = [("trained", sk.evaluate(model, data, latency=False))]
    prune_channels(model, ChannelPruneConfig(ratio=0.0, ratios={"conv1": 0.5}, importance="l1"), data.example)
    stage = f"pruned: conv1 {model.conv1.out_channels} filters, conv2 reads {model.conv2.in_channels} channels"
    rows.append((stage, sk.evaluate(model, data, latency=False)))
    sk.train.fit(model, data.train, val=data.val, epochs=2, lr=3e-4, augment=data.augment, progress=False)
    rows.append(("after 2 epochs of fine-tuning", sk.evaluate(model, data, latency=False)))
    print("| stage | test accuracy | params | MACs |")
    print("|---|---|---|---|")
    for stage, r in rows:
        print(f"| {stage} | {100 * r.metrics['accuracy']:.2f}% | {r.params:,} | {r.macs:,} |")


if __name__ == "__main__":
    main()
