from __future__ import annotations

import numpy as np
import pytest

from compression.metrics import classification_report, confusion_matrix, topk_accuracy


def test_confusion_rows_are_truth_columns_predictions():
    cm = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_report_on_a_known_case():
    r = classification_report(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), ["a", "b", "c"])
    assert r["accuracy"] == 0.5
    assert r["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert r["per_class"]["b"]["precision"] == pytest.approx(1 / 3)
    assert r["per_class"]["c"]["f1"] == 0.0
    assert r["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0.0) / 3)


def test_absent_class_does_not_dilute_macro_f1():
    r = classification_report(np.array([0, 1]), np.array([0, 1]), ["a", "b", "never"])
    assert r["macro_f1"] == 1.0


def test_topk():
    scores = np.array([[0.1, 0.5, 0.4], [0.9, 0.02, 0.08]])
    assert topk_accuracy(np.array([2, 1]), scores, 1) == 0.0
    assert topk_accuracy(np.array([2, 1]), scores, 2) == 0.5
