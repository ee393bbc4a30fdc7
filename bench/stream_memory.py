"""Peak memory of ``optimize`` on a data stream does not grow with the dataset.

The same regression model is optimized (sensitivity, pruning, fine-tuning in steps, validation,
test) on an ``IterableDataset`` that generates its samples on the fly: once with 10 thousand samples,
once with 10 million. Each run is a fresh process; the figure is its peak RSS (``ru_maxrss``). Goal:
the 10-million run within +200 MB of the 10-thousand run.

    python bench/stream_memory.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset

FEATURES = 16


class Stream(IterableDataset):
    """``n`` samples ``(x, y)`` of a fixed random non-linear function, generated 4096 at a time."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed)
        w = torch.randn(FEATURES, generator=torch.Generator().manual_seed(99))
        done = 0
        while done < self.n:
            k = min(4096, self.n - done)
            x = torch.randn(k, FEATURES, generator=g)
            y = torch.tanh(x @ w / 4) + 0.1 * x[:, 0] * x[:, 1]
            yield from zip(x, y, strict=True)
            done += k


def child(n: int) -> None:
    import slimkit as sk
    from slimkit.optimize import Target, optimize

    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = sk.data.Loaders(
        train=DataLoader(Stream(n, seed=0), batch_size=256),
        val=DataLoader(Stream(4096, seed=1), batch_size=512),
        test=DataLoader(Stream(4096, seed=2), batch_size=512),
        task="regression",
        name=f"stream-{n}",
    )
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 1),
    )
    sk.train.fit(model, data.train, val=data.val, task="regression", epochs=2, steps_per_epoch=200, progress=False)
    start = time.perf_counter()
    result = optimize(model, data, Target(params=0.3, max_drop=0.02), steps_per_epoch=100, quantize=False)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "n": n,
                "peak_mb": peak_mb,
                "seconds": time.perf_counter() - start,
                "rmse": result.after.metrics["rmse"],
                "target_met": result.target_met,
            }
        )
    )


def main() -> None:
    rows = []
    for n in (10_000, 10_000_000):
        out = subprocess.run([sys.executable, __file__, "--child", str(n)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1])
    grew = rows[1]["peak_mb"] - rows[0]["peak_mb"]
    print(
        f"peak RSS: {rows[0]['peak_mb']:.0f} MB on 10k samples, {rows[1]['peak_mb']:.0f} MB on 10M: {grew:+.0f} MB "
        f"({'within' if grew <= 200 else 'OVER'} the +200 MB goal)"
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
    else:
        main()
