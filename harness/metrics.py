"""Evaluation metrics as the authors' evaluator reports them (PROTOCOL.md 13), in percent."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> dict:
    """Accuracy, error, macro-F1 over the labels present, and per-class accuracy."""
    correct = int((labels == predictions).sum())
    total = int(labels.size)
    accuracy = 100.0 * correct / max(1, total)
    present = np.unique(labels)
    macro_f1 = 100.0 * f1_score(labels, predictions, average="macro", labels=present) if total else 0.0
    per_class = []
    for label in range(num_classes):
        mask = labels == label
        per_class.append(100.0 * float((predictions[mask] == label).mean()) if mask.any() else None)
    observed = [a for a in per_class if a is not None]
    return {
        "accuracy": accuracy,
        "error": 100.0 - accuracy,
        "macro_f1": float(macro_f1),
        "perclass_accuracy": float(np.mean(observed)) if observed else 0.0,
        "per_class_accuracy": per_class,
        "total": total,
        "correct": correct,
    }
