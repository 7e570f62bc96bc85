"""The server process: start-up, health transitions, SIGTERM drain and exit status."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from digitserve.v1 import digitserve_pb2 as pb
from digitserve.v1 import digitserve_pb2_grpc as pb_grpc

from ..conftest import MODEL
from ..processes import ServerProcess

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def server_process(trained_repo: Path):  # type: ignore[no-untyped-def]
    started: list[ServerProcess] = []

    def start(*extra: str, repo: Path = trained_repo) -> ServerProcess:
        process = ServerProcess(repo, MODEL, *extra)
        started.append(process)
        return process.wait_ports()

    yield start
    for process in started:
        process.kill()


def slow_request(mnist_test: tuple[np.ndarray, np.ndarray], count: int) -> pb.ClassifyRequest:
    """Many large PNGs: decoding them keeps the server busy for a while."""
    images = []
    for img in mnist_test[0][:count]:
        buf = io.BytesIO()
        Image.fromarray(255 - img).resize((600, 600)).save(buf, "PNG", compress_level=1)
        images.append(pb.Image(encoded=buf.getvalue()))
    return pb.ClassifyRequest(images=images)


def test_sigterm_drains_in_flight_requests_and_exits_zero(server_process, mnist_test) -> None:
    server = server_process("--grace-seconds", "30")
    request = slow_request(mnist_test, 300)
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=60)
        seen = [next(watch).status]
        if seen[0] != SERVING:
            seen.append(next(watch).status)
        assert seen[-1] == SERVING

        stub = pb_grpc.DigitClassifierStub(channel)
        future = stub.Classify.future(request, timeout=60)
        time.sleep(0.3)  # the request is being decoded
        assert not future.done()
        server.proc.send_signal(signal.SIGTERM)
        assert next(watch).status == NOT_SERVING  # health flips before anything stops

        response = future.result()
        assert len(response.predictions) == 300
        assert (
            np.array([p.digit for p in response.predictions]) == mnist_test[1][:300]
        ).mean() > 0.8

        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(pb.ClassifyRequest(images=[pb.Image(pixels=b"\x00" * 784)]), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.wait() == 0
    assert "draining" in server.log and "stopped" in server.log


def test_health_is_not_serving_until_a_model_is_warm(server_process, tmp_path, trained_repo):
    import shutil

    empty = tmp_path / "repo"
    empty.mkdir()
    server = server_process("--poll-seconds", "0.2", repo=empty)
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == NOT_SERVING
        shutil.copytree(trained_repo / MODEL, empty / MODEL)  # a published model appears
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=60)
        assert SERVING in (next(watch).status, next(watch).status)
    server.proc.send_signal(signal.SIGINT)
    assert server.wait() == 0


def test_invalid_settings_exit_with_a_clear_message(trained_repo) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "digitserve.server.main", "--max-batch-size", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "max_batch_size" in result.stderr and "greater than or equal to 1" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "digitserve.server.main", "--version-policy", "newest"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "invalid version policy 'newest'" in result.stderr


def test_sighup_rescans_the_repository_at_once(server_process, repo) -> None:
    from .test_hot_reload import republish

    server = server_process("--poll-seconds", "3600", repo=repo)
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.DigitClassifierStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=60)
        assert SERVING in (next(watch).status, next(watch).status)
        version = republish(repo)
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while True:
            (model,) = stub.GetModelStatus(pb.GetModelStatusRequest(), timeout=5).models
            if model.default_version == version:
                break
            assert time.monotonic() < deadline, "SIGHUP did not load the new version"
            time.sleep(0.1)
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait() == 0
