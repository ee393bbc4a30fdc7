"""Acceptance experiments for simplification (issue 5), on real mnist5k digits.

1. The brief's example: seed_cnn without its two pools: shapes repaired (weight transfer and
   re-initialisation compared), cost before/after, accuracy after fine-tuning.
2. resnet_cifar (1 channel): drop 25% of its residual blocks by measured importance, fine-tune,
   compare with the original.
3. Distillation: seed_cnn at width 0.25 trained with and without distillation from the full
   seed_cnn, 3 seeds each (plus feature matching as a variant).

Run: ``OMP_NUM_THREADS=2 .venv/bin/python bench/simplify_experiments.py [--depth 20]``; the printed
figures are copied into bench/RESULTS-simplify.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import slimkit as sk
from slimkit.evaluate import count_params
from slimkit.simplify import distill, drop_blocks_, remove_layers_
from slimkit.train import DistillConfig


def measure(model: torch.nn.Module, data: sk.data.Dataset) -> sk.Report:
    return sk.evaluate(model, data, latency=False)


def line(label: str, r: sk.Report) -> str:
    return f"| {label} | {100 * r.metrics['accuracy']:.2f} | {r.params:,} | {r.macs:,} |"


def train(model: torch.nn.Module, data: sk.data.Dataset, epochs: int, lr: float, seed: int = 0) -> None:
    sk.train.fit(model, data.train, val=data.val, epochs=epochs, lr=lr, augment=data.augment, seed=seed, progress=False)


def seed_cnn(data: sk.data.Dataset, epochs: int) -> torch.nn.Module:
    """The brief's CNN trained on mnist5k (seed 0): the model to simplify and the teacher."""
    torch.manual_seed(0)
    base = sk.zoo.create_for("seed_cnn", data)
    train(base, data, epochs, 1e-3)
    return base


def pools(data: sk.data.Dataset, base: torch.nn.Module, epochs: int, finetune: int, lr: float) -> None:
    print("\n## 1. seed_cnn without its two MaxPool2d layers\n")
    print("| model | test accuracy % | params | MACs |\n|---|---|---|---|")
    print(line(f"seed_cnn, trained {epochs} epochs", measure(base, data)))
    for repair in ("transfer", "init"):
        model = copy.deepcopy(base)
        record = sk.records(remove_layers_(model, data.example, types=["MaxPool2d"], repair=repair))[-1]
        how = record.details["repaired"]["fc1"]["how"]
        print(line(f"pools removed, fc1 repaired by {how}, before fine-tuning", measure(model, data)))
        start = time.perf_counter()
        train(model, data, finetune, lr)
        secs = time.perf_counter() - start
        print(
            line(
                f"pools removed ({repair}), after {finetune} fine-tuning epochs at lr {lr:g} ({secs:.0f} s)",
                measure(model, data),
            )
        )
    d = record.details
    growth = f"params {d['params_before']:,} -> {d['params_after']:,} ({d['params_after'] / d['params_before']:.1f}x)"
    print(f"\nrecord: {growth}, MACs {d['macs_before']:,} -> {d['macs_after']:,}, repaired {d['repaired']}")


def blocks(data: sk.data.Dataset, depth: int, epochs: int, finetune: int) -> None:
    print(f"\n## 2. resnet_cifar depth {depth} (1 channel): drop 25% of blocks by measured importance\n")
    torch.manual_seed(0)
    model = sk.zoo.create_for("resnet_cifar", data, depth=depth)
    train(model, data, epochs, 3e-3)
    original = measure(model, data)
    record = sk.records(drop_blocks_(model, data.val, 0.25, example_inputs=data.example))[-1]
    dropped = measure(model, data)
    train(model, data, finetune, 1e-3)
    recovered = measure(model, data)
    print("| model | test accuracy % | params | MACs |\n|---|---|---|---|")
    print(line(f"resnet_cifar-{depth}, trained {epochs} epochs", original))
    print(line(f"{record.details['budget']} of {record.details['candidates']} blocks dropped", dropped))
    print(line(f"after {finetune} fine-tuning epochs", recovered))
    print(f"\nimportance (val accuracy lost per block alone): {record.details['importance_drop']}")
    print(f"dropped: {record.details['dropped']}")
    gap = 100 * (original.metrics["accuracy"] - recovered.metrics["accuracy"])
    print(f"gap to the original after recovery: {gap:.2f} points (acceptance: <= 1.00)")


def students(
    data: sk.data.Dataset,
    teacher: torch.nn.Module,
    epochs: int,
    seeds: list[int],
    temperature: float,
    alpha: float,
    features: bool,
) -> None:
    print(f"\n## 3. seed_cnn width 0.25 student, {epochs} epochs, with and without distillation\n")
    print(
        f"distillation: temperature {temperature:g}, alpha {alpha:g}"
        + ("; features conv2 -> conv2" if features else "")
        + "\n"
    )
    print("| model | test accuracy % | params | MACs |\n|---|---|---|---|")
    print(line("teacher: seed_cnn width 1.0", measure(teacher, data)))
    rows: dict[str, list[float]] = {"plain": [], "hinton": [], **({"hinton+features": []} if features else {})}
    for seed in seeds:
        for kind in rows:
            torch.manual_seed(seed)
            student = sk.zoo.create_for("seed_cnn", data, width=0.25)
            if kind == "plain":
                train(student, data, epochs, 1e-3, seed)
            else:
                feats = {"conv2": "conv2"} if kind == "hinton+features" else None
                kd = {"temperature": temperature, "alpha": alpha, "features": feats}
                distill(student, teacher, data, DistillConfig(**kd), epochs=epochs, seed=seed, progress=False)
            rows[kind].append(100 * measure(student, data).metrics["accuracy"])
    params = count_params(sk.zoo.create_for("seed_cnn", data, width=0.25))
    print(f"\nstudent params {params:,}\n")
    print("| student training | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |")
    print("|---|" + "---|" * (len(seeds) + 1))
    for kind, accs in rows.items():
        print(f"| {kind} | " + " | ".join(f"{a:.2f}" for a in accs) + f" | {statistics.mean(accs):.2f} |")
    gain = statistics.mean(rows["hinton"]) - statistics.mean(rows["plain"])
    print(f"\nHinton distillation minus plain, mean of {len(seeds)} seeds: {gain:+.2f} points")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=12, help="teacher training epochs")
    parser.add_argument("--student-epochs", type=int, default=12)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--features", action="store_true", help="also distil with feature matching (conv2)")
    parser.add_argument("--pool-lr", type=float, default=1e-3, help="fine-tuning lr after pool removal")
    parser.add_argument("--only", choices=["pools", "blocks", "students"], default=None)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    data = sk.data.load("mnist5k")
    start = time.perf_counter()
    teacher = seed_cnn(data, args.epochs) if args.only in (None, "pools", "students") else None
    if args.only in (None, "pools"):
        pools(data, teacher, args.epochs, finetune=3, lr=args.pool_lr)
    if args.only in (None, "blocks"):
        blocks(data, args.depth, epochs=15, finetune=5)
    if args.only in (None, "students"):
        students(data, teacher, args.student_epochs, [0, 1, 2], args.temperature, args.alpha, args.features)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
