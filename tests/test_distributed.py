"""torchrun: data-parallel fine-tuning, rank 0 deciding and writing, sharded data, a lost process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import slimkit as sk
from slimkit import distributed
from slimkit.core.errors import SlimkitError

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _shards(loader: object, monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The sample ids each of 2 ranks trains on in one pass."""
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    out = []
    for r in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        out.append([int(i) for batch in distributed.shard(loader) for i in batch[0].reshape(-1)])
    return out


def test_shard_splits_every_map_style_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = torch.arange(100)
    data = sk.data.Dataset(
        name="ids", splits={s: (ids.float(), ids) for s in ("train", "val", "test")}, classes=["a"], batch_size=8
    )
    user = DataLoader(TensorDataset(ids, ids), batch_size=16, shuffle=True)
    for loader in (data.train, user):
        a, b = _shards(loader, monkeypatch)
        assert len(a) == len(b) == 50 and sorted(a + b) == list(range(100))  # disjoint halves, nothing lost
        assert a != sorted(a)  # still shuffled
    own = DataLoader(TensorDataset(ids, ids), batch_size=16, sampler=DistributedSampler(ids, 2, 0))
    assert distributed.shard(own) is own  # the user's own sampler is kept


class _Stream(IterableDataset):
    def __iter__(self):  # noqa: ANN204
        yield from zip(torch.randn(8, 3), torch.zeros(8, dtype=torch.long), strict=True)


def test_shard_refuses_a_stream_it_cannot_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(SlimkitError, match="cannot split the training data across 2 processes.*IterableDataset"):
        distributed.shard(DataLoader(_Stream(), batch_size=4))
    stream = _Stream()
    stream.sharded = True  # the user split it by rank
    loader = DataLoader(stream, batch_size=4)
    assert distributed.shard(loader) is loader


SCRIPT = """
import hashlib, json, sys, torch
import slimkit as sk
from slimkit import distributed
from slimkit.optimize import FineTuneConfig, Recipe, SensitivityPruneConfig, Target, optimize

torch.set_num_threads(1)
data = sk.data.load("digits")
torch.manual_seed(0)
model = sk.zoo.create_for("resnet_cifar", data, depth=8)
torch.distributed.init_process_group("gloo")
sk.train.fit(model, data.train, val=data.val, epochs=2, lr=3e-3, progress=False)  # every rank, DDP
digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in model.state_dict().values())).hexdigest()
task = sk.task.Classification()
shared = task.evaluate(model, data.loader("val", 20, shuffle=False), shared=True)  # 9 batches: 5 and 4
alone = task.evaluate(model, data.loader("val", 20, shuffle=False))
recipe = Recipe((SensitivityPruneConfig(target_macs=0.5, probe_ratios=(0.5,)), FineTuneConfig(epochs=2, lr=1e-3)))
result = optimize(model, data, Target(macs=0.5, max_drop=10.0), recipe=recipe, quantize=False, output=sys.argv[1])
same = all(abs(shared[k] - alone[k]) < 1e-9 for k in alone)
print(json.dumps({"rank": distributed.rank(), "fit": digest, "same": same, "result": result and result.target_met}))
"""


def test_torchrun_fine_tunes_together_and_writes_once(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(SCRIPT))
    run = subprocess.run(
        [*TORCHRUN, str(script), str(tmp_path / "run")], capture_output=True, text=True, env=ENV, timeout=600
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith('{"rank"')]
    rows = sorted(map(json.loads, lines), key=lambda r: r["rank"])
    assert [r["rank"] for r in rows] == [0, 1]
    assert rows[0]["fit"] == rows[1]["fit"]  # both ranks hold the same weights after DDP training
    assert rows[0]["same"] and rows[1]["same"]  # validation shared between ranks scores as one process
    assert rows[0]["result"] is True and rows[1]["result"] is None  # rank 0 ran the loop
    assert (tmp_path / "run" / "checkpoint").is_dir() and (tmp_path / "run" / "report.json").is_file()
    assert not list(tmp_path.glob("run.*"))  # nothing written beside the one output folder


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_and_resume_finishes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = sk.data.load("digits")
    model = sk.zoo.create_for("resnet_cifar", data, depth=8)
    sk.train.fit(model, data.train, epochs=2, lr=3e-3, progress=False)
    sk.save(model, tmp_path / "ckpt", example=data.example)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(
        '{"steps": [{"SensitivityPruneConfig": {"target_macs": 0.7, "probe_ratios": [0.5]}},'
        ' {"FineTuneConfig": {"epochs": 1, "lr": 1e-3}},'
        ' {"SensitivityPruneConfig": {"target_macs": 0.5, "probe_ratios": [0.5]}},'
        ' {"FineTuneConfig": {"epochs": 60, "lr": 1e-3}}]}'
    )
    args = [*TORCHRUN, "-m", "slimkit", "optimize", tmp_path / "ckpt", "-d", "digits", "--target", "macs=0.5"]
    args += ["--max-drop", "10", "--recipe", recipe, "-o", tmp_path / "run", "--no-quantize"]
    log = tmp_path / "log.txt"
    with log.open("w") as out:
        job = subprocess.Popen(list(map(str, args)), stdout=out, stderr=subprocess.STDOUT, env=ENV)
        deadline = time.monotonic() + 300
        while log.read_text().count("widths:") < 2 and time.monotonic() < deadline:  # the 2nd fine-tuning next
            time.sleep(0.2)
        time.sleep(2)
        ranks = [p for p in _children(job.pid) if b"RANK=1\0" in Path(f"/proc/{p}/environ").read_bytes()]
        assert len(ranks) == 1
        os.kill(ranks[0], signal.SIGKILL)
        killed = time.monotonic()
        job.wait(timeout=60)
    assert time.monotonic() - killed < 30 and job.returncode != 0
    errors = [line for line in log.read_text().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "another process of this torchrun job ended" in errors[0]
    again = subprocess.run(list(map(str, [*args, "--resume"])), capture_output=True, text=True, env=ENV, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed after step 2" in again.stdout and (tmp_path / "run" / "report.json").is_file()


def _children(pid: int) -> list[int]:
    """Every descendant process of ``pid``."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").iterdir():
            kids = (task / "children").read_text().split()
            found += map(int, kids)
            todo += map(int, kids)
    return found
