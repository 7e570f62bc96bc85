"""The quality gate a model must pass before it is published.

Two checks: an absolute floor on test accuracy, and no regression of more than
``max_regression`` below the version labelled ``stable``, if there is one. The
decision is a value, so the trainer and the model-management CLI share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from digitserve.server import repository

BASELINE_LABEL = "stable"


@dataclass(frozen=True)
class GateDecision:
    """Whether a candidate may be published, and the figures the decision rests on."""

    accuracy: float
    min_accuracy: float
    max_regression: float
    baseline_version: int | None = None
    baseline_accuracy: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        verdict = "passed" if self.passed else "failed"
        text = f"quality gate {verdict}: test accuracy {self.accuracy:.4%}"
        if self.failures:
            text += "; " + "; ".join(self.failures)
        return text


class QualityGateError(Exception):
    """The model did not pass the quality gate and was not published."""

    def __init__(self, decision: GateDecision):
        super().__init__(decision.summary())
        self.decision = decision


def check_quality(
    accuracy: float,
    *,
    repo: Path,
    model: str,
    min_accuracy: float,
    max_regression: float,
    baseline_label: str = BASELINE_LABEL,
) -> GateDecision:
    """Decide whether a model of test ``accuracy`` may be published as ``model`` in ``repo``.

    A baseline label that points to a version whose manifest does not verify or records
    no test accuracy fails the gate: it cannot be shown that the candidate is no worse.
    """
    failures = []
    if accuracy < min_accuracy:
        failures.append(f"below the minimum accuracy {min_accuracy:.4%}")
    baseline_version = repository.read_labels(repo, model).get(baseline_label)
    baseline_accuracy = None
    if baseline_version is not None:
        try:
            manifest = repository.verify_version(repo / model / str(baseline_version))
            baseline_accuracy = float(manifest.metadata["test_accuracy"])
        except (repository.RepositoryError, KeyError, TypeError, ValueError) as exc:
            failures.append(
                f"cannot read the test accuracy of {baseline_label} version "
                f"{baseline_version}: {exc}"
            )
        else:
            if accuracy < baseline_accuracy - max_regression:
                failures.append(
                    f"regression vs {baseline_label} version {baseline_version} "
                    f"({baseline_accuracy:.4%}): {accuracy - baseline_accuracy:+.4%}, "
                    f"more than the {max_regression:.4%} allowed"
                )
    return GateDecision(
        accuracy=accuracy,
        min_accuracy=min_accuracy,
        max_regression=max_regression,
        baseline_version=baseline_version,
        baseline_accuracy=baseline_accuracy,
        failures=failures,
    )
