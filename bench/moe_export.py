"""Mixture-of-experts models in ONNX: how slimkit's exports run the experts.

``torch._grouped_mm`` (transformers' default experts implementation) has no ONNX operator and the
eager experts loop depends on the data, so exports switch the experts to an implementation that
exports. ``batched_mm`` (transformers) gathers the chosen experts' weights for every token;
``slimkit_dense`` (:func:`slimkit.io.pretrained.dense_experts`, what slimkit's exports use) runs
every expert on every token as plain matmuls. A Mixtral-shaped causal LM (random weights, built
from a config) is exported both ways; each file runs on ONNX Runtime in a fresh process (peak
memory), then both are timed taking turns in one process, against the PyTorch model (grouped_mm) and the
dense file on OpenVINO.

    .venv/bin/python bench/moe_export.py            # ~3 minutes, run alone (it times)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

IMPLEMENTATIONS = ("batched_mm", "slimkit_dense")


def build(experts: int) -> torch.nn.Module:
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.MixtralConfig(
        vocab_size=1000,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        num_local_experts=experts,
        num_experts_per_tok=2,
        max_position_embeddings=512,
        use_cache=False,
    )
    return transformers.MixtralForCausalLM(config).eval()


LIMIT_GB = 8  # address-space limit of each measuring process: a file that needs more fails there, not here


def peak_mb(path: str, rows: int, tokens: int) -> float | None:
    """Peak resident memory (MB) of a fresh process that loads ``path`` and runs it once on ONNX
    Runtime, or None when it cannot within :data:`LIMIT_GB`."""
    code = f"""
import resource, numpy as np, onnxruntime as ort
resource.setrlimit(resource.RLIMIT_AS, ({LIMIT_GB} << 30, {LIMIT_GB} << 30))
s = ort.InferenceSession({path!r}, providers=["CPUExecutionProvider"])
s.run(None, {{"input_ids": np.ones(({rows}, {tokens}), dtype=np.int64)}})
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    return float(out.stdout.strip()) if out.returncode == 0 else None


def main() -> None:
    import onnxruntime as ort

    import slimkit.io.pretrained as pretrained
    from slimkit.evaluate.cost import measure_latencies
    from slimkit.io.onnx import OpenVinoSession, export_onnx

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--shapes", default="1x32,1x128,8x128", help="rows x tokens to run")
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    model = build(args.experts)
    params = sum(p.numel() for p in model.parameters())
    print(f"Mixtral-shaped causal LM: {params / 1e6:.1f}M params, {args.experts} experts, top-2, 4 layers, hidden 512")
    x = {"input_ids": torch.randint(0, 1000, (2, 16))}
    print("| tokens | experts in the file | ms | speed vs PyTorch | peak MB (load + run) | max abs diff |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for impl in IMPLEMENTATIONS:
            pretrained.EXPORT_EXPERTS = impl  # what slimkit's exporting() switches the experts to
            files[impl] = Path(tmp) / f"{impl}.onnx"
            export_onnx(model, files[impl], x)
        sessions = {k: ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]) for k, f in files.items()}
        vino = OpenVinoSession(files["slimkit_dense"], threads=torch.get_num_threads())  # fp32, as slimkit runs it
        for n, t in shapes:
            ids = torch.randint(0, 1000, (n, t))
            with torch.inference_mode():
                want = model(input_ids=ids).logits.numpy()
            feeds = {"input_ids": ids.numpy()}
            peaks = {k: peak_mb(str(f), n, t) for k, f in files.items()}
            runs = [k for k in files if peaks[k] is not None]
            diffs = {k: float(np.abs(sessions[k].run(None, feeds)[0] - want).max()) for k in runs}
            fns = [lambda s=sessions[k], feeds=feeds: s.run(None, feeds) for k in runs]
            fns.append(torch.inference_mode()(lambda ids=ids: model(input_ids=ids)))
            fns.append(lambda feeds=feeds: vino.run(None, feeds))  # the dense file on OpenVINO
            names = [*runs, "torch", "openvino"]
            ms = dict(zip(names, measure_latencies(fns, warmup=2, runs=10, rounds=2), strict=True))
            vino_diff = float(np.abs(vino.run(None, feeds)[0] - want).max())
            for k in files:
                if k in runs:
                    cells = f"{ms[k]:.1f} | {ms['torch'] / ms[k]:.2f} | {peaks[k]:.0f} | {diffs[k]:.1e}"
                else:
                    cells = f"- | - | out of memory (> {LIMIT_GB} GB) | -"
                print(f"| {n}x{t} | {k} | {cells} |", flush=True)
            print(f"| {n}x{t} | PyTorch (grouped_mm) | {ms['torch']:.1f} | 1.00 | - | - |", flush=True)
            speed = ms["torch"] / ms["openvino"]
            print(f"| {n}x{t} | slimkit_dense on OpenVINO | {ms['openvino']:.1f} | {speed:.2f} | - | {vino_diff:.1e} |")


if __name__ == "__main__":
    main()
