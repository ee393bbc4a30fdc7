from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path

import pytest
import torch

import slimkit as sk
from slimkit.core.errors import SlimkitError
from slimkit.evaluate import docstring_sentences, fidelity
from slimkit.prune import ChannelPruneConfig, prune_channels


def test_fidelity_of_identical_noisy_and_unrelated_embeddings() -> None:
    torch.manual_seed(0)
    x = torch.randn(60, 16)
    same = fidelity(lambda v: v, lambda v: v.clone(), x)
    assert same["cosine_min"] == pytest.approx(1.0) and same["spearman"] == pytest.approx(1.0)
    noisy = fidelity(lambda v: v, lambda v: v + 0.3 * torch.randn_like(v), x)
    assert 0.8 < noisy["cosine_mean"] < 1.0 and 0.5 < noisy["spearman"] < 1.0
    proj = torch.randn(16, 16)
    unrelated = fidelity(lambda v: v, lambda v: torch.randn(len(v), 16), x)
    assert abs(unrelated["spearman"]) < 0.2 and abs(unrelated["cosine_mean"]) < 0.2
    with pytest.raises(SlimkitError, match="one shape"):
        fidelity(lambda v: v, lambda v: v @ proj[:, :8], x)


def test_harvesting_docstrings_leaves_the_logging_set_up_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "chatty_pkg"  # a package that configures logging on import, as torch.backends.xeon does
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "loud.py").write_text(
        "import logging\nlogging.basicConfig(level=logging.INFO)\n\n\n"
        'def f():\n    """Return the answer to every question that is asked here."""\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    sentences = docstring_sentences(5, packages=("chatty_pkg",))
    assert sentences == ["Return the answer to every question that is asked here."]
    assert "chatty_pkg.loud" in sys.modules  # it was imported, and its logging set-up undone
    assert root.handlers == handlers and root.level == level


def test_pruned_text_encoder_fidelity_on_real_sentences() -> None:
    """A sentence encoder (mean-pooled text_transformer states) before and after pruning its FFN."""
    sentences = docstring_sentences(300, packages=("numpy",))
    assert len(sentences) == 300 and sentences == docstring_sentences(300, packages=("numpy",))
    assert all(len(s.split()) >= 6 for s in sentences)
    vocab: dict[str, int] = {}
    ids = torch.tensor(
        [
            [vocab.setdefault(w, len(vocab) % 998 + 1) for w in (s.lower().split() + ["<pad>"] * 32)[:32]]
            for s in sentences
        ]
    )
    torch.manual_seed(0)
    # an encoder with a 32-dim projection head: its output is the sentence embedding
    model = sk.zoo.create("text_transformer", vocab_size=1000, num_classes=32).eval()
    original = copy.deepcopy(model)
    prune_channels(model, ChannelPruneConfig(ratio=0.0), ids[:2])
    assert fidelity(original, model, ids)["cosine_min"] == pytest.approx(1.0)
    prune_channels(model, ChannelPruneConfig(ratio=0.5), ids[:2])
    f = fidelity(original, model, ids)
    assert -1.0 <= f["cosine_min"] <= f["cosine_mean"] < 0.999 and -1.0 <= f["spearman"] < 0.999
