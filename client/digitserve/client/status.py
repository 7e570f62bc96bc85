"""What ``status()`` returns: the models a server knows, their versions and metadata."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass

from digitserve.v1 import digitserve_pb2

__all__ = [
    "ModelStatus",
    "VersionMetadata",
    "VersionState",
    "VersionStatus",
    "models_from_response",
]


class VersionState(enum.StrEnum):
    """Where a model version is in its life."""

    UNSPECIFIED = "UNSPECIFIED"
    """The server sent no state, or one this SDK does not know."""
    LOADING = "LOADING"
    """Being loaded and warmed up; not serving yet."""
    AVAILABLE = "AVAILABLE"
    """Serving requests."""
    UNLOADING = "UNLOADING"
    """Draining the requests that started on it, then unloaded."""
    FAILED = "FAILED"
    """Could not be loaded; see ``VersionStatus.reason``."""


_STATE_PREFIX = "VERSION_STATE_"


@dataclass(frozen=True, slots=True)
class VersionMetadata:
    """What the trainer recorded about a version."""

    test_accuracy: float
    """Accuracy on the 10,000 MNIST test images, in [0, 1]."""
    test_loss: float
    """Mean cross-entropy loss on the test images."""
    trained_at: dt.datetime | None
    """When training finished (timezone-aware, UTC); None if not recorded."""
    architecture: str
    """Architecture name, e.g. "cnn" or "mlp"."""
    training_parameters: Mapping[str, str]
    """Training parameters (epochs, batch size, learning rate, seed, ...), as strings."""
    data_checksums: Mapping[str, str]
    """SHA-256 of each data file the model was trained and tested on, by file name."""


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """One version of a model as the server sees it."""

    version: int
    """Version number."""
    state: VersionState
    """Current state."""
    reason: str
    """Why the version failed to load; empty unless ``state`` is FAILED."""
    labels: tuple[str, ...]
    """Labels pointing at this version."""
    metadata: VersionMetadata | None
    """What the trainer recorded; None when the server could not read it."""


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """One model the server knows."""

    name: str
    """Model name."""
    versions: tuple[VersionStatus, ...]
    """Every version the server knows of, newest first."""
    labels: Mapping[str, int]
    """The version each label points at."""
    default_version: int | None
    """The version a request naming no version or label gets; None when none is available."""


def models_from_response(response: digitserve_pb2.GetModelStatusResponse) -> list[ModelStatus]:
    """The ``ModelStatus`` of every model in a ``GetModelStatus`` answer, in its order."""
    return [model_from_proto(model) for model in response.models]


def model_from_proto(model: digitserve_pb2.ModelStatus) -> ModelStatus:
    """A ``ModelStatus`` from its message."""
    return ModelStatus(
        name=model.name,
        versions=tuple(version_from_proto(v) for v in model.versions),
        labels=dict(sorted(model.labels.items())),
        default_version=int(model.default_version) or None,
    )


def version_from_proto(version: digitserve_pb2.VersionStatus) -> VersionStatus:
    """A ``VersionStatus`` from its message."""
    return VersionStatus(
        version=int(version.version),
        state=_state_from_proto(version.state),
        reason=version.reason,
        labels=tuple(version.labels),
        metadata=metadata_from_proto(version.metadata) if version.HasField("metadata") else None,
    )


def metadata_from_proto(metadata: digitserve_pb2.VersionMetadata) -> VersionMetadata:
    """A ``VersionMetadata`` from its message."""
    trained_at = (
        metadata.trained_at.ToDatetime(tzinfo=dt.UTC) if metadata.HasField("trained_at") else None
    )
    return VersionMetadata(
        test_accuracy=float(metadata.test_accuracy),
        test_loss=float(metadata.test_loss),
        trained_at=trained_at,
        architecture=metadata.architecture,
        training_parameters=dict(sorted(metadata.training_parameters.items())),
        data_checksums=dict(sorted(metadata.data_checksums.items())),
    )


def _state_from_proto(state: int) -> VersionState:
    try:
        name = digitserve_pb2.VersionState.Name(state)
    except ValueError:  # a number newer than these bindings
        return VersionState.UNSPECIFIED
    # A state newer than this SDK (but known to the bindings) is UNSPECIFIED too.
    return VersionState.__members__.get(name.removeprefix(_STATE_PREFIX), VersionState.UNSPECIFIED)
