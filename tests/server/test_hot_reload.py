"""Publishing into a repository that a real server is serving from, under load."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from digitserve.server import repository
from digitserve.v1 import digitserve_pb2 as pb
from digitserve.v1 import digitserve_pb2_grpc as pb_grpc

from ..conftest import MODEL, server_settings


def republish(repo: Path, source: int = 1, *, corrupt: bool = False) -> int:
    """Publish a copy of version ``source`` as the next version (as the trainer would)."""
    version = repository.import_version(repo / MODEL / str(source), repo, MODEL)
    if corrupt:  # damage it after publishing: the manifest no longer verifies
        (repo / MODEL / str(version) / "saved_model.pb").write_bytes(b"corrupt")
    return version


def status(stub: pb_grpc.DigitClassifierStub) -> dict[int, int]:
    (model,) = stub.GetModelStatus(pb.GetModelStatusRequest(name=MODEL), timeout=10).models
    return {v.version: v.state for v in model.versions}


def wait_for(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


class Load:
    """Client threads sending single-image requests until stopped."""

    def __init__(self, target: str, images: np.ndarray, selectors: list[pb.ModelSelector]):
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.DigitClassifierStub(self.channel)
        self.images = images
        self.versions: Counter[int] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(s, i), daemon=True)
            for i, s in enumerate(selectors)
        ]

    def _run(self, selector: pb.ModelSelector, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not self._stop.is_set():
            image = self.images[rng.integers(len(self.images))]
            request = pb.ClassifyRequest(images=[pb.Image(pixels=image.tobytes())], model=selector)
            try:
                response = self.stub.Classify(request, timeout=10)
            except grpc.RpcError as exc:
                with self._lock:
                    self.failures.append(f"{exc.code()}: {exc.details()}")
                continue
            with self._lock:
                self.versions[response.model.version] += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(30)
        self.channel.close()


def test_publishing_and_moving_labels_under_load_fails_no_request(
    repo: Path, start_server, mnist_test
) -> None:
    repository.set_label(repo, MODEL, "stable", 1)
    server = start_server(server_settings(repo, version_policy="latest:2"))
    channel = grpc.insecure_channel(server.target)
    stub = pb_grpc.DigitClassifierStub(channel)
    selectors = [pb.ModelSelector()] * 4 + [pb.ModelSelector(label="stable")] * 2
    available_ever: set[int] = {1}

    def track() -> dict[int, int]:
        states = status(stub)
        available_ever.update(v for v, s in states.items() if s == pb.VERSION_STATE_AVAILABLE)
        return states

    with Load(server.target, mnist_test[0][:500], selectors) as load:
        time.sleep(0.5)
        for step in range(5):
            version = republish(repo)
            wait_for(lambda v=version: track().get(v) == pb.VERSION_STATE_AVAILABLE)
            if step == 1:
                repository.set_label(repo, MODEL, "stable", version)  # promote v3
                wait_for(lambda v=version: server_default(stub) == v)
            if step == 2:
                bad = republish(repo, corrupt=True)
                wait_for(lambda b=bad: track().get(b) == pb.VERSION_STATE_FAILED)
            time.sleep(0.3)
        repository.set_label(repo, MODEL, "stable", version)
        wait_for(lambda: server_default(stub) == version)
        time.sleep(0.5)
        track()

    assert load.failures == []
    assert sum(load.versions.values()) > 200
    assert set(load.versions) <= available_ever
    assert bad not in load.versions and bad not in available_ever
    assert load.versions[1] > 0 and load.versions[version] > 0
    final = track()
    channel.close()
    assert final[bad] == pb.VERSION_STATE_FAILED
    # latest:2 plus the stable label: the two newest good versions
    assert {v for v, s in final.items() if s == pb.VERSION_STATE_AVAILABLE} == {
        version,
        version - 1,
    }


def server_default(stub: pb_grpc.DigitClassifierStub) -> int:
    (model,) = stub.GetModelStatus(pb.GetModelStatusRequest(name=MODEL), timeout=10).models
    return model.default_version


def test_corrupt_version_fails_while_the_previous_keeps_serving(repo: Path, start_server) -> None:
    server = start_server(server_settings(repo))
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.DigitClassifierStub(channel)
        bad = republish(repo, corrupt=True)
        server.refresh()
        (model,) = stub.GetModelStatus(pb.GetModelStatusRequest(), timeout=10).models
        states = {v.version: (v.state, v.reason) for v in model.versions}
        assert states[bad][0] == pb.VERSION_STATE_FAILED
        assert "checksum mismatch: saved_model.pb" in states[bad][1]
        assert states[1][0] == pb.VERSION_STATE_AVAILABLE
        response = stub.Classify(
            pb.ClassifyRequest(images=[pb.Image(pixels=b"\x00" * 784)]), timeout=10
        )
        assert response.model.version == 1
        # a half-copied folder (no manifest) is not even listed
        half = repo / MODEL / str(bad + 1)
        shutil.copytree(repo / MODEL / "1" / "variables", half / "variables")
        server.refresh()
        (model,) = stub.GetModelStatus(pb.GetModelStatusRequest(), timeout=10).models
        assert bad + 1 not in {v.version for v in model.versions}
