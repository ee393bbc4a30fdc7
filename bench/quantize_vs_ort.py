"""slimkit int8 vs plain ONNX Runtime quantization, plus low-rank and clustering on seed_cnn.

For seed_cnn (mnist5k), resnet_cifar (ResNet-20 on mnist5k) and text_lstm (rotten-tomatoes), in
one run: train briefly with ``slimkit.train.fit``, export fp32 ONNX, then compare

- fp32 ONNX,
- slimkit int8 (``slimkit.compress.quantize``, mode auto, ``max_drop=0.3``),
- ``onnxruntime.quantization.quantize_static`` with default settings (same calibration batches),
- ``onnxruntime.quantization.quantize_dynamic`` with default settings,

on test accuracy, file size and ONNX Runtime latency at batch 1 and 64 (median, ``slimkit.evaluate``).
Then seed_cnn's Dense 1024 -> 512 by PCA (units), PCA-factor and SVD before any fine-tuning, and
16-centroid weight sharing with tied fine-tuning. Prints markdown tables.

    .venv/bin/python bench/quantize_vs_ort.py            # ~10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import slimkit as sk
from slimkit.compress import ClusterConfig, LowRankConfig, QuantizeConfig, quantize, tied
from slimkit.compress.quantize import _calibration_reader
from slimkit.core.hardware import has_vnni
from slimkit.evaluate import count_params, predict
from slimkit.evaluate.cost import batch_of, measure_latency
from slimkit.io import OnnxModel

MODELS = {  # name -> (dataset, zoo kwargs, fit kwargs)
    "seed_cnn": ("mnist5k", {}, {"epochs": 4}),
    "resnet_cifar": ("mnist5k", {"depth": 20}, {"epochs": 2, "lr": 3e-3}),
    "text_lstm": ("rotten-tomatoes", {}, {"epochs": 3, "lr": 3e-3}),
}


def measure(paths: dict[str, Path], data: sk.data.Dataset, runs: int, threads: int) -> dict[str, dict[str, float]]:
    """Test metrics (``slimkit.evaluate``) and ORT latency; latency is the smallest of 3 interleaved
    medians of ``runs`` calls per variant, so that other jobs on the machine bias no variant."""
    models = {k: OnnxModel(p, threads=threads) for k, p in paths.items()}
    out = {}
    for k, m in models.items():
        r = sk.evaluate(m, data, latency=False)
        probs, labels = predict(m, data.loader("test", 256, shuffle=False))  # per-sample, for the paired test
        right = probs.argmax(1) == labels
        out[k] = {"acc": 100 * right.mean(), "right": right, "f1": 100 * r.metrics["f1"], "bytes": r.bytes}
    for b in (1, 64):
        x = batch_of(data.example, b)
        for _ in range(3):
            for k, m in models.items():
                t = measure_latency(lambda m=m, x=x: m(x), runs=runs)
                out[k][f"b{b}"] = min(out[k].get(f"b{b}", t), t)
    return out


def ort_defaults(fp32: Path, out: Path, data: sk.data.Dataset, cfg: QuantizeConfig) -> dict[str, Path]:
    from onnxruntime.quantization import quantize_dynamic, quantize_static

    x = data.splits["train"][0][: cfg.calibration_samples]
    reader = _calibration_reader([{OnnxModel(fp32).input_name: b.numpy()} for b in x.split(cfg.calibration_batch_size)])
    paths = {"ort static (defaults)": out / "ort_static.onnx", "ort dynamic (defaults)": out / "ort_dynamic.onnx"}
    quantize_static(fp32, paths["ort static (defaults)"], reader)
    quantize_dynamic(fp32, paths["ort dynamic (defaults)"])
    return paths


def bench_model(name: str, out: Path, runs: int, threads: int) -> tuple[list[list[str]], list[str], tuple]:
    dname, kwargs, fit_kwargs = MODELS[name]
    data = sk.data.load(dname)
    torch.manual_seed(0)
    model = sk.zoo.create_for(name, data, **kwargs)
    start = time.perf_counter()
    sk.train.fit(model, data.train, val=data.val, progress=False, **fit_kwargs)
    trained = time.perf_counter() - start
    fp32 = sk.export(model, out / f"{name}.fp32.onnx", data.example)
    cfg = QuantizeConfig(max_drop=0.3)
    result = quantize(model, data, cfg, out / f"{name}.int8.onnx")
    paths = {"fp32": fp32, "slimkit int8": result.path, **ort_defaults(fp32, out, data, cfg)}
    figures = measure(paths, data, runs, threads)
    base = figures["fp32"]
    rows = []
    for variant, f in figures.items():
        rows.append(
            [
                name,
                variant,
                f"{f['acc']:.2f}",
                f"{f['acc'] - base['acc']:+.2f}",
                f"{f['f1']:.2f}",
                f"{f['bytes'] / 1024:,.0f}",
                f"{f['bytes'] / base['bytes']:.3f}",
                f"{f['b1']:.3f}",
                f"{f['b1'] / base['b1']:.2f}",
                f"{f['b64']:.2f}",
                f"{f['b64'] / base['b64']:.2f}",
            ]
        )
    s, st, dy = figures["slimkit int8"], figures["ort static (defaults)"], figures["ort dynamic (defaults)"]
    checks = [
        f"{name} ({dname}, trained {trained:.0f} s, {count_params(model):,} params): slimkit chose {result.mode} - "
        f"{result.reason}; settings {result.settings}; left in float: {result.excluded or 'none'}",
        f"  file {s['bytes'] / base['bytes']:.3f}x fp32 (goal <= 0.27): {_ok(s['bytes'] <= 0.27 * base['bytes'])}",
        f"  accuracy drop {base['acc'] - s['acc']:.2f} points (goal <= 0.3): {_ok(base['acc'] - s['acc'] <= 0.3)}",
        f"  batch-64 latency {s['b64'] / base['b64']:.2f}x fp32 (goal <= 0.65): {_ok(s['b64'] <= 0.65 * base['b64'])}",
        f"  vs ORT defaults: accuracy {s['acc']:.2f} vs static {st['acc']:.2f} / dynamic {dy['acc']:.2f} "
        f"({_paired(s['right'], max((st, dy), key=lambda f: f['acc'])['right'])}); "
        f"b64 {s['b64']:.2f} ms vs {st['b64']:.2f} / {dy['b64']:.2f} ms ({_vs(s['b64'], min(st['b64'], dy['b64']))}); "
        f"b1 {s['b1']:.3f} ms vs {st['b1']:.3f} / {dy['b1']:.3f} ms ({_vs(s['b1'], min(st['b1'], dy['b1']))})",
    ]
    return rows, checks, (model, data)


def _vs(ours: float, best_peer: float) -> str:
    """Latency: PASS if ours is at most the best peer's, TIE if slower by at most 5% (measurement
    noise), else FAIL."""
    gap = ours - best_peer
    return "PASS" if gap <= 1e-9 else ("TIE (within noise)" if gap <= 0.05 * best_peer + 1e-9 else "FAIL")


def _paired(ours: np.ndarray, peer: np.ndarray) -> str:
    """Accuracy, paired on the same test samples (McNemar): PASS if ours gets at least as many
    right, TIE if fewer but within noise (the samples only the peer gets right exceed those only
    ours gets right by less than 1.96 standard deviations), else FAIL. Dynamic int8 moves a few
    samples with the evaluation batch size alone (activations are quantized per batch), so a fixed
    one-sample margin would call noise a loss."""
    only_peer, only_ours = int((peer & ~ours).sum()), int((ours & ~peer).sum())
    verdict = "PASS" if only_ours >= only_peer else "TIE (within noise)"
    if only_peer - only_ours > 1.96 * np.sqrt(only_peer + only_ours):
        verdict = "FAIL"
    return f"{verdict}: {only_ours} test samples right only with slimkit, {only_peer} only with the peer"


def _ok(flag: bool) -> str:
    return "PASS" if flag else "FAIL"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def lowrank_and_cluster(model: torch.nn.Module, data: sk.data.Dataset, out: Path) -> str:
    def acc(m: torch.nn.Module) -> float:
        return 100 * sk.evaluate(m, data, latency=False).metrics["accuracy"]

    base, params = acc(model), count_params(model)
    rows = [["seed_cnn fp32", f"{base:.2f}", "+0.00", f"{params:,}", "1.000"]]
    x = data.splits["train"][0][:2000]
    for method in ("pca", "pca-factor", "svd"):
        m = copy.deepcopy(model)
        sk.apply_(m, LowRankConfig(method=method, ratio=0.5, layers=("fc1",)), example_inputs=x)
        a = acc(m)
        kind = sk.records(m)[-1].details["layers"]["fc1"]
        rows.append(
            [
                f"fc1 rank 512, {method} ({kind['kind']})",
                f"{a:.2f}",
                f"{a - base:+.2f}",
                f"{count_params(m):,}",
                f"{count_params(m) / params:.3f}",
            ]
        )
    text = table(["seed_cnn, no fine-tuning", "test acc %", "points", "params", "ratio"], rows)
    size0 = (sk.save(model, out / "cnn") / "weights.safetensors").stat().st_size
    m = copy.deepcopy(model)
    sk.apply_(m, ClusterConfig(k=16))
    clustered = acc(m)
    with tied(m):
        sk.train.fit(m, data.train, val=data.val, epochs=2, lr=1e-4, progress=False)
    tuned = acc(m)
    size1 = (sk.save(m, out / "cnn16") / "weights.safetensors").stat().st_size
    rows = [
        ["fp32", f"{base:.2f}", "+0.00", f"{size0:,}", "1.000"],
        ["k=16, before fine-tuning", f"{clustered:.2f}", f"{clustered - base:+.2f}", "", ""],
        [
            "k=16, 2 epochs tied fine-tuning",
            f"{tuned:.2f}",
            f"{tuned - base:+.2f}",
            f"{size1:,}",
            f"{size1 / size0:.3f}",
        ],
    ]
    header = ["seed_cnn weight sharing", "test acc %", "points", "weights file bytes", "ratio"]
    return text + "\n\n" + table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--runs", type=int, default=30, help="timed runs per latency median")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="ONNX Runtime intra-op threads")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    print(f"torch threads {torch.get_num_threads()}, ORT threads {args.threads}, VNNI {has_vnni()}")
    header = [
        "model",
        "variant",
        "test acc %",
        "points",
        "F1 %",
        "size KB",
        "size x",
        "b1 ms",
        "b1 x",
        "b64 ms",
        "b64 x",
    ]
    all_rows, all_checks, extras = [], [], ""
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows, checks, (model, data) = bench_model(name, Path(tmp), args.runs, args.threads)
            all_rows += rows
            all_checks += checks
            print(table(header, rows), flush=True)
            if name == "seed_cnn":
                extras = lowrank_and_cluster(model, data, Path(tmp))
    print("\n## int8: fp32 ONNX vs slimkit vs plain ONNX Runtime\n")
    print(table(header, all_rows))
    print("\n" + "\n".join(all_checks))
    if extras:
        print("\n## low-rank and weight sharing (seed_cnn, mnist5k test)\n")
        print(extras)


if __name__ == "__main__":
    main()
