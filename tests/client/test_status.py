"""ModelStatus and its parts built from a hand-made GetModelStatus answer."""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp

from digitserve.client import VersionState
from digitserve.client.status import models_from_response
from digitserve.v1 import digitserve_pb2

TRAINED_AT = dt.datetime(2026, 11, 24, 5, 4, 22, 500000, tzinfo=dt.UTC)


def status_response() -> digitserve_pb2.GetModelStatusResponse:
    trained_at = Timestamp()
    trained_at.FromDatetime(TRAINED_AT)
    metadata = digitserve_pb2.VersionMetadata(
        test_accuracy=0.9912,
        test_loss=0.031,
        trained_at=trained_at,
        architecture="cnn",
        training_parameters={"epochs": "3", "batch_size": "128"},
        data_checksums={"train-images.gz": "ab" * 32},
    )
    return digitserve_pb2.GetModelStatusResponse(
        models=[
            digitserve_pb2.ModelStatus(
                name="mnist",
                versions=[
                    digitserve_pb2.VersionStatus(
                        version=3,
                        state=digitserve_pb2.VERSION_STATE_LOADING,
                        labels=["canary"],
                        metadata=metadata,
                    ),
                    digitserve_pb2.VersionStatus(
                        version=2,
                        state=digitserve_pb2.VERSION_STATE_AVAILABLE,
                        labels=["stable"],
                        metadata=metadata,
                    ),
                    digitserve_pb2.VersionStatus(
                        version=1,
                        state=digitserve_pb2.VERSION_STATE_FAILED,
                        reason="checksum mismatch",
                    ),
                ],
                labels={"stable": 2, "canary": 3},
                default_version=2,
            ),
            digitserve_pb2.ModelStatus(name="empty"),
        ]
    )


def test_models_keep_their_order_names_labels_and_default_version() -> None:
    mnist, empty = models_from_response(status_response())
    assert mnist.name == "mnist"
    assert [v.version for v in mnist.versions] == [3, 2, 1]
    assert dict(mnist.labels) == {"canary": 3, "stable": 2}
    assert mnist.default_version == 2
    assert empty.name == "empty"
    assert empty.versions == ()
    assert empty.default_version is None


def test_versions_carry_state_names_labels_and_reason() -> None:
    loading, available, failed = models_from_response(status_response())[0].versions
    assert loading.state is VersionState.LOADING
    assert available.state == "AVAILABLE"
    assert failed.state is VersionState.FAILED
    assert failed.reason == "checksum mismatch"
    assert loading.labels == ("canary",)
    assert failed.labels == ()


def test_metadata_has_accuracy_aware_datetime_parameters_and_checksums() -> None:
    metadata = models_from_response(status_response())[0].versions[1].metadata
    assert metadata is not None
    assert metadata.test_accuracy == 0.9912
    assert metadata.test_loss == 0.031
    assert metadata.trained_at == TRAINED_AT
    assert metadata.trained_at is not None
    assert metadata.trained_at.utcoffset() == dt.timedelta(0)
    assert metadata.architecture == "cnn"
    assert dict(metadata.training_parameters) == {"batch_size": "128", "epochs": "3"}
    assert dict(metadata.data_checksums) == {"train-images.gz": "ab" * 32}


def test_version_without_metadata_has_none() -> None:
    failed = models_from_response(status_response())[0].versions[2]
    assert failed.metadata is None


def test_metadata_without_trained_at_has_none() -> None:
    response = digitserve_pb2.GetModelStatusResponse(
        models=[
            digitserve_pb2.ModelStatus(
                name="m",
                versions=[
                    digitserve_pb2.VersionStatus(
                        version=1, metadata=digitserve_pb2.VersionMetadata(test_accuracy=0.5)
                    )
                ],
            )
        ]
    )
    metadata = models_from_response(response)[0].versions[0].metadata
    assert metadata is not None
    assert metadata.trained_at is None


def test_unknown_state_number_is_unspecified() -> None:
    response = digitserve_pb2.GetModelStatusResponse(
        models=[
            digitserve_pb2.ModelStatus(
                name="m",
                versions=[digitserve_pb2.VersionStatus(version=1, state=42)],  # type: ignore[arg-type]
            )
        ]
    )
    assert models_from_response(response)[0].versions[0].state is VersionState.UNSPECIFIED
