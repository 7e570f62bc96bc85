"""The gRPC contract end to end: a real server, a real SavedModel, real gRPC stubs."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from digitserve.server import repository
from digitserve.server.model import SavedModelRunner
from digitserve.v1 import digitserve_pb2 as pb
from digitserve.v1 import digitserve_pb2_grpc as pb_grpc

from ..conftest import MODEL, ServerThread, server_settings


@pytest.fixture(scope="module")
def channel(shared_server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(shared_server.target) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.DigitClassifierStub:
    return pb_grpc.DigitClassifierStub(channel)


@pytest.fixture(scope="module")
def reference(trained_repo: Path, mnist_test: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Probabilities of the first 300 test images computed in-process by the same SavedModel."""
    runner = SavedModelRunner(trained_repo / MODEL / "1")
    return runner.predict(mnist_test[0][:300])


def raw(image: np.ndarray) -> pb.Image:
    return pb.Image(pixels=image.astype(np.uint8).tobytes())


def png(image: np.ndarray, *, scale: int = 4, dark_on_light: bool = True) -> pb.Image:
    """A scanned-looking PNG: larger than 28x28, dark ink on white paper."""
    pixels = 255 - image if dark_on_light else image
    big = Image.fromarray(pixels).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, "PNG")
    return pb.Image(encoded=buf.getvalue())


def jpeg(image: np.ndarray) -> pb.Image:
    buf = io.BytesIO()
    Image.fromarray(255 - image).resize((84, 84)).convert("RGB").save(buf, "JPEG", quality=90)
    return pb.Image(encoded=buf.getvalue())


def call_error(fn, request) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        fn(request, timeout=10)
    return info.value


def test_raw_images_match_the_model_in_process(stub, mnist_test, reference) -> None:
    images, labels = mnist_test
    response = stub.Classify(
        pb.ClassifyRequest(images=[raw(img) for img in images[:300]]), timeout=30
    )
    assert response.model.name == MODEL and response.model.version == 1
    assert len(response.predictions) == 300
    got = np.array([list(p.probabilities) for p in response.predictions], dtype=np.float32)
    np.testing.assert_allclose(got, reference, atol=1e-5)
    digits = np.array([p.digit for p in response.predictions])
    np.testing.assert_array_equal(digits, reference.argmax(axis=1))
    for p in response.predictions:
        assert p.confidence == pytest.approx(max(p.probabilities))
        assert sum(p.probabilities) == pytest.approx(1.0, abs=1e-4)
    assert (digits == labels[:300]).mean() >= 0.88


def test_png_and_jpeg_inputs_are_prepared_the_mnist_way(stub, mnist_test, reference) -> None:
    images, labels = mnist_test
    request = pb.ClassifyRequest(images=[png(img) for img in images[:200]])
    digits = np.array([p.digit for p in stub.Classify(request, timeout=30).predictions])
    assert (digits == labels[:200]).mean() >= 0.85
    assert (digits == reference[:200].argmax(axis=1)).mean() >= 0.9
    light = pb.ClassifyRequest(images=[png(img, dark_on_light=False) for img in images[:50]])
    digits_light = np.array([p.digit for p in stub.Classify(light, timeout=30).predictions])
    assert (digits_light == digits[:50]).mean() >= 0.95  # polarity does not matter
    jpegs = pb.ClassifyRequest(images=[jpeg(img) for img in images[:50]])
    digits_jpeg = np.array([p.digit for p in stub.Classify(jpegs, timeout=30).predictions])
    assert (digits_jpeg == labels[:50]).mean() >= 0.85


def test_mixed_raw_and_encoded_keep_request_order(stub, mnist_test, reference) -> None:
    images, _ = mnist_test
    request = pb.ClassifyRequest(
        images=[raw(images[i]) if i % 2 else png(images[i]) for i in range(20)]
    )
    response = stub.Classify(request, timeout=30)
    for i in range(1, 20, 2):
        np.testing.assert_allclose(response.predictions[i].probabilities, reference[i], atol=1e-5)


@pytest.mark.parametrize(
    ("request_msg", "code", "fragment"),
    [
        (pb.ClassifyRequest(), grpc.StatusCode.INVALID_ARGUMENT, "no images"),
        (
            pb.ClassifyRequest(images=[pb.Image(pixels=b"\x00" * 783)]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "exactly 784 bytes",
        ),
        (
            pb.ClassifyRequest(images=[pb.Image(encoded=b"not an image")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "could not be decoded",
        ),
        (
            pb.ClassifyRequest(images=[pb.Image()]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "neither 'pixels'",
        ),
        (
            pb.ClassifyRequest(
                images=[pb.Image(pixels=b"\x00" * 784)], model=pb.ModelSelector(name="nope")
            ),
            grpc.StatusCode.NOT_FOUND,
            "unknown model 'nope'",
        ),
        (
            pb.ClassifyRequest(
                images=[pb.Image(pixels=b"\x00" * 784)], model=pb.ModelSelector(version=42)
            ),
            grpc.StatusCode.NOT_FOUND,
            "no servable version 42",
        ),
        (
            pb.ClassifyRequest(
                images=[pb.Image(pixels=b"\x00" * 784)], model=pb.ModelSelector(label="canary")
            ),
            grpc.StatusCode.NOT_FOUND,
            "no label 'canary'",
        ),
        (
            pb.ClassifyRequest(
                images=[pb.Image(pixels=b"\x00" * 784)], model=pb.ModelSelector(version=-3)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "positive integer",
        ),
    ],
)
def test_bad_requests_get_clear_errors(stub, request_msg, code, fragment) -> None:
    error = call_error(stub.Classify, request_msg)
    assert error.code() == code
    assert fragment in error.details()
    # the server stays healthy and keeps answering
    ok = stub.Classify(pb.ClassifyRequest(images=[pb.Image(pixels=b"\x00" * 784)]), timeout=10)
    assert len(ok.predictions) == 1


def test_bad_image_error_names_its_position(stub, mnist_test) -> None:
    images, _ = mnist_test
    request = pb.ClassifyRequest(images=[raw(images[0]), pb.Image(pixels=b"12"), raw(images[1])])
    error = call_error(stub.Classify, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("image 1:")


def test_too_many_images(stub) -> None:
    request = pb.ClassifyRequest(images=[pb.Image(pixels=b"\x00" * 784)] * 1025)
    error = call_error(stub.Classify, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 1024" in error.details()
    full = pb.ClassifyRequest(images=[pb.Image(pixels=b"\x00" * 784)] * 1024)
    assert len(stub.Classify(full, timeout=30).predictions) == 1024


def test_oversized_and_blank_encoded_images(stub) -> None:
    blank = io.BytesIO()
    Image.new("L", (64, 64), 255).save(blank, "PNG")
    error = call_error(
        stub.Classify, pb.ClassifyRequest(images=[pb.Image(encoded=blank.getvalue())])
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no visible ink" in error.details()
    huge = io.BytesIO()
    Image.new("L", (5000, 10), 0).save(huge, "PNG")
    error = call_error(
        stub.Classify, pb.ClassifyRequest(images=[pb.Image(encoded=huge.getvalue())])
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 4096" in error.details()
    gif = io.BytesIO()
    Image.new("L", (28, 28), 0).save(gif, "GIF")
    error = call_error(stub.Classify, pb.ClassifyRequest(images=[pb.Image(encoded=gif.getvalue())]))
    assert "send PNG or JPEG" in error.details()


def test_stream_keeps_going_past_a_bad_item_and_echoes_ids(stub, mnist_test, reference) -> None:
    images, _ = mnist_test

    def requests() -> Iterator[pb.ClassifyStreamRequest]:
        for i in range(60):
            if i == 30:
                image = pb.Image(pixels=b"short")
            elif i == 31:
                image = pb.Image(encoded=b"garbage")
            elif i % 7 == 0:
                image = png(images[i])
            else:
                image = raw(images[i])
            yield pb.ClassifyStreamRequest(id=f"item-{i}", image=image)

    responses = list(stub.ClassifyStream(requests(), timeout=30))
    by_id = {r.id: r for r in responses}
    assert len(responses) == 60 and len(by_id) == 60
    for i in range(60):
        r = by_id[f"item-{i}"]
        if i in (30, 31):
            assert r.WhichOneof("result") == "error"
            assert r.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert r.error.message
            assert not r.HasField("model")
        else:
            assert r.WhichOneof("result") == "prediction"
            assert (r.model.name, r.model.version) == (MODEL, 1)
            if i % 7:
                np.testing.assert_allclose(r.prediction.probabilities, reference[i], atol=1e-5)


def test_stream_item_errors_for_unknown_model_and_label(stub) -> None:
    items = [
        pb.ClassifyStreamRequest(id="a", image=pb.Image(pixels=b"\x00" * 784)),
        pb.ClassifyStreamRequest(
            id="b", image=pb.Image(pixels=b"\x00" * 784), model=pb.ModelSelector(name="x")
        ),
        pb.ClassifyStreamRequest(
            id="c", image=pb.Image(pixels=b"\x00" * 784), model=pb.ModelSelector(label="nope")
        ),
        pb.ClassifyStreamRequest(id="d" * 200, image=pb.Image(pixels=b"\x00" * 784)),
    ]
    by_id = {r.id: r for r in stub.ClassifyStream(iter(items), timeout=10)}
    assert by_id["a"].WhichOneof("result") == "prediction"
    assert by_id["b"].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert by_id["c"].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "longer than 128 bytes" in by_id["d" * 200].error.message


def test_empty_stream_ends_cleanly(stub) -> None:
    assert list(stub.ClassifyStream(iter([]), timeout=10)) == []


def test_status_lists_versions_and_metadata(stub, trained_repo) -> None:
    response = stub.GetModelStatus(pb.GetModelStatusRequest(), timeout=10)
    assert [m.name for m in response.models] == [MODEL]
    model = response.models[0]
    assert model.default_version == 1
    (version,) = model.versions
    assert version.version == 1
    assert version.state == pb.VERSION_STATE_AVAILABLE
    manifest = repository.read_manifest(trained_repo / MODEL / "1")
    assert version.metadata.test_accuracy == pytest.approx(manifest.metadata["test_accuracy"])
    assert version.metadata.architecture == "dense128"
    assert version.metadata.trained_at.seconds > 0
    assert version.metadata.training_parameters["seed"] == "1"
    assert set(version.metadata.data_checksums) >= {"t10k-images-idx3-ubyte.gz"}
    error = call_error(stub.GetModelStatus, pb.GetModelStatusRequest(name="missing"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_request_id_is_echoed(stub) -> None:
    request = pb.ClassifyRequest(images=[pb.Image(pixels=b"\x00" * 784)])
    _, call = stub.Classify.with_call(request, metadata=[("x-request-id", "abc-123")], timeout=10)
    assert ("x-request-id", "abc-123") in call.trailing_metadata()
    _, call = stub.Classify.with_call(request, timeout=10)
    generated = dict(call.trailing_metadata())["x-request-id"]
    assert len(generated) == 32


def test_health_and_reflection(channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "digitserve.v1.DigitClassifier"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(
        reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
    )
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"digitserve.v1.DigitClassifier", "grpc.health.v1.Health"} <= names


def test_unavailable_and_not_serving_before_any_model(tmp_path, start_server) -> None:
    empty = tmp_path / "empty-repo"
    empty.mkdir()
    server = start_server(server_settings(empty), wait_serving=False)
    with grpc.insecure_channel(server.target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        stub = pb_grpc.DigitClassifierStub(ch)
        server.refresh()
        error = call_error(
            stub.Classify, pb.ClassifyRequest(images=[pb.Image(pixels=b"\x00" * 784)])
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND  # the repository has no such model
        (empty / MODEL).mkdir()
        server.refresh()
        error = call_error(
            stub.Classify, pb.ClassifyRequest(images=[pb.Image(pixels=b"\x00" * 784)])
        )
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "no available version" in error.details()


def test_request_id_is_echoed_with_metrics_off(trained_repo, start_server) -> None:
    server = start_server(server_settings(trained_repo, metrics_enabled=False))
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.DigitClassifierStub(channel)
        request = pb.ClassifyRequest(images=[pb.Image(pixels=b"\x00" * 784)])
        _, call = stub.Classify.with_call(request, metadata=[("x-request-id", "r-7")], timeout=10)
        assert ("x-request-id", "r-7") in call.trailing_metadata()
    assert server.server is not None and server.server.metrics.port is None
