"""slimkit vs torch-pruning (PyPI ``torch-pruning``), side by side in one process.

Part 1: every zoo model at ratios 0.3 and 0.5: parameters and MACs after, pruning wall time,
and which models each tool fails on. Part 2: seed_cnn and resnet_cifar (1 channel) trained on
mnist5k, pruned by each tool to the same MACs budget (2x and 4x fewer; a tool whose channel
steps land more than 2% above the other's MACs is pruned again to them), fine-tuned with the
same budget (each pruned model both plainly and distilling from the unpruned model, which is what
slimkit's own fine-tuning does by default), test accuracy; then each slimkit row against each
torch-pruning row over the same (trained model, fine-tuning seed) pairs (``--train-seeds``,
``--seeds``; paired t-test; ``--summary OUT...`` pools the rows of saved outputs, e.g. of several
processes). Both tools use L2 magnitude importance and uniform per-layer ratios.

Run: ``.venv/bin/python bench/prune_vs_torch_pruning.py`` (about 15 minutes on 2 cores).
"""

from __future__ import annotations

import copy
import itertools
import statistics
import time
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

import slimkit as sk
from slimkit.evaluate import count_macs, count_params
from slimkit.prune import ChannelPruneConfig, prune_channels

FINETUNE_EPOCHS = 5


def example(name: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if name in ("seed_cnn", "lenet5"):
        return torch.rand(1, 1, 28, 28, generator=g)
    if name in ("resnet_cifar", "mobilenet_v2"):
        return torch.rand(1, 3, 32, 32, generator=g)
    if name.startswith("text_"):
        return torch.randint(1, 1000, (1, 32), generator=g)
    return torch.stack([torch.randint(0, n, (1,), generator=g) for n in (1000, 500, 20, 4)], dim=1)


def output_layer(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def tp_prune(model: nn.Module, x: torch.Tensor, ratio: float) -> None:
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[output_layer(model)],
    )
    pruner.step()


def sk_prune(model: nn.Module, x: torch.Tensor, ratio: float) -> None:
    prune_channels(model, ChannelPruneConfig(ratio=ratio, importance="l2"), x)


def timed_pair(model: nn.Module, x: torch.Tensor, ratio: float, repeats: int = 9) -> dict[str, tuple]:
    """Prune with both tools, alternating, ``repeats`` times; the fastest run of each (least disturbed by
    other work on the machine). Returns ``{tool: (pruned model or None, seconds, error)}``."""
    results: dict[str, tuple] = {}
    times: dict[str, list[float]] = {"slimkit": [], "torch-pruning": []}
    for _ in range(repeats):
        for tool, fn in (("slimkit", sk_prune), ("torch-pruning", tp_prune)):
            if tool in results and results[tool][0] is None:
                continue
            trial = copy.deepcopy(model)
            start = time.perf_counter()
            try:
                fn(trial, x, ratio)
                trial(x)  # a pruned model that cannot run counts as a failure
            except Exception as exc:  # noqa: BLE001  (we report every failure of either tool)
                results[tool] = (None, float("nan"), f"{type(exc).__name__}: {str(exc).splitlines()[0][:60]}")
                continue
            times[tool].append(time.perf_counter() - start)
            results[tool] = (trial, min(times[tool]), "")
    return results


def part1() -> None:
    print("## Part 1: prune every zoo model (L2, uniform ratio)\n")
    print(
        "| model | ratio | params slimkit | params torch-pruning | MACs slimkit | MACs torch-pruning "
        "| time slimkit | time torch-pruning | time ratio sk/tp |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    failures = {"slimkit": [], "torch-pruning": []}
    for name in sk.zoo.list():
        torch.manual_seed(0)
        model = sk.zoo.create(name).eval()
        x = example(name)
        p0, m0 = count_params(model), count_macs(model, x)
        for ratio in (0.3, 0.5):
            row = []
            results = timed_pair(model, x, ratio)
            for tool, (pruned, _, error) in results.items():
                if pruned is None and not any(f.startswith(f"{name} (") for f in failures[tool]):
                    failures[tool].append(f"{name} ({error})")
            for tool in ("slimkit", "torch-pruning"):
                pruned = results[tool][0]
                row.append("fails" if pruned is None else f"{count_params(pruned) / p0:.2f}x")
            for tool in ("slimkit", "torch-pruning"):
                pruned = results[tool][0]
                row.append("fails" if pruned is None else f"{count_macs(pruned, x) / m0:.2f}x")
            s_t, t_t = results["slimkit"][1], results["torch-pruning"][1]
            ratio_text = f"{s_t / t_t:.2f}" if t_t == t_t and s_t == s_t else "n/a"
            print(f"| {name} | {ratio} | {' | '.join(row)} | {s_t * 1e3:.1f} ms | {t_t * 1e3:.1f} ms | {ratio_text} |")
    print()
    for tool, names in failures.items():
        print(f"- {tool} fails on: {', '.join(names) if names else 'none'}")
    print()


def match_macs(fn, model: nn.Module, x: torch.Tensor, target: int) -> tuple[nn.Module, float]:  # noqa: ANN001
    """Smallest uniform ratio whose pruned copy has at most ``target`` MACs (bisection)."""
    lo, hi, best = 0.0, 0.95, None
    for _ in range(10):
        mid = (lo + hi) / 2
        trial = copy.deepcopy(model)
        fn(trial, x, mid)
        if count_macs(trial, x) <= target:
            hi, best = mid, trial
        else:
            lo = mid
    if best is None:
        best = copy.deepcopy(model)
        fn(best, x, hi)
    return best, hi


def part2(models: list[str], seeds: list[int], train_seeds: list[int], keeps: list[float], distill: bool) -> None:
    data = sk.data.load("mnist5k")
    print(f"## Part 2: accuracy on mnist5k at equal MACs ({FINETUNE_EPOCHS} fine-tuning epochs each)\n")
    print(
        "| model | trained with seed | MACs kept | tool | ratio | MACs after | test acc before fine-tune "
        f"| test acc after (fine-tuning seeds {', '.join(map(str, seeds))}) | mean |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    setups = {"seed_cnn": ({}, 20), "resnet_cifar": ({"depth": 20}, 15)}
    accuracies: Accuracies = {}

    def sk_prune_with_data(model: nn.Module, x: torch.Tensor, ratio: float) -> None:
        # as a user calls it: with training batches, so BatchNorm statistics are re-estimated after pruning
        prune_channels(model, ChannelPruneConfig(ratio=ratio, importance="l2"), x, data=data.train)

    for name, train_seed in itertools.product(models, train_seeds):
        kwargs, epochs = setups[name]
        torch.manual_seed(train_seed)
        model = sk.zoo.create_for(name, data, **kwargs)
        fit = {"augment": data.augment, "progress": False}
        sk.train.fit(model, data.train, val=data.val, epochs=epochs, seed=train_seed, **fit)
        base = sk.evaluate(model, data, latency=False).metrics["accuracy"]
        x = data.example[:1]
        m0 = count_macs(model, x)
        print(f"| {name} | {train_seed} | 1.00 | (trained) | 0 | {m0:,} | {100 * base:.2f}% | | {100 * base:.2f}% |")
        tools = {"slimkit": sk_prune_with_data, "torch-pruning": tp_prune}
        for keep in keeps:
            # each tool bisects its uniform ratio to at most keep * MACs; channel counts move in steps,
            # so if one lands more than 2% higher, it is pruned again to the other's MACs (equal MACs)
            found = {tool: match_macs(fn, model, x, int(keep * m0)) for tool, fn in tools.items()}
            achieved = {tool: count_macs(pruned, x) for tool, (pruned, _) in found.items()}
            high, low = sorted(achieved, key=achieved.get, reverse=True)
            if achieved[high] > 1.02 * achieved[low]:
                found[high] = match_macs(tools[high], model, x, achieved[low])
            # slimkit's own fine-tuning (`slimkit prune --finetune-epochs`, `prune_iteratively`) distils
            # from the unpruned model by default; torch-pruning leaves fine-tuning to the user: each tool's
            # model is fine-tuned both ways
            runs = []
            for tool, (pruned, ratio) in found.items():
                runs.append((tool, pruned, ratio, None))
                if distill:
                    runs.append((f"{tool} + distillation", pruned, ratio, model))
            for tool, pruned, ratio, teacher in runs:
                acc0 = sk.evaluate(pruned, data, latency=False).metrics["accuracy"]
                accs = []
                for seed in seeds:  # the same pruned model, fine-tuned with each seed
                    tuned = copy.deepcopy(pruned)
                    sk.train.fit(tuned, data.train, epochs=FINETUNE_EPOCHS, lr=5e-4, seed=seed, teacher=teacher, **fit)
                    accs.append(100 * sk.evaluate(tuned, data, latency=False).metrics["accuracy"])
                accuracies.setdefault((name, keep, tool), {})[train_seed] = accs
                macs = count_macs(pruned, x)
                each = " / ".join(f"{a:.2f}" for a in accs)
                print(
                    f"| {name} | {train_seed} | {keep:.2f} | {tool} | {ratio:.3f} | {macs:,} ({macs / m0:.3f}x) "
                    f"| {100 * acc0:.2f}% | {each} | {statistics.mean(accs):.2f}% |",
                    flush=True,
                )
    print()
    summarise(accuracies)


Accuracies = dict[tuple[str, float, str], dict[int, list[float]]]  # (model, keep, tool) -> {train seed: per seed}


def read_rows(paths: list[Path]) -> Accuracies:
    """The part-2 rows (``| model | trained with seed | MACs kept | tool | ... |``) of saved outputs."""
    accuracies: Accuracies = {}
    for path in paths:
        for line in path.read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 9 and cells[1].isdigit() and cells[7]:  # not the "(trained)" rows
                accs = [float(a) for a in cells[7].split("/")]
                accuracies.setdefault((cells[0], float(cells[2]), cells[3]), {})[int(cells[1])] = accs
    return accuracies


def summarise(accuracies: Accuracies) -> None:
    """Each slimkit row against each torch-pruning row over the trained models both have (pairs: the
    same trained model and fine-tuning seed); the per-model test and interval treat each trained
    model's mean difference as one observation."""
    from scipy import stats

    print(
        "| model | MACs kept | slimkit | torch-pruning | trained models | pairs | mean slimkit "
        "| mean torch-pruning | difference | wins / ties / losses | paired t-test p | p over models "
        "| 95% interval over models |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (name, keep, ours), mine in accuracies.items():
        if not ours.startswith("slimkit"):
            continue
        for theirs in [t for n, k, t in accuracies if (n, k) == (name, keep) and t.startswith("torch-pruning")]:
            other = accuracies[name, keep, theirs]
            models = sorted(mine.keys() & other.keys())
            a = [v for m in models for v in mine[m]]
            b = [v for m in models for v in other[m]]
            d = [x - y for x, y in zip(a, b, strict=True)]
            per_model = [statistics.mean(mine[m]) - statistics.mean(other[m]) for m in models]
            wins, losses = sum(v > 1e-9 for v in d), sum(v < -1e-9 for v in d)
            p = stats.ttest_rel(a, b).pvalue if len(d) > 1 and any(d) else float("nan")
            p_models, interval = float("nan"), "n/a"
            if len(models) > 2:
                p_models = stats.ttest_1samp(per_model, 0).pvalue
                half = stats.t.ppf(0.975, len(models) - 1) * stats.sem(per_model)
                interval = f"{statistics.mean(per_model) - half:+.2f} to {statistics.mean(per_model) + half:+.2f}"
            print(
                f"| {name} | {keep:.2f} | {ours} | {theirs} | {len(models)} | {len(d)} | {statistics.mean(a):.2f}% | "
                f"{statistics.mean(b):.2f}% | {statistics.mean(d):+.3f} | {wins} / {len(d) - wins - losses} / "
                f"{losses} | {p:.3f} | {p_models:.3f} | {interval} |"
            )
    print()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("1", "2", "all"), default="all", help="which part to run")
    parser.add_argument("--models", nargs="+", default=["seed_cnn", "resnet_cifar"], help="models of part 2")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1], help="fine-tuning seeds of part 2")
    parser.add_argument("--train-seeds", nargs="+", type=int, default=[0], help="seeds of part 2's trained models")
    parser.add_argument("--keeps", nargs="+", type=float, default=[0.5, 0.25], help="MACs budgets of part 2")
    parser.add_argument("--summary", nargs="+", type=Path, help="only pool the part-2 rows of these saved outputs")
    parser.add_argument(
        "--no-distill",
        dest="distill",
        action="store_false",
        help="part 2 without the rows fine-tuned by distillation from the unpruned model (slimkit's default)",
    )
    args = parser.parse_args()
    if args.summary:
        summarise(read_rows(args.summary))
        raise SystemExit
    part = args.part
    print(
        f"torch {torch.__version__}, torch-pruning {tp.__version__}, slimkit {sk.__version__}, "
        f"{torch.get_num_threads()} threads\n"
    )
    if part in ("1", "all"):
        part1()
    if part in ("2", "all"):
        part2(args.models, args.seeds, args.train_seeds, args.keeps, args.distill)
