"""Distil a pruned or shallower sentence encoder from the original on unlabelled sentences.

The student learns the teacher's pooled sentence embeddings (1 - cosine) and its hidden states
token by token (mean squared error relative to their variance over real tokens): at every layer
when both have as many layers of the same width (a pruned copy: TinyBERT's intermediate-layer
matching), else the last. :func:`distil_` trains on sentences by itself (the learning rate warms
up, then falls linearly to zero at the end of the epochs or of the time budget, whichever comes
first, so a time-limited run still ends annealed); :class:`HiddenStateDistiller` adds the same
loss to the optimize loop's fine-tuning.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from slimkit.core.errors import SlimkitError
from slimkit.simplify.distill import with_aux_loss
from slimkit.text.onnx import PooledEncoder, mean_pool

__all__ = ["HiddenStateDistiller", "distil_"]


def _batches(tokenizer: Any, sentences: Sequence[str], batch_size: int, max_length: int, rng: random.Random) -> list:
    """Batches of similar-length sentences (little padding), in random order."""
    ids = tokenizer(list(sentences), truncation=True, max_length=max_length)["input_ids"]
    order = list(range(len(ids)))
    rng.shuffle(order)
    out = []
    chunk = batch_size * 50
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: len(ids[i]))
        for b in range(0, len(part), batch_size):
            rows = [ids[i] for i in part[b : b + batch_size]]
            width = max(len(r) for r in rows)
            x = torch.zeros(len(rows), width, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for j, r in enumerate(rows):
                x[j, : len(r)], mask[j, : len(r)] = torch.tensor(r), 1
            out.append({"input_ids": x, "attention_mask": mask})
    rng.shuffle(out)
    return out


def distil_(
    student: nn.Module,
    teacher: nn.Module,
    sentences: Sequence[str],
    tokenizer: Any,
    *,
    epochs: int | None = None,
    max_seconds: float | None = None,
    batch_size: int = 32,
    lr: float = 1e-4,
    warmup: float = 0.05,
    max_length: int = 128,
    token_weight: float = 1.0,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train ``student`` (in place) to reproduce ``teacher``'s embeddings of ``sentences``.

    Both are ``SentenceTransformer`` s or HF encoders sharing ``tokenizer``. Training stops after
    ``epochs`` passes or ``max_seconds``, whichever comes first (``epochs=None``: 1 pass without a
    time budget, as many as fit in it with one). Dropout stays off (the target is the teacher's
    deterministic output). Returns steps, seconds and the loss curve.
    """
    if epochs is None:
        epochs = 1 if max_seconds is None else 1_000_000
    if epochs < 1 or (max_seconds is not None and max_seconds <= 0) or not sentences:
        raise SlimkitError("distil_ needs sentences, epochs >= 1 and a positive max_seconds (or None)")
    s_mod, t_mod = PooledEncoder.of(student), PooledEncoder.of(teacher)
    s_mod.normalize = t_mod.normalize = False
    rng = random.Random(seed)
    torch.manual_seed(seed)
    s_mod.eval()  # no dropout; gradients still flow
    t_mod.eval()
    params = [p for p in s_mod.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, foreach=True)
    total = epochs * -(-len(sentences) // batch_size)
    start, step, curve = time.perf_counter(), 0, []
    running = 0.0
    for _ in range(epochs):
        for batch in _batches(tokenizer, sentences, batch_size, max_length, rng):
            elapsed = time.perf_counter() - start
            progress = max(step / total, elapsed / max_seconds if max_seconds else 0.0)
            if progress >= 1:
                break
            scale = min(1.0, progress / warmup) if warmup > 0 else 1.0
            for g in opt.param_groups:
                g["lr"] = lr * max(scale, 0.01) * (1 - progress)
            loss = _loss(s_mod, t_mod, batch, token_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            running += float(loss.detach())
            if step % 50 == 0:
                curve.append(running / 50)
                running = 0.0
                if log:
                    log(f"step {step}  {time.perf_counter() - start:.0f} s  loss {curve[-1]:.4f}")
        else:
            continue
        break
    return {"steps": step, "seconds": time.perf_counter() - start, "loss_curve": curve}


def _loss(student: PooledEncoder, teacher: PooledEncoder, batch: dict, token_weight: float) -> torch.Tensor:
    with torch.no_grad():
        t_out = teacher.encoder(**batch, output_hidden_states=bool(token_weight))
    s_out = student.encoder(**batch, output_hidden_states=bool(token_weight))
    return encoder_loss(s_out, t_out, batch["attention_mask"], token_weight, student.pool)[0]


def encoder_loss(
    s_out: Any,
    t_out: Any,
    attention_mask: torch.Tensor,
    token_weight: float,
    pool: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = mean_pool,
) -> tuple[torch.Tensor, ...]:
    """``(loss, student embedding, teacher embedding)`` from two HF encoder outputs: ``1 - cosine`` of
    the embeddings ``pool`` makes of them (default: mean pooling) plus ``token_weight`` x the
    variance-relative token MSE of the hidden states (every layer when both give as many of one
    shape, else the last ones when they match)."""
    s_e = pool(s_out.last_hidden_state, attention_mask)  # (B, D)
    t_e = pool(t_out.last_hidden_state, attention_mask)
    loss = (1 - nn.functional.cosine_similarity(s_e, t_e, dim=-1)).mean()
    if not token_weight:
        return loss, s_e, t_e
    pairs = list(zip(s_out.hidden_states or (), t_out.hidden_states or (), strict=False))
    if not pairs or len(s_out.hidden_states) != len(t_out.hidden_states):
        pairs = [(s_out.last_hidden_state, t_out.last_hidden_state)]
    pairs = [(s, t) for s, t in pairs if s.shape == t.shape]
    real = attention_mask.bool()  # (B, T)
    for s_h, t_h in pairs:
        loss = loss + token_weight / len(pairs) * (s_h[real] - t_h[real]).pow(2).mean() / t_h[real].var()
    return loss, s_e, t_e


class HiddenStateDistiller(nn.Module):
    """``student`` (a :class:`PooledEncoder`) for :func:`slimkit.train.fit` with the loss of this module:
    in training its forward also runs ``teacher`` and adds :func:`encoder_loss` to the gradient of
    whatever loss fit computes from the embedding it returns; :meth:`teacher_outputs` gives fit the
    teacher's embedding of the same batch without running it again. Evaluation runs the student only.
    The teacher stays outside the module tree (the optimizer never sees it)."""

    def __init__(self, student: PooledEncoder, teacher: PooledEncoder, token_weight: float = 1.0) -> None:
        super().__init__()
        self.student, self._teacher, self.token_weight = student, [teacher.eval()], token_weight
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.student(input_ids, attention_mask)
        hidden = bool(self.token_weight)
        s_out = self.student.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=hidden)
        teacher = self._teacher[0]
        with torch.no_grad():
            t_out = teacher.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=hidden)
        loss, s_e, t_e = encoder_loss(s_out, t_out, attention_mask, self.token_weight, self.student.pool)
        norm = nn.functional.normalize
        self._cache = (input_ids, norm(t_e, dim=-1) if teacher.normalize else t_e)
        return with_aux_loss(norm(s_e, dim=-1) if self.student.normalize else s_e, loss)

    def teacher_outputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The teacher's embedding (reused from the last training forward when it was the same batch)."""
        if self._cache is not None and self._cache[0] is input_ids:
            return self._cache[1]
        return self._teacher[0](input_ids, attention_mask)
