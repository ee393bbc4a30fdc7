"""Which group score prunes better: each layer of a group with an equal say, or the norm of all the
weights a unit removes? (``ChannelPruneConfig(aggregate="normalized" | "sum")``.)

The two differ only in which channels go, not in how many: both run slimkit's L2 importance at the
same uniform ratio (the widths that meet the MACs budget), on the same trained models (several
training seeds), fine-tuned alike (several seeds, 5 epochs). The decision reads the validation
split (used only to pick the trained model's best epoch, never in pruning or fine-tuning); the
test split is reported beside it.
``"sum"`` is torch-pruning's group magnitude: at equal widths it removes the same channels.

Run: ``.venv/bin/python bench/prune_criteria.py`` (about 40 minutes on one core); several processes
can share the work (``--models``, ``--train-seeds``, ``--jsonl``) and ``--summary A.jsonl B.jsonl``
pools their results.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
from pathlib import Path

import torch

import slimkit as sk
from slimkit.evaluate import count_macs
from slimkit.prune import ChannelPruneConfig, prune_channels

SETUPS = {"seed_cnn": ({}, 20), "resnet_cifar": ({"depth": 20}, 15)}  # zoo kwargs, training epochs
AGGREGATES = ("normalized", "sum")
FINETUNE_EPOCHS = 5


def run(models: list[str], train_seeds: list[int], seeds: list[int], keeps: list[float], jsonl: Path | None) -> list:
    data = sk.data.load("mnist5k")
    fit = {"augment": data.augment, "progress": False}
    rows = []
    print(
        "| model | trained with seed | MACs kept | aggregate | MACs after "
        "| val / test acc after fine-tuning, per seed |"
    )
    print("|---|---|---|---|---|---|")
    for name, train_seed in itertools.product(models, train_seeds):
        kwargs, epochs = SETUPS[name]
        torch.manual_seed(train_seed)
        model = sk.zoo.create_for(name, data, **kwargs)
        sk.train.fit(model, data.train, val=data.val, epochs=epochs, seed=train_seed, **fit)
        m0 = count_macs(model, data.example[:1])
        for keep, aggregate in itertools.product(keeps, AGGREGATES):
            pruned = copy.deepcopy(model)
            config = ChannelPruneConfig(target_macs=keep, importance="l2", aggregate=aggregate)
            prune_channels(pruned, config, data.example[:1], data=data.train)
            cells = []
            for seed in seeds:
                tuned = copy.deepcopy(pruned)
                sk.train.fit(tuned, data.train, epochs=FINETUNE_EPOCHS, lr=5e-4, seed=seed, **fit)
                acc = {
                    s: 100 * sk.evaluate(tuned, data, split=s, latency=False).metrics["accuracy"]
                    for s in ("val", "test")
                }
                row = {
                    "model": name,
                    "train_seed": train_seed,
                    "keep": keep,
                    "aggregate": aggregate,
                    "seed": seed,
                    **acc,
                }
                rows.append(row)
                cells.append(f"{acc['val']:.2f} / {acc['test']:.2f}")
                if jsonl is not None:
                    with jsonl.open("a") as f:
                        f.write(json.dumps(row) + "\n")
            macs = count_macs(pruned, data.example[:1])
            print(
                f"| {name} | {train_seed} | {keep:.2f} | {aggregate} | {macs / m0:.3f}x | {', '.join(cells)} |",
                flush=True,
            )
    return rows


def summary(rows: list[dict]) -> None:
    """``sum`` minus ``normalized`` over the same (trained model, fine-tuning seed) pairs."""
    from scipy import stats

    print(
        "\n| model | MACs kept | pairs | split | normalized | sum | sum - normalized "
        "| wins / ties / losses of sum | paired t-test p |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    cases = sorted({(r["model"], r["keep"]) for r in rows}) + [("all", None)]
    for name, keep in cases:
        pick = [r for r in rows if name == "all" or (r["model"], r["keep"]) == (name, keep)]
        by = {(r["model"], r["keep"], r["train_seed"], r["seed"], r["aggregate"]): r for r in pick}
        pairs = [
            (by[(*k[:4], "normalized")], by[(*k[:4], "sum")])
            for k in by
            if k[4] == "sum" and (*k[:4], "normalized") in by
        ]
        for split in ("val", "test"):
            a, b = [p[0][split] for p in pairs], [p[1][split] for p in pairs]
            d = [y - x for x, y in zip(a, b, strict=True)]
            wins, losses = sum(v > 1e-9 for v in d), sum(v < -1e-9 for v in d)
            p = stats.ttest_rel(b, a).pvalue if any(d) else float("nan")
            where = "all" if keep is None else f"{keep:.2f}"
            print(
                f"| {name} | {where} | {len(d)} | {split} | {statistics.mean(a):.2f}% | {statistics.mean(b):.2f}% | "
                f"{statistics.mean(d):+.2f} | {wins} / {len(d) - wins - losses} / {losses} | {p:.3f} |"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--train-seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2], help="fine-tuning seeds")
    parser.add_argument("--keeps", nargs="+", type=float, default=[0.5, 0.25], help="MACs budgets")
    parser.add_argument("--jsonl", type=Path, help="also append every result to this file")
    parser.add_argument("--summary", nargs="+", type=Path, help="only pool these --jsonl files' results")
    args = parser.parse_args()
    if args.summary:
        summary([json.loads(line) for path in args.summary for line in path.read_text().splitlines() if line])
    else:
        summary(run(args.models, args.train_seeds, args.seeds, args.keeps, args.jsonl))
