"""Classification quality from predicted probabilities and labels (scikit-learn metrics)."""

from __future__ import annotations

import numpy as np


def classification_metrics(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[dict[str, float], list]:
    """Accuracy and macro precision / recall / F1 (plus ROC AUC and log-loss for two classes).

    Returns the metrics and the confusion matrix (rows: true class, columns: predicted).
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        log_loss,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    classes = list(range(num_classes))
    pred = probs.argmax(1)
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, pred, labels=classes, average="macro", zero_division=0
    )
    metrics = {
        "accuracy": float(accuracy_score(labels, pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
    }
    if num_classes == 2 and probs.shape[1] == 2 and len(np.unique(labels)) == 2:
        metrics["auc"] = float(roc_auc_score(labels, probs[:, 1]))
        metrics["log_loss"] = float(log_loss(labels, np.clip(probs, 1e-7, 1.0), labels=classes))
    return metrics, confusion_matrix(labels, pred, labels=classes).tolist()
