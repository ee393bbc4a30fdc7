"""Acceptance experiment for fusion (issue 9) on mnist5k with 5 seed_cnn members.

Per seed: one shared start, 5 members fine-tuned from it (seeds differ: data order, augmentation),
then the ensembles (mean, vote, weighted, stack), the uniform and greedy soups, and a student
distilled from the mean ensemble (same architecture, initialised from the shared start, so it has
had the same training budget as one member). Test accuracy on the 1,000 test digits; ONNX top-1
agreement with PyTorch on the test set; the error for averaging different architectures.

    OMP_NUM_THREADS=2 .venv/bin/python bench/fuse_experiments.py --seeds 0 1
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

import slimkit as sk
from slimkit.evaluate import count_macs
from slimkit.fuse import METHODS, distill_ensemble, ensemble, greedy_soup, train_members, uniform_soup
from slimkit.io import onnx_agreement


def test_acc(model: torch.nn.Module, data: sk.data.Dataset) -> float:
    return sk.evaluate(model, data, latency=False).metrics["accuracy"]


def agreement(model: torch.nn.Module, data: sk.data.Dataset, tmp: Path, name: str) -> float:
    path = sk.export(model, tmp / f"{name}.onnx", data.example)
    return onnx_agreement(model, path, data.splits["test"][0])["top1_agreement"]


def run(seed: int, args: argparse.Namespace, data: sk.data.Dataset, tmp: Path) -> None:
    t0 = time.perf_counter()
    result = train_members("seed_cnn", data, n=5, start_epochs=args.start_epochs, epochs=args.epochs, seed=seed)
    members = result.members
    accs = [test_acc(m, data) for m in members]
    best = max(accs)
    print(f"seed {seed}: start {100 * test_acc(result.start, data):.2f}%  members "
          + "  ".join(f"{100 * a:.2f}%" for a in accs) + f"  best {100 * best:.2f}%")  # fmt: skip
    fused = {}
    for method in METHODS:
        fused[method] = ensemble(members, method, val=data)
        print(f"seed {seed}: ensemble {method:<8} test {100 * test_acc(fused[method], data):.2f}%")
    uniform = uniform_soup(members)
    greedy = greedy_soup(members, data)
    kept = sk.records(greedy)[-1].details["kept"]
    print(f"seed {seed}: uniform soup      test {100 * test_acc(uniform, data):.2f}%")
    print(f"seed {seed}: greedy soup       test {100 * test_acc(greedy, data):.2f}%  (kept members {kept})")
    student = copy.deepcopy(result.start)
    distill_ensemble(fused["mean"], student, data, epochs=args.distill_epochs, seed=seed)
    one = data.example[:1]
    macs = {"member": count_macs(members[0], one), "student": count_macs(student, one)}
    print(f"seed {seed}: distilled         test {100 * test_acc(student, data):.2f}%  MACs {macs['student']:,} "
          f"(one member: {macs['member']:,}; 5-member ensemble: {count_macs(fused['mean'], one):,})")  # fmt: skip
    ens_acc, greedy_acc, student_acc = test_acc(fused["mean"], data), test_acc(greedy, data), test_acc(student, data)
    agree = {name: agreement(m, data, tmp, f"{name}-{seed}") for name, m in
             (("ensemble-mean", fused["mean"]), ("ensemble-vote", fused["vote"]), ("greedy-soup", greedy),
              ("distilled", student))}  # fmt: skip
    print(f"seed {seed}: ONNX top-1 agreement " + "  ".join(f"{k} {100 * v:.2f}%" for k, v in agree.items()))
    checks = {
        "ensemble > best member": ens_acc > best,
        "greedy soup >= best member": greedy_acc >= best,
        "distilled >= best member": student_acc >= best,
        "distilled costs one model's MACs": macs["student"] == macs["member"],
        "ONNX agreement >= 99.9%": min(agree.values()) >= 0.999,
    }
    print(f"seed {seed}: " + "  ".join(f"[{'PASS' if ok else 'FAIL'}] {k}" for k, ok in checks.items()))
    print(f"seed {seed}: {time.perf_counter() - t0:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--start-epochs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs per member")
    parser.add_argument("--distill-epochs", type=int, default=8)
    args = parser.parse_args()
    data = sk.data.load("mnist5k")
    print(f"mnist5k, 5 x seed_cnn; start {args.start_epochs} epochs, members {args.epochs} epochs, "
          f"distillation {args.distill_epochs} epochs; torch threads {torch.get_num_threads()}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            run(seed, args, data, Path(tmp))
    narrow = sk.zoo.create_for("seed_cnn", data, width=0.5)
    try:
        uniform_soup([sk.zoo.create_for("seed_cnn", data), narrow])
    except sk.SlimkitError as exc:
        print(f"different architectures: error: {exc}")


if __name__ == "__main__":
    main()
