"""Data-parallel fine-tuning with ``torch.distributed`` (launched by ``torchrun``).

Started by ``torchrun --nproc_per_node N -m slimkit optimize ...`` (or the user's own torchrun script
calling :func:`slimkit.optimize.optimize`), every process loads the model and the data; the loop
itself runs on rank 0 only, so every decision (sensitivity, widths, back-off, the chosen candidate)
is made once and every output is written once. When the loop fine-tunes, rank 0 sends the candidate
(its architecture and weights) to the other ranks and all of them train it together under
``DistributedDataParallel``, each on its shard of the training data (``DistributedSampler``).
Sensitivity probes are dealt between the ranks; every validation (of a candidate, or of an epoch
inside fine-tuning) is shared: each rank scores every n-th batch and all count every scored batch
in order, so the metrics equal one process's; rank 0's record, clock and callbacks decide. After
each fine-tuning the ranks compare hashes of their weights: they must be equal.

:func:`fit` called by every rank of a user's script trains the same way (DDP, sharded batches).
A crash of one process ends the job (torchrun stops the others); rerun with ``--resume``.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler
from torch.utils.data.distributed import DistributedSampler

from slimkit.core.errors import SlimkitError

__all__ = ["is_distributed", "lead", "rank", "setup", "shard", "world_size"]

TIMEOUT = datetime.timedelta(minutes=30)  # a collective waits this long for a rank that stopped answering


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return _dist().get_rank() if is_distributed() else 0


def world_size() -> int:
    return _dist().get_world_size() if is_distributed() else 1


def setup(device: torch.device) -> torch.device:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1): gloo on the CPU, NCCL
    on CUDA (each process on the GPU of its ``LOCAL_RANK``). Returns the device this process uses."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    dist = _dist()
    if not dist.is_available():
        raise SlimkitError("started by torchrun, but this PyTorch build has no torch.distributed")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    _stop_quietly_on_sigterm()
    return device


def _stop_quietly_on_sigterm() -> None:
    """torchrun ends the other processes with SIGTERM when one fails: say so in one line."""

    def stop(signum: int, frame: Any) -> None:
        print(
            f"slimkit: rank {rank()} stopped: another process of this torchrun job ended (see its message); "
            "rerun with --resume to continue from the last saved candidate",
            file=sys.stderr,
            flush=True,
        )
        os._exit(2)

    if os.environ.get("TORCHELASTIC_RUN_ID") is not None:
        signal.signal(signal.SIGTERM, stop)


def lead(backend: Any, original: Any, run: Callable[[], Any]) -> Any:
    """``run()`` (the optimize loop) on rank 0, which sends the work it shares to the other ranks
    (``backend.follow``) and releases them at the end; None on the other ranks."""
    if not is_distributed():
        return run()
    train = getattr(getattr(backend, "data", None), "train", None)
    if train is not None and getattr(getattr(backend, "user", None), "finetune", None) is None:
        shard(train)  # fails now, on every rank, when the training data cannot be split
    if rank() != 0:
        backend.follow(original)
        return None
    try:
        return run()
    finally:
        broadcast(("stop",))


def broadcast(value: Any = None) -> Any:
    """Rank 0's ``value`` on every rank (pickled between the job's own processes)."""
    box = [value]
    _dist().broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    out: list[Any] = [None] * world_size()
    _dist().all_gather_object(out, value)
    return out


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank."""
    dist = _dist()
    nccl = dist.get_backend() == "nccl"  # NCCL reduces CUDA tensors only
    t = torch.tensor([int(flag)], device=torch.device("cuda", torch.cuda.current_device()) if nccl else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank: DDP shares them before each forward,
    so after the last step each rank holds those of its own last batch."""
    for t in model.buffers():
        _dist().broadcast(t.data, src=0)


def ddp(model: nn.Module) -> nn.Module:
    """``model`` under DistributedDataParallel (parameters that a forward leaves unused allowed:
    e.g. a pooler that mean pooling skips)."""
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


class _Sharded:
    """A loader over this rank's shard whose sampler is reshuffled every pass (``set_epoch``)."""

    def __init__(self, loader: DataLoader, sampler: DistributedSampler) -> None:
        self.loader, self.sampler, self.passes = loader, sampler, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        self.sampler.set_epoch(self.passes)
        self.passes += 1
        return iter(self.loader)


def shard(loader: Iterable, seed: int = 0) -> Iterable:
    """This rank's share of a training ``loader``: a DataLoader over a map-style dataset (a slimkit
    :class:`~slimkit.data.Dataset`'s, or the user's with any batch size) re-sampled by a
    ``DistributedSampler`` (shuffled if the loader shuffled); a loader that has one already is the
    user's own sharding, kept as it is. Anything else cannot be split here: a
    one-line error (shard an ``IterableDataset`` by ``torch.distributed.get_rank()`` yourself and
    pass it as a loader whose class has ``sharded = True``)."""
    if getattr(loader, "sharded", False) or getattr(getattr(loader, "dataset", None), "sharded", False):
        return loader
    samplers = (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None))
    if any(isinstance(s, DistributedSampler) for s in samplers):  # the user's own sharding
        return loader
    n = world_size()
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        raise SlimkitError(
            f"cannot split the training data across {n} processes: it is a {type(loader).__name__}"
            f"{' over an IterableDataset' if isinstance(loader, DataLoader) else ''}, not a DataLoader over a "
            "map-style dataset; give such a loader, or shard the stream by torch.distributed.get_rank() yourself "
            "and set sharded = True on its dataset"
        )
    data = loader.dataset
    if len(data) < n:  # type: ignore[arg-type]
        raise SlimkitError(f"cannot split {len(data)} training samples across {n} processes")  # type: ignore[arg-type]
    if loader.batch_size is None and isinstance(loader.sampler, BatchSampler):  # whole batches indexed at once
        inner = loader.sampler
        shuffle = isinstance(inner.sampler, RandomSampler)
        sampler = DistributedSampler(data, n, rank(), shuffle=shuffle, seed=seed)  # type: ignore[arg-type]
        batches = BatchSampler(sampler, inner.batch_size, inner.drop_last)
        return _Sharded(DataLoader(data, sampler=batches, batch_size=None, collate_fn=loader.collate_fn), sampler)
    shuffle = isinstance(loader.sampler, RandomSampler)
    sampler = DistributedSampler(data, n, rank(), shuffle=shuffle, seed=seed)  # type: ignore[arg-type]
    sharded = DataLoader(
        data,
        batch_size=loader.batch_size,
        sampler=sampler,
        collate_fn=loader.collate_fn,
        drop_last=loader.drop_last,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
    )
    return _Sharded(sharded, sampler)
