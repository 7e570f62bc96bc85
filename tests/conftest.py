"""Shared fixtures: the MNIST data, one small trained model repository, running servers.

Fixtures chain settings -> running server -> client, through public APIs only.
Servers run on 127.0.0.1 port 0 in a thread with their own event loop, so both
the sync SDK and asyncio tests can talk to them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from digitserve.server.app import DigitServer, create_server
from digitserve.server.settings import ServerSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = REPO_ROOT.parent / "shared" / "datasets" / "mnist"
MODEL = "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    path = Path(os.environ.get("DIGITSERVE_DATA_DIR") or DEFAULT_MNIST)
    assert path.is_dir(), f"MNIST not found at {path}: set DIGITSERVE_DATA_DIR"
    return path


@pytest.fixture(scope="session")
def mnist_test(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST test images (uint8 [N,28,28]) and labels."""
    from digitserve.trainer.data import load_mnist

    data = load_mnist(mnist_dir)
    return data.test_images, data.test_labels


def train_small(repo: Path, mnist_dir: Path, *, seed: int = 1, **overrides: Any) -> int:
    """Train a small dense model (a few seconds) and publish it; returns its version."""
    from digitserve.trainer.settings import TrainSettings
    from digitserve.trainer.train import run

    values: dict[str, Any] = {
        "architecture": "dense128",
        "epochs": 3,
        "learning_rate": 3e-3,
        "train_limit": 10000,
        "min_accuracy": 0.0,
        "max_regression": 1.0,
        "progress": "off",
        "report": False,
        "data_dir": mnist_dir,
        "model_repo": repo,
        "model_name": MODEL,
        "seed": seed,
        **overrides,
    }
    return run(TrainSettings(**values)).version


@pytest.fixture(scope="session")
def trained_repo(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """A model repository holding version 1 of a small model (read-only: copy to change)."""
    repo = tmp_path_factory.mktemp("repo")
    assert train_small(repo, mnist_dir) == 1
    return repo


@pytest.fixture
def repo(trained_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the trained repository that a test may change."""
    copy = tmp_path / "repo"
    shutil.copytree(trained_repo, copy)
    return copy


def server_settings(repo: Path, **overrides: Any) -> ServerSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "model_repo": repo,
        "default_model": MODEL,
        "poll_seconds": 0.2,
        "grace_seconds": 2.0,
        **overrides,
    }
    return ServerSettings(**values)


class ServerThread:
    """A real server in a background thread with its own event loop."""

    def __init__(self, settings: ServerSettings, *, wait_serving: bool = True) -> None:
        self.settings = settings
        self._wait_serving = wait_serving
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.server: DigitServer | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="test-server", daemon=True)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        assert self.server is not None and self.server.metrics.port
        return f"http://127.0.0.1:{self.server.metrics.port}/metrics"

    def start(self, timeout: float = 120.0) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("server did not start")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self.server, self.port = await create_server(self.settings)
            if self._wait_serving:
                async with asyncio.timeout(120):
                    await self.server.wait_until_serving()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise
        self._ready.set()
        await self._stop.wait()
        await self.server.stop(self._grace)

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def refresh(self) -> None:
        """Rescan the repository now (as SIGHUP does) and wait for it."""
        assert self.server is not None
        self.call(self.server.manager.refresh())

    def stop(self, grace: float = 1.0) -> None:
        if self._loop is None or self._stop is None:
            return
        self._grace = grace
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        assert not self._thread.is_alive(), "server thread did not stop"


@pytest.fixture
def start_server() -> Iterator[Any]:
    """Start servers on given settings; all are stopped at the end of the test."""
    started: list[ServerThread] = []

    def start(settings: ServerSettings, *, wait_serving: bool = True) -> ServerThread:
        server = ServerThread(settings, wait_serving=wait_serving).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def shared_server(trained_repo: Path) -> Iterator[ServerThread]:
    """One server on the read-only trained repository, shared by a test module."""
    server = ServerThread(server_settings(trained_repo)).start()
    yield server
    server.stop()
