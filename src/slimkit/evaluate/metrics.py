"""Classification quality from predicted probabilities and labels (for predictions made outside torch,
e.g. a Keras model's): the classification task's own meter, so there is one implementation."""

from __future__ import annotations

import numpy as np
import torch


def classification_metrics(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[dict[str, float], list]:
    """Accuracy, macro precision / recall / F1 and the cross-entropy ``loss`` (plus ROC AUC and log-loss
    for two classes) of ``probs`` (N, K) against ``labels``, and the confusion matrix (rows: true
    class, columns: predicted) over ``num_classes`` classes."""
    from slimkit.task import Classification

    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[1] < num_classes:  # classes the model never scores
        probs = np.pad(probs, ((0, 0), (0, num_classes - probs.shape[1])))
    meter = Classification().meter()
    meter.update(torch.from_numpy(np.log(np.clip(probs, 1e-7, 1.0))), torch.as_tensor(labels), None)
    return meter.result(), meter.confusion.tolist()
