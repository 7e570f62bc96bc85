"""Classification metrics computed from labels and predicted probabilities (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from digitserve.trainer.data import NUM_CLASSES

# Probabilities are clipped before the log so that one confident mistake cannot make
# the loss infinite.
_EPSILON = 1e-7


@dataclass(frozen=True)
class Evaluation:
    """How a model did on a labelled image set."""

    labels: np.ndarray
    """int [N] true digits."""
    probabilities: np.ndarray
    """float32 [N, 10] predicted probabilities."""

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.predictions == self.labels))

    @property
    def loss(self) -> float:
        """Mean cross-entropy of the true labels (no label smoothing)."""
        picked = self.probabilities[np.arange(len(self.labels)), self.labels]
        return float(-np.mean(np.log(np.clip(picked, _EPSILON, 1.0))))

    def confusion_matrix(self) -> np.ndarray:
        """int [10, 10]: row = true digit, column = predicted digit."""
        matrix = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
        np.add.at(matrix, (self.labels, self.predictions), 1)
        return matrix

    def per_class(self) -> list[dict[str, Any]]:
        """Precision, recall, F1 and support of each digit."""
        matrix = self.confusion_matrix()
        rows = []
        for digit in range(NUM_CLASSES):
            true_positive = int(matrix[digit, digit])
            predicted = int(matrix[:, digit].sum())
            support = int(matrix[digit, :].sum())
            precision = true_positive / predicted if predicted else 0.0
            recall = true_positive / support if support else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            rows.append(
                {
                    "digit": digit,
                    "precision": precision,
                    "recall": recall,
                    "f1": f1,
                    "support": support,
                }
            )
        return rows

    def to_json(self) -> dict[str, Any]:
        per_class = self.per_class()
        return {
            "examples": len(self.labels),
            "accuracy": self.accuracy,
            "loss": self.loss,
            "errors": int(np.sum(self.predictions != self.labels)),
            "macro_f1": float(np.mean([row["f1"] for row in per_class])),
            "per_class": per_class,
            "confusion_matrix": self.confusion_matrix().tolist(),
        }
