"""Acceptance experiment for fusion (issue 9) on mnist5k with 5 seed_cnn members per kind.

Per seed, two kinds of members, each fused by the methods it suits:

- 5 *independent* members (own initialisation, ``--member-epochs`` epochs each): the prediction
  ensembles (mean, vote, weighted, stack) and the distilled student. Diverse members make
  different mistakes, which is what an ensemble needs.
- 5 *shared-start* members (one ``--start-epochs`` start, then ``--epochs`` of fine-tuning each,
  seeds differ): the uniform and greedy soups. Weight averaging needs members in one loss basin.

Both kinds get the same budget per member (16 epochs by default), the same augmentation
(``--augment``: the dataset's random shifts, or ``affine``: small random rotations, scalings and
shifts) and the same checkpoint rule (``--checkpoint``: ``last``, the end of the cosine schedule,
or ``best-val``). Every method is compared with the best member *of the members it uses*, chosen
on VALIDATION accuracy (what a user can know); that member's test accuracy is the baseline. The
best member by test accuracy is printed for reference only (the maximum of 5 noisy estimates: a
selection-biased baseline).

The ensemble in the bar is fixed in advance (``--bar-ensemble``, default ``mean``); every other
ensemble (``select``: Caruana et al.'s ensemble selection on validation, also bagged) is printed
for reference.
The distilled student is a copy of the best independent member (by validation), distilled from
the bar's ensemble; its learning rate, temperature and alpha are chosen per seed on validation
accuracy from ``DISTILL_GRID``, and its starting weights count as a candidate (epoch 0). Nothing
is chosen on test data. Test accuracy on the 1,000 test digits; ONNX top-1 agreement with
PyTorch on the test set; the error for averaging different architectures.

    OMP_NUM_THREADS=1 .venv/bin/python bench/fuse_experiments.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

import slimkit as sk
from slimkit.evaluate import accuracy, count_macs
from slimkit.fuse import (
    METHODS,
    best_member,
    distill_ensemble,
    ensemble,
    greedy_soup,
    train_members,
    uniform_soup,
)
from slimkit.io import onnx_agreement

# (lr, temperature, alpha) tried for the distilled student; the best on validation is kept
DISTILL_GRID = ((3e-4, 4.0, 0.9), (1e-4, 4.0, 0.9), (3e-4, 2.0, 0.5))


def test_acc(model: torch.nn.Module, data: sk.data.Dataset) -> float:
    return sk.evaluate(model, data, latency=False).metrics["accuracy"]


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def agreement(model: torch.nn.Module, data: sk.data.Dataset, tmp: Path, name: str) -> float:
    path = sk.export(model, tmp / f"{name}.onnx", data.example)
    return onnx_agreement(model, path, data.splits["test"][0])["top1_agreement"]


def show_members(seed: int, kind: str, members: list[torch.nn.Module], data: sk.data.Dataset) -> tuple[float, float]:
    """Print each member's val / test accuracy; return the best-by-validation member's (val, test)."""
    best, vals = best_member(members, data)
    tests = [test_acc(m, data) for m in members]
    for i, (v, t) in enumerate(zip(vals, tests, strict=True)):
        mark = "  <- best by validation (baseline)" if i == best else ""
        print(f"seed {seed}: {kind:<12} member {i}  val {pct(v)}  test {pct(t)}{mark}")
    print(f"seed {seed}: {kind:<12} baseline test {pct(tests[best])} (member {best}); "
          f"best by test, for reference only: {pct(max(tests))}")  # fmt: skip
    return vals[best], tests[best]


def show(seed: int, name: str, model: torch.nn.Module, data: sk.data.Dataset, extra: str = "") -> tuple[float, float]:
    val, test = accuracy(model, data.val), test_acc(model, data)
    print(f"seed {seed}: {name:<26} val {pct(val)}  test {pct(test)}{extra}")
    return val, test


def run(seed: int, args: argparse.Namespace, data: sk.data.Dataset, tmp: Path) -> dict[str, bool]:
    t0 = time.perf_counter()
    budget = args.start_epochs + args.epochs
    recipe = {"augment": True if args.augment == "shift" else args.augment, "checkpoint": args.checkpoint}
    indep = train_members("seed_cnn", data, n=5, from_start=False, epochs=budget, seed=seed, **recipe).members
    print(f"seed {seed}: independent members trained ({budget} epochs each), {time.perf_counter() - t0:.0f} s")
    shared_run = train_members(
        "seed_cnn", data, n=5, start_epochs=args.start_epochs, epochs=args.epochs, seed=seed, **recipe
    )
    shared = shared_run.members
    print(f"seed {seed}: shared-start members trained, {time.perf_counter() - t0:.0f} s")
    (ind_val, ind_test) = show_members(seed, "independent", indep, data)
    (sh_val, sh_test) = show_members(seed, "shared-start", shared, data)

    fused = {method: ensemble(indep, method, val=data) for method in METHODS}
    scores = {}
    for method, m in fused.items():
        extra = f"  (weights {[round(float(w), 2) for w in m.weights]})" if method == "select" else ""
        mark = "  <- the bar's ensemble (fixed in advance)" if method == args.bar_ensemble else ""
        scores[method] = show(seed, f"ensemble {method} (indep.)", m, data, extra + mark)
    bagged = ensemble(indep, "select", val=data, bags=20, seed=seed)
    scores["select-bagged"] = show(seed, "ensemble select, 20 bags", bagged, data,
                                   f"  (weights {[round(float(w), 2) for w in bagged.weights]})")  # fmt: skip
    show(seed, "ensemble mean (shared)", ensemble(shared, "mean"), data, "  (reference: low-diversity members)")
    show(seed, "uniform soup (shared)", uniform_soup(shared), data)
    greedy = greedy_soup(shared, data)
    kept = sk.records(greedy)[-1].details["kept"]
    greedy_val, greedy_test = show(seed, "greedy soup (shared)", greedy, data, f"  (kept members {kept})")

    best_index = best_member(indep, data)[0]
    trials = []
    for lr, temperature, alpha in DISTILL_GRID:
        student = copy.deepcopy(indep[best_index])
        history = distill_ensemble(fused[args.bar_ensemble], student, data, epochs=args.distill_epochs, lr=lr,
                                   temperature=temperature, alpha=alpha, seed=seed)  # fmt: skip
        val = sk.records(student)[-1].details["val_accuracy"]  # the start counts as epoch 0
        trials.append((val, student, (lr, temperature, alpha)))
        kept = ", the start kept" if history.best_epoch == 0 else ""
        print(f"seed {seed}: distillation trial lr {lr:g} T {temperature:g} alpha {alpha:g}: "
              f"val {pct(val)} (epoch {history.best_epoch}{kept})")  # fmt: skip
    chosen = max(range(len(trials)), key=lambda i: (trials[i][0], -i))  # on validation; ties: first
    student, (lr, temperature, alpha) = trials[chosen][1], trials[chosen][2]
    one = data.example[:1]
    macs = {"member": count_macs(indep[0], one), "student": count_macs(student, one)}
    _, student_test = show(seed, "distilled (from best ind.)", student, data,
                           f"  lr {lr:g} T {temperature:g} alpha {alpha:g}; MACs {macs['student']:,} (one member "
                           f"{macs['member']:,}; 5-member ensemble {count_macs(fused['mean'], one):,})")  # fmt: skip
    agree = {name: agreement(m, data, tmp, f"{name}-{seed}") for name, m in
             (("ensemble-mean", fused["mean"]), ("ensemble-vote", fused["vote"]), ("ensemble-select", fused["select"]),
              ("greedy-soup", greedy), ("distilled", student))}  # fmt: skip
    print(f"seed {seed}: ONNX top-1 agreement " + "  ".join(f"{k} {pct(v)}" for k, v in agree.items()))
    for method in scores:
        if method != args.bar_ensemble:
            verdict = "above" if scores[method][1] > ind_test else "not above"
            print(f"seed {seed}: (reference, not a bar) ensemble {method} {pct(scores[method][1])} is {verdict} "
                  f"the baseline {pct(ind_test)}")  # fmt: skip
    checks = {
        f"ensemble ({args.bar_ensemble}) > best independent member": scores[args.bar_ensemble][1] > ind_test,
        "greedy soup >= best shared-start member": greedy_test >= sh_test,
        "greedy soup val >= best shared-start member val": greedy_val >= sh_val,
        "distilled >= best independent member": student_test >= ind_test,
        "distilled costs one model's MACs": macs["student"] == macs["member"],
        "ONNX agreement >= 99.9%": min(agree.values()) >= 0.999,
    }
    for name, ok in checks.items():
        print(f"seed {seed}: [{'PASS' if ok else 'FAIL'}] {name}")
    print(f"seed {seed}: {time.perf_counter() - t0:.0f} s")
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--start-epochs", type=int, default=8, help="shared start (independent members: start + epochs)"
    )
    parser.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs per shared-start member")
    parser.add_argument("--distill-epochs", type=int, default=4)
    parser.add_argument("--augment", choices=["shift", "affine"], default="affine", help="members' augmentation")
    parser.add_argument("--checkpoint", choices=["last", "best-val"], default="last", help="members' weights kept")
    parser.add_argument("--bar-ensemble", choices=list(METHODS), default="mean", help="the ensemble in the bar")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 leaves a core for others)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = sk.data.load("mnist5k")
    print(f"mnist5k, 5 x seed_cnn per kind; independent members {args.start_epochs + args.epochs} epochs; shared "
          f"start {args.start_epochs} + {args.epochs} epochs; distillation {args.distill_epochs} epochs per trial; "
          f"members: augment {args.augment}, checkpoint {args.checkpoint}; bar ensemble {args.bar_ensemble}; "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print("baseline for every bar: the best member by VALIDATION accuracy among the members the method uses")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            results[seed] = run(seed, args, data, Path(tmp))
    print("summary: " + "; ".join(f"seed {s}: {sum(c.values())}/{len(c)} bars pass" for s, c in results.items()))
    narrow = sk.zoo.create_for("seed_cnn", data, width=0.5)
    try:
        uniform_soup([sk.zoo.create_for("seed_cnn", data), narrow])
    except sk.SlimkitError as exc:
        print(f"different architectures: error: {exc}")


if __name__ == "__main__":
    main()
