"""Two processes against one under torchrun: the sensitivity phase and one fine-tuning epoch.

Both phases run through the optimize loop's own backend (``TorchBackend.probe`` and ``.finetune``):
with 2 processes, rank 0 sends the work, the probes are split between the ranks and the epoch runs
under DDP on half the batches each. Every process has 1 thread (``OMP_NUM_THREADS=1``); the runs
alternate 1 and 2 processes ``--repeats`` times and the speed-up is the median of the paired ratios.
Run it on an otherwise idle machine:

    python bench/distributed.py            # ~5 min: resnet_cifar (depth 20) on mnist5k
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def worker(depth: int) -> None:
    import copy

    import torch

    import slimkit as sk
    from slimkit import distributed
    from slimkit.optimize import FineTuneConfig, SensitivityPruneConfig, Target
    from slimkit.optimize.backend import TorchBackend

    distributed.setup(torch.device("cpu"))
    data = sk.data.load("mnist5k")
    torch.manual_seed(0)
    model = sk.zoo.create_for("resnet_cifar", data, depth=depth).eval()
    backend = TorchBackend(model, data)
    if distributed.rank() != 0:
        backend.follow(model)
        return
    step = SensitivityPruneConfig(target_macs=0.5)
    target = Target(macs=0.5, max_drop=1.0).for_task("accuracy")
    start = time.perf_counter()
    groups = backend.probe(model, step, target)
    probed = time.perf_counter()
    backend.finetune(copy.deepcopy(model), FineTuneConfig(epochs=1, lr=1e-3), model)
    tuned = time.perf_counter()
    if distributed.is_distributed():
        distributed.broadcast(("stop",))
    row = {"processes": distributed.world_size(), "groups": len(groups)}
    print(json.dumps({**row, "sensitivity_s": probed - start, "epoch_s": tuned - probed}), flush=True)


def run(processes: int, depth: int) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    out = subprocess.run(
        [*cmd, __file__, "--worker", "--depth", str(depth)], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("{")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.depth)
    ratios: dict[str, list[float]] = {"sensitivity_s": [], "epoch_s": []}
    for i in range(args.repeats):
        one, two = run(1, args.depth), run(2, args.depth)
        for k in ratios:
            ratios[k].append(one[k] / two[k])
        print(f"pair {i + 1}: 1 process {one}, 2 processes {two}", flush=True)
    for k, values in ratios.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"{k[:-2]}: 2 processes {statistics.median(values):.2f}x as fast as 1 (median of {shown})")


if __name__ == "__main__":
    main()
