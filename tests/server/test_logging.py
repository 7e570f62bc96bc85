"""JSON logs with request ids: the server process's stderr, and an in-process server.

With ``--log-format json`` every line the server logs is one JSON object (time,
level, logger, message, request_id when serving a request, extras, exception).
A request's id comes from its ``x-request-id`` metadata (or is made up), is
echoed in the trailing metadata, and tags every line logged while serving it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from digitserve.server import logs, repository
from digitserve.server.app import create_server
from digitserve.server.model import SavedModelRunner
from digitserve.v1 import digitserve_pb2 as pb
from digitserve.v1 import digitserve_pb2_grpc as pb_grpc

from ..conftest import MODEL, server_settings

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
# TensorFlow's C++ runtime writes to the same stderr through absl, bypassing Python
# logging (see the report: TF_CPP_MIN_LOG_LEVEL=2 removes most, not the oneDNN notice).
NATIVE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IWEF]\d{4} [\d:.]+ +\d+ [\w./-]+:\d+\] "
)


def check_entry(entry: Any) -> dict[str, Any]:
    assert isinstance(entry, dict), entry
    assert TIME.fullmatch(entry["time"]), entry
    assert entry["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}, entry
    assert isinstance(entry["logger"], str) and isinstance(entry["message"], str), entry
    return entry


def add_corrupt_version(repo: Path) -> None:
    """Version 2: a copy of version 1 with a correct manifest, then a damaged file."""
    v1, v2 = repo / MODEL / "1", repo / MODEL / "2"
    shutil.copytree(v1, v2)
    manifest = repository.read_manifest(v1)
    repository.write_manifest(
        v2, model=MODEL, version=2, inputs=manifest.inputs, outputs=manifest.outputs
    )
    with (v2 / "saved_model.pb").open("ab") as f:
        f.write(b"\x00")


class LogReader:
    """Collects a process's stderr lines in a thread; waits for JSON entries."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        with contextlib.suppress(ValueError, OSError):  # closed under us after a failure
            for line in stream:
                self.lines.append(line.rstrip("\n"))
                self._new.put(line)

    def wait_for(
        self, check: Callable[[dict[str, Any]], bool], timeout: float = 90
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._new.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                tail = "\n".join(self.lines[-20:])
                message = f"no such log line within {timeout}s; last lines:\n{tail}"
                raise AssertionError(message) from None
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and check(entry):
                    return entry

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def message_has(*fragments: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: all(f in e.get("message", "") for f in fragments)


def test_server_process_logs_json_lines_with_request_ids(repo: Path) -> None:
    add_corrupt_version(repo)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    # fmt: off
    argv = [
        sys.executable, "-m", "digitserve.server.main",
        "--host", "127.0.0.1", "--port", "0",
        "--metrics-host", "127.0.0.1", "--metrics-port", "0",
        "--model-repo", str(repo), "--default-model", MODEL, "--poll-seconds", "0.2",
        "--grace-seconds", "1", "--log-format", "json", "--log-level", "DEBUG",
    ]
    # fmt: on
    proc = subprocess.Popen(
        argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
    )
    try:
        assert proc.stderr is not None
        reader = LogReader(proc.stderr)
        listening = reader.wait_for(message_has("digitserve listening on"))
        match = re.search(r"\(port (\d+)\)", listening["message"])
        assert match, listening
        reader.wait_for(message_has("version 2 FAILED"))
        reader.wait_for(message_has("version 1 AVAILABLE"))
        with grpc.insecure_channel(f"127.0.0.1:{match.group(1)}") as channel:
            stub = pb_grpc.DigitClassifierStub(channel)
            image = pb.Image(pixels=b"\x00" * 784)
            broken = pb.ClassifyRequest(images=[image], model=pb.ModelSelector(version=2))
            with pytest.raises(grpc.RpcError) as info:
                stub.Classify(broken, metadata=[("x-request-id", "rid-broken-v2")], timeout=10)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert "FAILED" in (info.value.details() or "")
            assert ("x-request-id", "rid-broken-v2") in (info.value.trailing_metadata() or ())
            _, call = stub.Classify.with_call(
                pb.ClassifyRequest(images=[image]),
                metadata=[("x-request-id", "rid-ok")],
                timeout=10,
            )
            assert ("x-request-id", "rid-ok") in call.trailing_metadata()
        reader.wait_for(lambda e: e.get("request_id") == "rid-ok")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()

    entries = []
    native = []
    for line in reader.lines:
        if NATIVE.match(line):
            native.append(line)
            continue
        try:
            entries.append(check_entry(json.loads(line)))
        except ValueError:
            raise AssertionError(f"a log line is not JSON: {line!r}") from None
    assert len(native) <= 8, native  # only TensorFlow's start-up notices

    def find(check: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return [e for e in entries if check(e)]

    # The load failure: logged once as an ERROR with its reason, outside any request.
    (failed,) = find(message_has("version 2 FAILED"))
    assert failed["level"] == "ERROR" and failed["logger"] == "digitserve.server.versions"
    assert "checksum mismatch: saved_model.pb" in failed["message"]
    assert "request_id" not in failed
    # The failed request: one access line at DEBUG with its id, code and model.
    (refused,) = find(lambda e: e.get("request_id") == "rid-broken-v2")
    assert refused["logger"] == "digitserve.access" and refused["level"] == "DEBUG"
    assert refused["rpc"] == "Classify" and refused["code"] == "NOT_FOUND"
    assert refused["model"] == MODEL and refused["version"] == ""
    (served,) = find(lambda e: e.get("request_id") == "rid-ok")
    assert served["code"] == "OK" and served["version"] == "1"
    # Start-up and shutdown are logged too.
    assert find(message_has("draining")) and find(message_has("stopped"))


@contextlib.contextmanager
def json_logging(level: str = "INFO") -> Iterator[None]:
    """``logs.configure`` for the length of a block, then pytest's handlers back."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.configure(level, "json")
    try:
        yield
    finally:
        root.handlers[:], previous = saved
        root.setLevel(previous)


def json_entries(text: str) -> list[dict[str, Any]]:
    entries = []
    for line in text.splitlines():
        try:
            entries.append(check_entry(json.loads(line)))
        except ValueError:
            raise AssertionError(f"a log line is not JSON: {line!r}") from None
    return entries


def test_formatter_keeps_each_record_on_one_line(capsys: Any) -> None:
    log = logging.getLogger("digitserve.test")
    with json_logging():
        token = logs.current_request.set(logs.RequestContext("rid-unit"))
        try:
            try:
                raise ValueError("line one\nline two")
            except ValueError:
                log.exception("failed:\n%s", "détails", extra={"images": 3})
        finally:
            logs.current_request.reset(token)
        log.warning("outside any request")
        log.debug("below the level")
    first, second = json_entries(capsys.readouterr().err)
    assert first["message"] == "failed:\ndétails" and first["level"] == "ERROR"
    assert first["request_id"] == "rid-unit" and first["images"] == 3
    assert "ValueError: line one\nline two" in first["exception"]
    assert second["message"] == "outside any request" and "request_id" not in second


class PoisonedRunner:
    """The real SavedModel, except that a batch holding an all-white image raises."""

    def __init__(self, path: Path) -> None:
        self._model = SavedModelRunner(path)

    def predict(self, images: np.ndarray) -> np.ndarray:
        if (images == 255).all(axis=(1, 2)).any():
            raise RuntimeError("poisoned batch")
        return self._model.predict(images)

    def close(self) -> None:
        self._model.close()


async def test_internal_error_is_logged_with_the_request_id(
    trained_repo: Path, capsys: Any
) -> None:
    white = pb.Image(pixels=b"\xff" * 784)
    black = pb.Image(pixels=b"\x00" * 784)
    with json_logging():
        server, port = await create_server(
            server_settings(trained_repo, metrics_port=None), runner_factory=PoisonedRunner
        )
        try:
            async with asyncio.timeout(120):
                await server.wait_until_serving()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.DigitClassifierStub(channel)
                call = stub.Classify(
                    pb.ClassifyRequest(images=[white]),
                    metadata=[("x-request-id", "rid-internal")],
                    timeout=10,
                )
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call
                assert info.value.code() == grpc.StatusCode.INTERNAL
                assert "poisoned" not in (info.value.details() or "")  # never leaked
                assert ("x-request-id", "rid-internal") in tuple(await call.trailing_metadata())
                # The batcher goes on serving the next request.
                reply = await stub.Classify(pb.ClassifyRequest(images=[black]), timeout=10)
                assert len(reply.predictions) == 1
        finally:
            await server.stop(0)
    entries = json_entries(capsys.readouterr().err)
    tagged = [e for e in entries if e.get("request_id") == "rid-internal"]
    assert tagged and all(e["level"] == "ERROR" for e in tagged), tagged
    assert any("failed" in e["message"] for e in tagged)
    tracebacks = [e for e in entries if "RuntimeError: poisoned batch" in e.get("exception", "")]
    assert len(tracebacks) == 1, "the model's exception is logged once, with its traceback"
    assert not [e for e in entries if e["level"] == "DEBUG"], "no DEBUG lines at INFO"
