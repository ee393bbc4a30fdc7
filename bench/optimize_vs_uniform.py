"""Sensitivity-based allocation vs uniform per-layer pruning at the same MACs budget (issue 6).

For seed_cnn and resnet_cifar (ResNet-20, 1 channel) trained on mnist5k, each allocation prunes to
25% of the MACs in 2 rounds with the same fine-tuning budget (4 epochs with distillation from the
original after each round), through :func:`slimkit.optimize.optimize` with no quality constraint (so
nothing backs off and both sides get exactly the same training). Test accuracy is measured once at
the end. ``global`` (all units ranked together) is shown for context.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/optimize_vs_uniform.py`` (about 15 minutes on 2
busy cores; trained models are cached in ``runs/bench-optimize/``). ``--ckpt NAME=PATH`` reuses a
trained checkpoint.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import slimkit as sk
from slimkit.optimize import Target, optimize

SETUPS = {"seed_cnn": ({}, 20), "resnet_cifar": ({"depth": 20}, 15)}
CACHE = Path("runs/bench-optimize")


def trained(name: str, data: sk.data.Dataset, ckpt: str | None) -> torch.nn.Module:
    path = Path(ckpt) if ckpt else CACHE / name
    if path.exists():
        return sk.load(path)
    kwargs, epochs = SETUPS[name]
    torch.manual_seed(0)
    model = sk.zoo.create_for(name, data, **kwargs)
    sk.train.fit(model, data.train, val=data.val, epochs=epochs, augment=data.augment, progress=False)
    sk.save(model, path, example=data.example)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SETUPS))
    parser.add_argument("--allocations", nargs="+", default=["uniform", "sensitivity", "global"])
    parser.add_argument("--macs", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs after each of the 2 rounds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--ckpt", action="append", default=[], help="NAME=PATH of a trained checkpoint")
    args = parser.parse_args()
    ckpts = dict(c.split("=", 1) for c in args.ckpt)
    data = sk.data.load("mnist5k")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; target MACs {args.macs:.0%}, "
        f"2 rounds x {args.epochs} fine-tuning epochs (distillation), seeds {args.seeds}\n"
    )
    print(
        "| model | allocation | MACs kept | params kept | val acc | test acc (per seed) | test acc mean "
        "| vs uniform | widths | time |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        model = trained(name, data, ckpts.get(name))
        base = sk.evaluate(model, data, latency=False).metrics["accuracy"]
        print(f"| {name} | (original) | 1.000 | 1.000 | | {100 * base:.2f}% | {100 * base:.2f}% | | | |", flush=True)
        uniform_mean = None
        for allocation in args.allocations:
            accs, vals, start = [], [], time.perf_counter()
            result = None
            for seed in args.seeds:
                recipe = {
                    "steps": [
                        {"SensitivityPruneConfig": {"target_macs": args.macs, "allocation": allocation, "rounds": 2}},
                        {"FineTuneConfig": {"epochs": args.epochs}},
                    ]
                }
                result = optimize(model, data, Target(macs=args.macs), recipe=recipe, seed=seed, html=False)
                accs.append(result.after.metrics["accuracy"])
                vals.append(result.chosen_candidate.metrics["accuracy"])
            c = result.chosen_candidate
            mean = statistics.mean(accs)
            if allocation == "uniform":
                uniform_mean = mean
            delta = "" if uniform_mean is None or allocation == "uniform" else f"{100 * (mean - uniform_mean):+.2f}"
            widths = " ".join(str(w) for w in c.widths.values()) if len(c.widths) <= 4 else f"{len(c.widths)} groups"
            print(
                f"| {name} | {allocation} | {c.costs['macs'] / result.base_val['costs']['macs']:.3f} "
                f"| {c.costs['params'] / result.base_val['costs']['params']:.3f} "
                f"| {100 * statistics.mean(vals):.2f}% | {' / '.join(f'{100 * a:.2f}%' for a in accs)} "
                f"| {100 * mean:.2f}% | {delta} | {widths} | {time.perf_counter() - start:.0f} s |",
                flush=True,
            )


if __name__ == "__main__":
    main()
