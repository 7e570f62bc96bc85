"""The SDK and CLI against a real server with a real SavedModel."""

from __future__ import annotations

import io
import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from digitserve.client import (
    AsyncDigitClient,
    DeadlineExceeded,
    DigitClient,
    InvalidArgument,
    NotFound,
    Prediction,
)
from digitserve.client.cli import main as cli
from digitserve.server.model import SavedModelRunner

from ..conftest import MODEL, ServerThread


@pytest.fixture(scope="module")
def reference(trained_repo: Path, mnist_test: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return SavedModelRunner(trained_repo / MODEL / "1").predict(mnist_test[0][:200])


@pytest.fixture
def client(shared_server: ServerThread):  # type: ignore[no-untyped-def]
    with DigitClient(shared_server.target) as c:
        yield c


def png_bytes(image: np.ndarray, size: int = 96) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(255 - image).resize((size, size)).save(buf, "PNG")
    return buf.getvalue()


def test_every_input_kind(client, mnist_test, reference, tmp_path) -> None:
    images, _ = mnist_test
    expected = int(reference[0].argmax())
    by_array = client.classify(images[0])
    assert isinstance(by_array, Prediction)
    assert (by_array.digit, by_array.model_name, by_array.model_version) == (expected, MODEL, 1)
    np.testing.assert_allclose(by_array.probabilities, reference[0], atol=1e-5)
    assert client.classify(images[0].astype(np.float32) / 255.0).digit == expected
    assert client.classify(Image.fromarray(images[0])).digit == expected
    path = tmp_path / "digit.png"
    path.write_bytes(png_bytes(images[0]))
    assert client.classify(path).digit == expected
    assert client.classify(str(path)).digit == expected
    assert client.classify(png_bytes(images[0])).digit == expected


def test_batch_and_stream_agree_with_the_model(client, mnist_test, reference) -> None:
    images, _ = mnist_test
    batch = client.classify_batch(list(images[:200]))
    assert [p.digit for p in batch] == reference.argmax(axis=1).tolist()
    streamed = list(client.classify_many(list(images[:200]), window=16))
    assert [p.digit for p in streamed] == reference.argmax(axis=1).tolist()


def test_stream_reports_a_bad_item_and_goes_on(client, mnist_test, reference) -> None:
    images, _ = mnist_test
    inputs = [*images[:5], b"\x89PNG\r\n\x1a\n broken", *images[5:10]]
    results = list(client.classify_many(inputs, raise_on_error=False))
    assert [r.index for r in results] == list(range(11))
    assert not results[5].ok and results[5].error is not None
    assert results[5].error.code == grpc.StatusCode.INVALID_ARGUMENT
    digits = [r.unwrap().digit for r in results if r.ok]
    assert digits == reference[:10].argmax(axis=1).tolist()
    with pytest.raises(InvalidArgument) as info:
        list(client.classify_many(inputs))
    assert info.value.index == 5


def test_typed_errors(client, mnist_test) -> None:
    with pytest.raises(NotFound, match="unknown model 'ghost'"):
        client.classify(mnist_test[0][0], model="ghost")
    with pytest.raises(NotFound, match="no label 'beta'"):
        client.classify(mnist_test[0][0], label="beta")
    with pytest.raises(InvalidArgument, match="could not be decoded"):
        client.classify(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DeadlineExceeded):
        client.classify_batch([mnist_test[0][0]] * 1024, timeout=0.0001)


def test_status_and_health(client) -> None:
    (model,) = client.status()
    assert model.name == MODEL and model.default_version == 1
    assert model.versions[0].metadata is not None
    assert model.versions[0].metadata.architecture == "dense128"
    assert client.health() == "SERVING"


async def test_async_client(shared_server: ServerThread, mnist_test, reference) -> None:
    images, _ = mnist_test
    async with AsyncDigitClient(shared_server.target) as client:
        assert (await client.classify(images[3])).digit == int(reference[3].argmax())
        batch = await client.classify_batch(list(images[:50]))
        assert [p.digit for p in batch] == reference[:50].argmax(axis=1).tolist()
        streamed = [p async for p in client.classify_many(list(images[:50]), window=8)]
        assert [p.digit for p in streamed] == reference[:50].argmax(axis=1).tolist()
        assert await client.health() == "SERVING"


def test_cli(shared_server: ServerThread, mnist_test, reference, tmp_path, capsys) -> None:
    images, _ = mnist_test
    files = []
    for i in range(3):
        path = tmp_path / f"d{i}.png"
        path.write_bytes(png_bytes(images[i]))
        files.append(str(path))
    target = ["--target", shared_server.target]
    assert cli([*target, "classify", "--json", *files]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["digit"] for r in rows] == reference[:3].argmax(axis=1).tolist()
    assert all(r["version"] == 1 for r in rows)
    assert cli([*target, "classify", files[0]]) == 0
    assert str(int(reference[0].argmax())) in capsys.readouterr().out
    assert cli([*target, "health"]) == 0
    assert "SERVING" in capsys.readouterr().out
    assert cli([*target, "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == MODEL
    assert cli([*target, "classify", "--model", "ghost", files[0]]) != 0
    assert "NOT_FOUND" in capsys.readouterr().err


def test_replica_that_is_not_serving_gets_no_calls_but_reports_its_state(
    tmp_path, start_server
) -> None:
    from digitserve.client import Unavailable

    from ..conftest import server_settings

    empty = tmp_path / "repo"
    (empty / MODEL).mkdir(parents=True)
    server = start_server(server_settings(empty), wait_serving=False)
    with DigitClient(server.target, timeout=3) as client:
        assert client.health() == "NOT_SERVING"
        (model,) = client.status()
        assert model.name == MODEL and model.versions == ()
        with pytest.raises(Unavailable):
            client.classify(np.zeros((28, 28), np.uint8))
