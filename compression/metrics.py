"""Classification metrics in numpy (the same code scores every stage of the chain)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts; rows are the true class, columns the prediction."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict:
    """accuracy, macro-F1 and per-class precision / recall / F1 / support, plus the confusion matrix.

    A class with no true and no predicted samples gets F1 0 and is left out of the
    macro average (it says nothing); one that is predicted but never true counts as 0.
    """
    n = len(labels)
    cm = confusion_matrix(y_true, y_pred, n)
    tp = np.diag(cm).astype(float)
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n), where=denom > 0)
    present = (support + predicted) > 0
    total = int(cm.sum())
    return {
        "n": total,
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(labels)
        },
        "confusion": cm.tolist(),
    }


def topk_accuracy(y_true: np.ndarray, scores: np.ndarray, k: int) -> float:
    top = np.argsort(-scores, axis=1)[:, :k]
    return float((top == np.asarray(y_true)[:, None]).any(1).mean()) if len(top) else 0.0


def top1_agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Share of items on which two models give the same top-1 class."""
    return float((np.asarray(logits).argmax(1) == np.asarray(reference).argmax(1)).mean()) if len(logits) else 0.0


def top1_confidence(logits: np.ndarray) -> float:
    """Mean top-1 softmax probability: how sure a model is of what it says."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return float(p.max(1).mean()) if len(z) else 0.0
