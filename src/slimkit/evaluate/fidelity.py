"""How faithfully an optimized embedding model reproduces the original's embeddings.

For models whose output is an embedding (sentence encoders, recommender towers), accuracy on a
labelled task is not the question; whether the new embeddings are interchangeable with the old is.
:func:`fidelity` reports the cosine similarity between the two embeddings of every input, and the
Spearman rank agreement of the pairwise similarities (does the optimized model rank neighbours
the same way?). :func:`docstring_sentences` gives a real English corpus without downloading
anything: sentences from the docstrings of installed Python packages.

>>> import torch
>>> x = torch.randn(50, 8)
>>> f = fidelity(lambda v: v, lambda v: v + 0.01 * torch.randn_like(v), x)
>>> f["cosine_mean"] > 0.99 and f["spearman"] > 0.99
True
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from slimkit.core.errors import SlimkitError

__all__ = ["docstring_sentences", "fidelity"]


def _embed(fn: Callable[[Any], Any], inputs: Any, batch_size: int) -> np.ndarray:
    chunks = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            out = fn(inputs[start : start + batch_size])
            chunks.append(np.asarray(out.detach().cpu() if isinstance(out, torch.Tensor) else out, dtype=np.float64))
    return np.concatenate(chunks)


def fidelity(
    original: Callable[[Any], Any], optimized: Callable[[Any], Any], inputs: Any, *, batch_size: int = 64
) -> dict[str, float]:
    """Compare two embedding functions (modules, ONNX models, encoders) on ``inputs``.

    Returns ``cosine_mean`` / ``cosine_min`` (per input, original vs optimized embedding) and
    ``spearman``: rank correlation of all pairwise cosine similarities (upper triangle).
    """
    from scipy.stats import spearmanr

    a, b = _embed(original, inputs, batch_size), _embed(optimized, inputs, batch_size)
    if a.shape != b.shape or a.ndim != 2:
        raise SlimkitError(f"embeddings must be (n, d) of one shape, got {a.shape} and {b.shape}")
    if len(a) < 3:
        raise SlimkitError("fidelity needs at least 3 inputs")
    a /= np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b /= np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    cosine = (a * b).sum(1)
    upper = np.triu_indices(len(a), k=1)
    rho = spearmanr((a @ a.T)[upper], (b @ b.T)[upper]).statistic
    return {"cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()), "spearman": float(rho)}


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_SKIP = re.compile(r"\._|\.tests?\b|test_|conftest|distutils|setup")  # private, test and build modules
_PLAIN = re.compile(r"^[A-Z][A-Za-z ,;:'()-]+[.!?]$")  # prose, not code, tables or parameter lists


def docstring_sentences(
    n: int = 2000, packages: Sequence[str] = ("numpy", "scipy", "sklearn", "torch"), *, min_words: int = 6
) -> list[str]:
    """Up to ``n`` distinct English sentences from the docstrings of installed ``packages``.

    Deterministic (modules and objects are visited in sorted order) and offline: a real corpus
    for checking embedding models. Packages that are not installed are skipped.
    """
    seen: dict[str, None] = {}
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with warnings.catch_warnings():  # importing every submodule wakes deprecation warnings
            warnings.simplefilter("ignore")
            for text in _docstrings(packages):
                for sentence in _SENTENCE.split(" ".join(text.split())):
                    if len(sentence.split()) >= min_words and _PLAIN.match(sentence) and sentence not in seen:
                        seen[sentence] = None
                        if len(seen) >= n:
                            return list(seen)
        return list(seen)
    finally:  # some modules configure logging when imported (torch.backends.xeon.run_cpu: root at INFO)
        root.handlers[:] = handlers
        root.setLevel(level)


def _docstrings(packages: Iterable[str]) -> Iterable[str]:
    for name in packages:
        try:
            root = importlib.import_module(name)
        except ImportError:
            continue
        names = [name]
        if hasattr(root, "__path__"):
            found = pkgutil.walk_packages(root.__path__, f"{name}.", onerror=lambda _: None)
            names += sorted(m.name for m in found if not _SKIP.search(m.name))
        for module_name in names:
            try:
                module = importlib.import_module(module_name)
            except BaseException as exc:  # noqa: BLE001  (optional submodules fail in many ways, even pytest.skip)
                if isinstance(exc, KeyboardInterrupt):
                    raise
                continue
            for _, obj in sorted(vars(module).items()):
                doc = inspect.getdoc(obj) if inspect.isclass(obj) or inspect.isfunction(obj) else None
                if doc and getattr(obj, "__module__", None) == module_name:
                    yield doc
