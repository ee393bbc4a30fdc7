"""What a model costs: parameters, multiply-accumulates, bytes on disk, measured latency.

MACs come from ``torch.utils.flop_counter`` (convolutions, matmuls, attention) plus formulas for
the recurrent layers that it does not count (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``). PyTorch's
attention fast path is switched off while counting, because the counter cannot see into it.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from slimkit.core.model import eval_mode

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def count_params(model: nn.Module) -> int:
    """Number of parameters (a tensor shared by several layers counts once)."""
    return sum(p.numel() for p in model.parameters())


def rnn_macs(rnn: nn.RNNBase, batch: int, steps: int) -> int:
    """Multiply-accumulates of one ``nn.RNN``/``nn.LSTM``/``nn.GRU`` call over ``steps`` time steps.

    Per step, layer and direction a cell computes ``gates * hidden * (input + state)`` products,
    where ``state`` is ``proj_size`` for a projected LSTM, plus ``proj_size * hidden`` for the
    projection. Element-wise gate arithmetic is not counted (as for activations elsewhere).
    """
    gates = _GATES[rnn.mode]
    dirs = 2 if rnn.bidirectional else 1
    proj = getattr(rnn, "proj_size", 0)
    state = proj or rnn.hidden_size
    total = 0
    for layer in range(rnn.num_layers):
        inp = rnn.input_size if layer == 0 else state * dirs
        total += gates * rnn.hidden_size * (inp + state) + proj * rnn.hidden_size
    return total * dirs * batch * steps


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:  # noqa: ANN001
    return sdpa_flop_count(query_shape, key_shape, value_shape)


@contextlib.contextmanager
def _replace_rnn_counts(model: nn.Module, counter: FlopCounterMode, adjust: list[int]) -> Iterator[None]:
    """Count every recurrent layer by :func:`rnn_macs` instead of whatever the counter saw inside it.

    (Depending on the kernel, the counter sees a GRU's matmuls but nothing of a fused LSTM.)
    """
    starts: list[int] = []

    def pre(_m: nn.Module, _args: tuple) -> None:
        starts.append(counter.get_total_flops())

    def post(module: nn.RNNBase, args: tuple, _out: object) -> None:
        seen = counter.get_total_flops() - starts.pop()
        x = args[0]
        if isinstance(x, nn.utils.rnn.PackedSequence):
            macs = rnn_macs(module, 1, int(x.batch_sizes.sum()))
        elif x.dim() == 2:  # unbatched (T, input)
            macs = rnn_macs(module, 1, x.shape[0])
        else:
            batch, steps = (x.shape[0], x.shape[1]) if module.batch_first else (x.shape[1], x.shape[0])
            macs = rnn_macs(module, batch, steps)
        adjust[0] += 2 * macs - seen

    rnns = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
    handles = [m.register_forward_pre_hook(pre) for m in rnns] + [m.register_forward_hook(post) for m in rnns]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def count_macs(model: nn.Module, example: Any) -> int:
    """Multiply-accumulates for one sample (``example`` is a batch, or a tuple / dict of input batches;
    its first row is used)."""
    from slimkit.graph import first_sample
    from slimkit.graph.trace import call_model

    x = first_sample(example)
    sdpa = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    counter = FlopCounterMode(display=False, custom_mapping={sdpa: _sdpa_cpu_flops})
    adjust = [0]  # flops
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with eval_mode(model), torch.no_grad(), counter, _replace_rnn_counts(model, counter, adjust):
            call_model(model, x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return (counter.get_total_flops() + adjust[0]) // 2


def batch_of(example: Any, size: int) -> Any:
    """``size`` rows built by repeating the rows of ``example`` (a tensor, or a tuple / dict of them)."""
    from slimkit.graph import map_batch

    def grow(t: torch.Tensor) -> torch.Tensor:
        reps = -(-size // len(t))
        return t.repeat(reps, *([1] * (t.dim() - 1)))[:size].contiguous()

    return map_batch(example, grow)


def measure_latency(run: Callable[[], object], *, warmup: int = 5, runs: int = 30) -> float:
    """Median wall time of ``run()`` in milliseconds, after ``warmup`` untimed calls."""
    return measure_latencies([run], warmup=warmup, runs=runs)[0]


SETTLE_S = 0.05  # untimed calls that open each turn of latency_samples (see there)


def latency_samples(
    fns: Sequence[Callable[[], object]], *, warmup: int = 5, runs: int = 30, turns: int = 1
) -> list[list[float]]:
    """Wall times (ms) of ``runs`` calls of each function: the functions take ``turns`` turns each,
    a turn being ``runs / turns`` consecutive timed calls opened by untimed ones (``warmup`` in
    the first turn, then at least one and until ``SETTLE_S`` seconds have passed).

    Taking turns keeps a comparison fair when other work shares the machine: a busy spell slows
    every function alike instead of the one that happened to run then. Turns are blocks of calls,
    not single calls, and open with untimed ones: right after another ONNX Runtime session ran, its
    idle worker threads keep spinning on the cores for tens of milliseconds. Measured on a
    MobileNetV2's four files at batch 64 on 2 cores (``bench/latency_turns.py``), alternating single
    calls timed them at 1.8-2.9x their time alone; turns opened by 50 ms of untimed calls matched
    the times alone within 1%.
    """
    times: list[list[float]] = [[] for _ in fns]
    for turn in range(turns):
        n = runs * (turn + 1) // turns - runs * turn // turns
        for fn, t in zip(fns, times, strict=True):
            settled = time.perf_counter() + SETTLE_S
            for _ in range(warmup if turn == 0 else 0):
                fn()
            fn()
            while time.perf_counter() < settled:
                fn()
            for _ in range(n):
                start = time.perf_counter()
                fn()
                t.append((time.perf_counter() - start) * 1e3)
    return times


def measure_latencies(
    fns: Sequence[Callable[[], object]], *, warmup: int = 5, runs: int = 30, rounds: int = 1
) -> list[float]:
    """Each function's wall time in milliseconds: the smallest of ``rounds`` medians of ``runs``
    calls, the functions taking turns (one per round, :func:`latency_samples`)."""
    samples = latency_samples(fns, warmup=warmup, runs=runs * rounds, turns=rounds)
    return [min(statistics.median(t[r * runs : (r + 1) * runs]) for r in range(rounds)) for t in samples]


def torch_latency(
    model: nn.Module, example: Any, batch_sizes: tuple[int, ...] = (1, 64), runs: int = 30
) -> dict[str, float]:
    """Median eager latency in ms per batch size, keys like ``"torch/b64"``, on the model's device
    (inputs placed there first; on CUDA each call waits for the device to finish)."""
    from slimkit.core.device import model_device, to_device
    from slimkit.graph.trace import call_model

    device = model_device(model)
    wait = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(x: Any) -> None:
        call_model(model, x)
        wait()

    out = {}
    with eval_mode(model), torch.inference_mode():
        for b in batch_sizes:
            x = to_device(batch_of(example, b), device)
            out[f"torch/b{b}"] = measure_latency(lambda x=x: run(x), runs=runs)
    return out


def onnx_latency(
    paths: Sequence[Any],
    example: Any,
    batch: int,
    runs: int = 20,
    runtime: str = "onnxruntime",
    *,
    rounds: int = 1,
    warmup: int = 3,
) -> list[float]:
    """Latencies (ms) of the ONNX files ``paths`` on ``runtime`` on ``batch`` rows, the files
    taking turns (their ratios stay fair when other processes load the CPU): the smallest of
    ``rounds`` medians of ``runs`` calls each (:func:`measure_latencies`)."""
    from slimkit.graph.trace import call_model
    from slimkit.io.onnx import OnnxModel

    x = batch_of(example, batch)
    runners = [OnnxModel(p, runtime=runtime) for p in paths]
    return measure_latencies([lambda r=r: call_model(r, x) for r in runners], warmup=warmup, runs=runs, rounds=rounds)
