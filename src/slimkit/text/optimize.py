"""Sentence encoders through slimkit's optimize loop: the fidelity task, no labels needed.

A ``SentenceTransformer`` (or its folder) becomes a :class:`~slimkit.text.PooledEncoder` (tokens ->
mean-pooled embedding); the loop of :func:`slimkit.optimize.optimize` factorizes its word-embedding
table, prunes FFN units (attention heads too if asked; uniformly or by measured sensitivity, with
least-squares refits of the layers after them), distils from the original on unlabelled sentences
(embeddings and hidden states token by token) and quantizes to dynamic int8 ONNX, deciding
everything by the fidelity task's metrics on held-out sentences: mean cosine to the original's
embeddings and ``overlap@10`` (how many of each sentence's 10 nearest neighbours the original also
ranks there). The run folder holds the encoder as a sentence-transformers folder (``encoder/``,
loads with ``SentenceTransformer(path)`` after ``import slimkit.text``), its ONNX files and the
report.

Example::

    from slimkit import text
    from slimkit.optimize import Target

    data = text.sentence_loaders(tok, train_sentences, val_sentences, test_sentences)
    target = Target(params=0.5, latency=0.5, latency_batch=32, max_drop=0.05, min_metrics={"overlap@10": 0.8})
    result = text.optimize_encoder("path/to/minilm", data, target, output="runs/minilm-opt")
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from slimkit.compress import LowRankConfig, QuantizeConfig
from slimkit.core.errors import SlimkitError
from slimkit.core.files import atomic_path
from slimkit.data.base import Loaders
from slimkit.optimize.backend import TorchBackend
from slimkit.optimize.recipe import FineTuneConfig, Recipe, SensitivityPruneConfig
from slimkit.optimize.run import OptimizeResult, run_optimize
from slimkit.optimize.target import Target, parse_target
from slimkit.task import get_task
from slimkit.text.distil import HiddenStateDistiller
from slimkit.text.hf import LAYOUTS, Layout, encoder_of, layout_of, load, save
from slimkit.text.onnx import PooledEncoder, tokenize

__all__ = ["EncoderBackend", "encoder_recipe", "optimize_encoder", "sentence_data", "sentence_loaders"]


def sentence_loaders(
    tokenizer: Any,
    train: Sequence[str] | None,
    val: Sequence[str],
    test: Sequence[str] | None = None,
    *,
    batch_size: int = 32,
    max_length: int = 128,
    example_length: int = 64,
    name: str = "sentences",
) -> Loaders:
    """:class:`slimkit.data.Loaders` of tokenized sentences (``input_ids`` / ``attention_mask`` dicts)
    for the fidelity task; ``train`` batches sentences of similar length in a seeded random order. The
    example (tracing, export, latency) is the first ``batch_size`` validation sentences padded to
    ``example_length`` tokens."""
    if not val:
        raise SlimkitError("sentence_loaders needs validation sentences")

    def collate(rows: list[str]) -> dict:
        return tokenize(tokenizer, rows, max_length)

    def loader(sentences: Sequence[str] | None, shuffle: bool) -> DataLoader | None:
        if not sentences:
            return None
        if not shuffle:
            return DataLoader(list(sentences), batch_size=batch_size, collate_fn=collate)
        lengths = [len(ids) for ids in tokenizer(list(sentences), truncation=True, max_length=max_length)["input_ids"]]
        return DataLoader(list(sentences), batch_sampler=_LengthBatches(lengths, batch_size), collate_fn=collate)

    example = tokenize(tokenizer, list(val[:batch_size]), pad_to=example_length)
    return Loaders(
        train=loader(train, True),
        val=loader(val, False),
        test=loader(test, False),
        example=example,
        task="fidelity",
        name=name,
    )


class _LengthBatches:
    """Training batches of similar-length sentences (little padding: a third of the compute of random
    batches on mixed corpora), drawn afresh in a seeded random order every epoch: shuffled, cut into
    chunks of 50 batches, each chunk sorted by length, the batches shuffled."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0) -> None:
        self.lengths, self.batch_size, self.epoch, self.seed = lengths, batch_size, 0, seed

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Any:
        import random

        rng = random.Random(self.seed + self.epoch)
        self.epoch += 1
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        chunk = self.batch_size * 50
        batches = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start : start + chunk], key=self.lengths.__getitem__)
            batches += [part[b : b + self.batch_size] for b in range(0, len(part), self.batch_size)]
        rng.shuffle(batches)
        return iter(batches)


def sentence_data(spec: str | Path, tokenizer: Any, *, batch_size: int = 32) -> Loaders:
    """Sentences for :func:`optimize_encoder` from a name (what ``slimkit optimize ENCODER -d SPEC`` takes):

    - ``docstrings``: slimkit's offline corpora: distillation on :func:`training_sentences` (docstrings
      of other packages, reviews, speeches, WordNet glosses, Wikipedia sentences), validation and test
      on the two halves of :func:`held_out_sentences` (4,000 docstring sentences of numpy, scipy,
      scikit-learn, torch);
    - a ``.txt`` file, one sentence per line: every 10th line validates, every 10th + 1 tests, the
      rest distils;
    - ``package.module:function`` returning :class:`slimkit.data.Loaders` (the trust rules of ``-d``).
    """
    from slimkit.text.corpus import held_out_sentences, training_sentences

    spec = str(spec)
    if spec == "docstrings":
        held = held_out_sentences(4000)
        train = training_sentences(30000)
        return sentence_loaders(tokenizer, train, held[0::2], held[1::2], batch_size=batch_size, name=spec)
    if spec.endswith(".txt"):
        path = Path(spec)
        if not path.is_file():
            raise SlimkitError(f"{path} does not exist; give a text file with one sentence per line")
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
        lines = [line for line in lines if line]
        if len(lines) < 20:
            raise SlimkitError(f"{path} holds {len(lines)} sentences; give at least 20 (one per line)")
        val, test = lines[0::10], lines[1::10]
        train = [line for i, line in enumerate(lines) if i % 10 > 1]
        return sentence_loaders(tokenizer, train, val, test, batch_size=batch_size, name=path.name)
    if ":" in spec:
        from slimkit.data import load as load_data

        data = load_data(spec)
        if not isinstance(data, Loaders):
            raise SlimkitError(f"{spec} must return slimkit.data.Loaders of tokenized sentences")
        return data
    raise SlimkitError(
        f"unknown sentences {spec!r}: give 'docstrings', a .txt file (one sentence per line) or module:function"
    )


def encoder_recipe(
    target: Target,
    *,
    embedding_share: float = 1 / 3,
    exact_tokens: float = 0.1,
    finetune_epochs: int = 1,
    steps_per_epoch: int | None = None,
    lr: float = 3e-4,
    importance: str = "l2",
    allocation: str = "uniform",
    prune_heads: bool = False,
    quantize: bool = True,
    layout: Layout | None = None,
) -> Recipe:
    """The sentence-encoder recipe: factorize the word-embedding table (most of the parameters) to
    ``embedding_share`` of its width, weighted by token frequency on the training sentences, the
    ``exact_tokens`` share of the most frequent tokens kept exact; prune FFN units (with
    ``prune_heads`` attention heads and the embedding rank as well) to the target's MACs / params,
    the same share of every layer (``allocation="uniform"``) or by measured sensitivity, with
    least-squares refits; distil from the original (AdamW, ``lr``); then dynamic int8 with
    per-channel weight scales (the mode that keeps BERT's embeddings: static int8 does not).

    The defaults are what recovered best on all-MiniLM-L6-v2 (``bench/RESULTS-text.md``): at 0.5x
    params, every head kept with uniformly narrower FFNs reached val cosine 0.939 after 4 epochs of
    distillation, sensitivity-allocated head + FFN pruning 0.931 after 3 and 0.933 after 6 (its
    single-group probes predict the loss right after pruning, not what distillation recovers). FFNs
    alone cannot remove more than about 60% of a BERT layer's MACs (less on long inputs, where
    attention dominates): below that, ``prune_heads``. ``layout``: the encoder's
    (:func:`slimkit.text.hf.layout_of`; default BERT's) names the attention projections to keep."""
    # a latency target alone prunes to 0.7x MACs: dynamic int8 about halves ONNX Runtime's time here
    macs = target.macs if target.macs is not None else (0.7 if target.latency is not None else None)
    protected = () if prune_heads else (*(layout or LAYOUTS[0]).head_patterns(), "re:.*word_embeddings.*")
    prune = SensitivityPruneConfig(
        target_macs=macs,
        target_params=target.params,
        allocation=allocation,
        widths="per-layer",  # saved as a sentence-transformers folder of slimkit's, not by a config
        importance=importance,
        refit=True,
        calibration_batches=32,  # ~1,000 sentences: the refits keep val cosine 0.837 untrained, 0.791 with 4
        probe_ratios=(0.25, 0.5, 0.75),
        round_to=8,
        protected=protected,
    )
    tune = FineTuneConfig(epochs=finetune_epochs, steps_per_epoch=steps_per_epoch, lr=lr, optimizer="adamw")
    steps: list[Any] = [LowRankConfig(ratio=embedding_share, exact_rows=exact_tokens, layers=("re:.*word_embeddings",))]
    if macs is not None or target.params is not None:
        steps.append(prune)
    steps.append(tune)
    if quantize:
        steps.append(QuantizeConfig(mode="dynamic", per_channel=True))
    return Recipe(tuple(steps))


class EncoderBackend(TorchBackend):
    """:class:`~slimkit.optimize.backend.TorchBackend` for a :class:`PooledEncoder`: saves (progress,
    trials, outputs) are sentence-transformers folders built on ``template``; fine-tuning distils the
    original's hidden states at ``token_weight`` besides its embeddings (0: embeddings only)."""

    def __init__(
        self, original: PooledEncoder, data: Loaders, template: Any, *, token_weight: float = 1.0, **kwargs: Any
    ) -> None:
        super().__init__(original, data, task=get_task("fidelity"), **kwargs)
        self.template, self.token_weight = template, token_weight
        self.calibration_samples = 20000  # token usage for the frequency-weighted embedding factorization

    def protect(self, model: PooledEncoder, protected: Sequence[str]) -> list[str]:
        """``protected`` and the pooler (unused by mean pooling, so free to prune, but its width is
        fixed by the config the saved folder reloads with)."""
        pooler = [n for n, _ in model.named_modules() if n.endswith("pooler.dense")]
        return [*protected, *(n for n in pooler if n not in protected)]

    def cost_model(self, model: PooledEncoder, protected: tuple[str, ...]) -> Any:
        return super().cost_model(model, tuple(self.protect(model, protected)))

    def prune(self, model: PooledEncoder, cfg: Any) -> PooledEncoder:
        return super().prune(model, dataclasses.replace(cfg, protected=self.protect(model, cfg.protected)))

    def trainee(self, model: PooledEncoder, teacher: PooledEncoder | None) -> tuple[nn.Module, Any]:
        """Distillation matches the original's hidden states token by token as well as the embeddings
        (:class:`~slimkit.text.distil.HiddenStateDistiller`)."""
        if teacher is None or not self.token_weight:
            return model, teacher
        distiller = HiddenStateDistiller(model, teacher, self.token_weight)
        return distiller, distiller.teacher_outputs

    def sentence_transformer(self, model: PooledEncoder) -> Any:
        """The template pipeline (tokenizer, pooling...) around ``model``'s encoder (not copied)."""
        return copy.deepcopy(self.template, {id(encoder_of(self.template)): model.encoder})

    def save(self, model: PooledEncoder, folder: Path, extra_files: dict[str, str] | None = None) -> None:
        with atomic_path(folder, force=True) as tmp:
            tmp.mkdir()
            save(self.sentence_transformer(model), tmp / "encoder")
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)

    def load(self, folder: Path) -> PooledEncoder:
        return _wrap(load(folder / "encoder"))

    def save_outputs(self, model: PooledEncoder, folder: Path) -> tuple[dict[str, str], list[str]]:
        save(self.sentence_transformer(model), folder / "encoder", force=True)
        self.export_onnx(model, folder / "model.onnx")
        return {"sentence-transformer": "encoder", "onnx": "model.onnx"}, []


def _wrap(model: Any) -> PooledEncoder:
    """The encoder for the loop, dropout off: the teacher's outputs are deterministic targets."""
    module = PooledEncoder.of(model).eval()
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return module


def optimize_encoder(
    model: Any,
    data: Loaders,
    target: Target | str | list[str],
    *,
    recipe: Recipe | str | Path | dict | None = "auto",
    output: str | Path | None = None,
    trials: int = 0,
    storage: str | None = None,
    resume: bool = False,
    seed: int = 0,
    device: str | None = None,
    amp: str | None = None,
    force: bool = False,
    html: bool = True,
    progress: bool = False,
    val_batches: int | None = None,
    token_weight: float = 1.0,
    log: Callable[[str], None] | None = None,
    **auto: Any,
) -> OptimizeResult | None:
    """Optimize a sentence encoder (a ``SentenceTransformer`` or its folder) to ``target`` with the
    fidelity task on ``data`` (:func:`sentence_loaders`); ``recipe="auto"`` is :func:`encoder_recipe`
    (``auto`` keywords go to it); ``val_batches`` bounds the validation batches of every decision
    (sensitivity probes, candidates); ``token_weight`` weighs the token-level hidden-state term of the
    distillation (0: the embeddings only). The rest (``device``, ``amp``...) as
    :func:`slimkit.optimize.optimize`."""
    import torch

    from slimkit import distributed
    from slimkit.core.device import check_amp, resolve_device

    started = time.monotonic()
    if isinstance(target, str | list):
        target = parse_target(target)
    target = target.for_task("cosine")
    st = load(model) if isinstance(model, str | Path) else model
    dev = distributed.setup(resolve_device(device, st))
    amp = check_amp(amp, dev)
    original = _wrap(copy.deepcopy(st)).to(dev)
    torch.manual_seed(seed)
    backend = EncoderBackend(
        original,
        data,
        st,
        token_weight=token_weight,
        progress=progress,
        seed=seed,
        val_batches=val_batches,
        amp=amp,
    )
    backend.metric = target.metric
    if recipe is None or recipe == "auto":
        recipe = encoder_recipe(target, layout=layout_of(original.encoder), **auto)
    return distributed.lead(
        backend,
        original,
        lambda: run_optimize(
            backend,
            original,
            data,
            target,
            recipe,
            {},
            {"task": "fidelity", "encoder": True, "val_batches": val_batches, "amp": amp},
            output=output,
            trials=trials,
            storage=storage,
            study_name="slimkit-optimize",
            resume=resume,
            seed=seed,
            force=force,
            html=html,
            started=started,
            log=log or (lambda s: None),
        ),
    )
