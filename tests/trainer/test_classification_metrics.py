"""Accuracy, loss, confusion matrix and per-digit precision/recall/F1."""

from __future__ import annotations

import numpy as np
import pytest

from digitserve.trainer.metrics import Evaluation


def one_hot_ish(predicted: list[int], confidence: float = 0.9) -> np.ndarray:
    probabilities = np.full((len(predicted), 10), (1 - confidence) / 9, np.float32)
    probabilities[np.arange(len(predicted)), predicted] = confidence
    return probabilities


def test_metrics_of_a_known_prediction() -> None:
    labels = np.array([0, 0, 1, 1, 2])
    evaluation = Evaluation(labels=labels, probabilities=one_hot_ish([0, 1, 1, 1, 2]))
    assert evaluation.accuracy == pytest.approx(0.8)
    # 4 right at 0.9, one wrong where the true class got 0.1/9.
    assert evaluation.loss == pytest.approx(-(4 * np.log(0.9) + np.log(0.1 / 9)) / 5, rel=1e-5)
    matrix = evaluation.confusion_matrix()
    assert matrix[0, 0] == 1 and matrix[0, 1] == 1 and matrix[1, 1] == 2 and matrix.sum() == 5
    per_class = evaluation.per_class()
    assert per_class[0] == pytest.approx(
        {"digit": 0, "precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    assert per_class[1]["precision"] == pytest.approx(2 / 3)
    assert per_class[1]["recall"] == 1.0
    assert per_class[5] == {"digit": 5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert evaluation.to_json()["errors"] == 1
