"""``optimize`` beyond classification, on real data: each task through the same loop with a target and a
quality constraint in the task's own metric, measured once on the test split.

- MovieLens-100k rating regression (RMSE): params <= 0.25x, RMSE rise <= 0.01;
- MovieLens-100k per-user ranking (AUC over each user's held-out ratings): params <= 0.25x, drop <= 0.005;
- segmentation of canvases of real MNIST digits (a U-Net written here, mean IoU): MACs <= 0.25x, drop <= 1 point.
  Its training canvases are composed anew on every pass from the 3,500 training digits (an
  ``IterableDataset``: the data a user generates on the fly); validation and test are ``mnist-canvas``'s
  fixed canvases of the other 1,500 digits.

The originals are trained here (seeded). Run ``python bench/optimize_tasks.py`` (``--only ranking`` for one
case); figures go to bench/RESULTS-tasks.md by hand.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

import slimkit as sk
from slimkit.data.builtin import canvas_digits, compose_canvases
from slimkit.evaluate import count_macs, count_params
from slimkit.optimize import FineTuneConfig, Recipe, SensitivityPruneConfig, Target, optimize
from slimkit.simplify import FoldConfig


def recommender(data: Any, task: str, epochs: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = sk.zoo.create_for("recsys_mlp", data, embed_dim=32, hidden=[128, 64])
    sk.train.fit(model, data.train, val=data.val, task=task, epochs=epochs, lr=2e-3, progress=False)
    return model


class FreshCanvases(IterableDataset):
    """Batches of 32 training canvases, ``count`` per pass, composed anew on every pass (seeded by the
    pass) from the training digits of ``mnist-canvas``."""

    def __init__(self, count: int = 3000, seed: int = 0, batch: int = 32) -> None:
        self.digits = canvas_digits(seed)["train"]
        self.count, self.seed, self.batch, self.passes = count, seed, batch, 0

    def __len__(self) -> int:
        return -(-self.count // self.batch)

    def __iter__(self) -> Any:
        rng = np.random.default_rng((self.seed, self.passes))
        self.passes += 1
        for start in range(0, self.count, self.batch):
            x, y = compose_canvases(*self.digits, min(self.batch, self.count - start), rng)
            yield torch.from_numpy(x), torch.from_numpy(y)


def canvas_stream() -> sk.data.Loaders:
    fixed = sk.data.load("mnist-canvas")
    return sk.data.Loaders(
        train=DataLoader(FreshCanvases(), batch_size=None),
        val=fixed.loader("val"),
        test=fixed.loader("test"),
        example=fixed.example,
        task="dense",
        name="mnist-canvas, training canvases composed every pass",
    )


def unet(data: Any, epochs: int, width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = sk.zoo.create("unet", in_channels=1, num_classes=11, input_size=48, width=width, depth=2)
    sk.train.fit(model, data.train, val=data.val, task="dense", epochs=epochs, lr=3e-3, progress=False)
    return model


CASES: dict[str, dict[str, Any]] = {
    "regression": {
        "data": "movielens-100k-ratings",
        "build": lambda d: recommender(d, "regression", 8),
        "target": Target(params=0.25, max_drop=0.01),
        "options": {"finetune_epochs": 10, "rounds": 3},
    },
    "ranking": {
        "data": "movielens-100k-ranking",
        "build": lambda d: recommender(d, "ranking", 8),
        "target": Target(params=0.25, max_drop=0.005),
        # the auto recipe: its learning-rate search finds the recommender's rate (at the image
        # classifiers' 5e-4 the pruned recommender is still far from recovered after 10 epochs)
        "options": {"finetune_epochs": 6, "rounds": 3},
    },
    "segmentation": {
        "data": canvas_stream,
        # width 32: this data rewards width (16 -> 24: +4 points of val mIoU; a third level instead,
        # depth 3 at width 24, 1.45x the MACs: -1.7 points)
        "build": lambda d: unet(d, 30, 32),
        "target": Target(macs=0.25, max_drop=1.0),
        # five geometric rounds (0.76x, 0.57x, 0.43x, 0.33x, 0.25x), each recovered at the original's
        # learning rate (the pruned U-Net is still improving after 6 epochs at the auto recipe's 5e-4),
        # then a longer, gentler recovery
        "options": {
            "recipe": Recipe(
                (
                    SensitivityPruneConfig(target_macs=0.25, rounds=5, round_to=8),
                    FineTuneConfig(epochs=8, lr=3e-3),
                    FineTuneConfig(epochs=12, lr=1e-3),
                    FoldConfig(),
                )
            )
        },
    },
}


def original(name: str, data: Any, cache: Path | None) -> tuple[torch.nn.Module, float]:
    """The case's trained original and the seconds its training took (0: loaded from ``cache``)."""
    folder = cache / name if cache is not None else None
    if folder is not None and folder.is_dir():
        return sk.load(folder), 0.0
    start = time.perf_counter()
    model = CASES[name]["build"](data)
    if folder is not None:
        sk.save(model, folder, example=data.example)
    return model, time.perf_counter() - start


def run(name: str, cache: Path | None = None) -> dict[str, Any]:
    case = CASES[name]
    torch.set_num_threads(2)
    data = case["data"]() if callable(case["data"]) else sk.data.load(case["data"])
    model, trained = original(name, data, cache)
    result = optimize(model, data, case["target"], quantize=False, log=print, **case["options"])
    m = result.target.metric
    row = {
        "case": name,
        "data": data.name,
        "target": str(result.target),
        "met on validation": result.target_met,
        f"test {m} before": result.before.metrics[m],
        f"test {m} after": result.after.metrics[m],
        "params x": count_params(result.model) / count_params(model),
        "MACs x": count_macs(result.model, data.example) / count_macs(model, data.example),
        "train s": trained,
        "optimize s": result.seconds,
    }
    print(result.comparison)
    print(row)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument(
        "--cache", type=Path, help="keep each trained original here and reuse it (delete it after changing a case)"
    )
    args = parser.parse_args()
    rows = [run(name, args.cache) for name in args.only.split(",")]
    for row in rows:
        print(" | ".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
