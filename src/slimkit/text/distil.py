"""Distil a pruned or shallower sentence encoder from the original on unlabelled sentences.

The student learns the teacher's last hidden states token by token (mean squared error relative to
their variance, when the widths match) and its pooled sentence embeddings (1 - cosine). The
learning rate warms up, then falls linearly to zero at the end of the epochs or of the time
budget, whichever comes first, so a time-limited run still ends annealed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from slimkit.core.errors import SlimkitError
from slimkit.text.onnx import PooledEncoder

__all__ = ["distil_"]


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
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
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
        t_h = teacher.encoder(**batch).last_hidden_state  # (B, T, D)
    s_h = student.encoder(**batch).last_hidden_state  # (B, T, D)
    m = batch["attention_mask"].unsqueeze(-1).to(s_h.dtype)  # (B, T, 1)
    t_e = (t_h * m).sum(1) / m.sum(1)  # (B, D)
    s_e = (s_h * m).sum(1) / m.sum(1)
    loss = (1 - nn.functional.cosine_similarity(s_e, t_e, dim=-1)).mean()
    if token_weight and s_h.shape == t_h.shape:
        real = m.expand_as(t_h).bool()
        loss = loss + token_weight * ((s_h - t_h)[real].pow(2).mean() / t_h[real].var())
    return loss
