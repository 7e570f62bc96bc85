"""Scale-out, simulated on one machine: three server processes, one repository, one client.

What a Kubernetes Deployment with several replicas relies on, checked with real
``digitserve-server`` processes (the console script the container image runs)
on 127.0.0.1, all serving one shared model repository, and one SDK client given
the three addresses (as it would get them from the headless Service's DNS name):

* the client spreads unary calls evenly over the replicas (round_robin), as
  counted by each replica's own ``/metrics``;
* a version published into the shared repository reaches every replica;
* a replica stopped with SIGTERM mid-run (a pod being deleted) costs the
  client no failed call: the replica drains and the client retries UNAVAILABLE
  on the others.
"""

from __future__ import annotations

import functools
import shutil
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from digitserve.client import DigitClient, DigitServeError, VersionState
from digitserve.server import repository

from ..conftest import MODEL
from ..processes import ServerProcess

pytestmark = pytest.mark.slow

REPLICAS = 3
CALLS = 600
THREADS = 4
#: Each replica's share of the calls must be within this fraction of an even share.
SHARE_TOLERANCE = 0.2
#: What the Deployment sets (see deploy/k8s/base/server-config.yaml): keep serving this
#: long after SIGTERM while health says NOT_SERVING, then stop.
DRAIN_DELAY_SECONDS = 1.0
GRACE_SECONDS = 5.0
START_TIMEOUT = 120.0
PUBLISH_TIMEOUT = 30.0


class Replica(ServerProcess):
    """One of the replicas, sharing the model repository."""

    def __init__(self, repo: Path, index: int) -> None:
        self.index = index
        super().__init__(
            repo, MODEL,
            "--poll-seconds", "0.2",
            "--drain-delay-seconds", str(DRAIN_DELAY_SECONDS),
            "--grace-seconds", str(GRACE_SECONDS),
            "--batch-threads", "1", "--preprocess-threads", "1",
        )  # fmt: skip

    @property
    def address(self) -> str:
        return self.target

    def classify_ok(self) -> float:
        """Classify calls this replica answered with OK, from its own /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (
                    sample.name == "digitserve_requests_total"
                    and sample.labels.get("rpc") == "Classify"
                    and sample.labels.get("code") == "OK"
                ):
                    total += sample.value
        return total

    def has_available(self, version: int) -> bool:
        """Whether this replica's status RPC reports ``version`` AVAILABLE."""
        with DigitClient(self.address, timeout=5) as client:
            (model,) = client.status(MODEL)
        return any(
            v.version == version and v.state is VersionState.AVAILABLE for v in model.versions
        )

    def has_health(self, status: str) -> bool:
        with DigitClient(self.address, timeout=5) as client:
            return client.health() == status


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until ``predicate()``; returns the seconds it took."""
    started = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - started
        except DigitServeError:
            pass  # not answering yet
        assert time.monotonic() - started < timeout, f"{what}: not reached in {timeout:.0f}s"
        time.sleep(0.1)


def republish(repo: Path, source: int) -> int:
    """Publish the files of version ``source`` again as the next version."""
    return repository.import_version(repo / MODEL / str(source), repo, MODEL)


class Load:
    """``THREADS`` threads sharing one client, making ``calls`` single-image calls in all."""

    def __init__(self, client: DigitClient, images: np.ndarray, calls: int) -> None:
        self.client = client
        self.images = images
        self.remaining = calls
        self.done = 0
        self.failures: list[str] = []
        self.versions: dict[int, int] = {}
        self.progress = threading.Condition()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(THREADS)]

    def _take(self) -> int | None:
        with self.progress:
            if self.remaining == 0:
                return None
            self.remaining -= 1
            return self.remaining

    def _run(self) -> None:
        while (n := self._take()) is not None:
            try:
                prediction = self.client.classify(self.images[n % len(self.images)])
            except DigitServeError as exc:
                with self.progress:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    self.done += 1
                    self.progress.notify_all()
                continue
            with self.progress:
                v = prediction.model_version
                self.versions[v] = self.versions.get(v, 0) + 1
                self.done += 1
                self.progress.notify_all()

    def start(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def wait_done(self, count: int, timeout: float) -> None:
        with self.progress:
            assert self.progress.wait_for(lambda: self.done >= count, timeout), (
                f"only {self.done} calls finished in {timeout:.0f}s"
            )

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "load threads did not finish"


@pytest.fixture
def replicas(trained_repo: Path, tmp_path: Path) -> Iterator[list[Replica]]:
    """Three server processes on one shared copy of the trained repository, all SERVING."""
    repo = tmp_path / "repo"
    shutil.copytree(trained_repo, repo)
    started = [Replica(repo, i) for i in range(REPLICAS)]  # in parallel: TF import is slow
    try:
        for replica in started:
            replica.wait_ports(START_TIMEOUT)
        for replica in started:
            wait_for(
                functools.partial(replica.has_health, "SERVING"),
                START_TIMEOUT,
                f"replica {replica.index} SERVING",
            )
        yield started
    finally:
        for replica in started:
            replica.kill()


def test_three_replicas_share_load_take_new_versions_and_drain_without_failures(
    replicas: list[Replica], trained_repo: Path, tmp_path: Path, mnist_test
) -> None:
    repo = tmp_path / "repo"
    images = mnist_test[0][:CALLS]
    addresses = [r.address for r in replicas]

    with DigitClient(addresses, timeout=10) as client:
        # 1. Load spreads evenly over the replicas.
        before = [r.classify_ok() for r in replicas]
        load = Load(client, images, CALLS).start()
        load.join(60)
        assert load.failures == []
        served = [r.classify_ok() - b for r, b in zip(replicas, before, strict=True)]
        assert sum(served) == CALLS
        even = CALLS / REPLICAS
        for replica, count in zip(replicas, served, strict=True):
            assert abs(count - even) <= SHARE_TOLERANCE * even, (
                f"replica {replica.index} answered {count:.0f} of {CALLS} calls "
                f"(all: {served}); expected {even:.0f} ± {SHARE_TOLERANCE:.0%}"
            )

        # 2. A version published into the shared repository reaches every replica.
        version = republish(repo, source=1)
        for replica in replicas:
            wait_for(
                functools.partial(replica.has_available, version),
                PUBLISH_TIMEOUT,
                f"version {version} AVAILABLE on replica {replica.index}",
            )

        # 3. A replica stopped with SIGTERM mid-run: no call fails.
        stopped = replicas[-1]
        load = Load(client, images, CALLS).start()
        load.wait_done(CALLS // 4, 60)
        stopped.proc.send_signal(signal.SIGTERM)
        load.join(90)
        assert stopped.wait(GRACE_SECONDS + DRAIN_DELAY_SECONDS + 30) == 0, stopped.tail
        assert "draining" in stopped.log and "stopped" in stopped.log
        assert load.failures == [], load.failures[:5]
        assert load.done == CALLS
        assert set(load.versions) == {version}  # the new version answers after the publish
