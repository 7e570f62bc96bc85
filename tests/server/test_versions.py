"""Unit tests of the version manager, with fake model runners and a real repository folder."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from digitserve.server import repository
from digitserve.server.batching import BatchingConfig
from digitserve.server.errors import ModelNotFound, ModelUnavailable
from digitserve.server.versions import ModelManager, VersionPolicy

MODEL = "m"


class FakeRunner:
    """Answers with the version number as the predicted digit; reads behaviour from files."""

    loaded: ClassVar[list[Path]] = []

    def __init__(self, path: Path) -> None:
        if (path / "broken").exists():
            raise RuntimeError("cannot load: broken")
        self.digit = int(path.name) % 10
        self.closed = False
        FakeRunner.loaded.append(path)

    def predict(self, images: np.ndarray) -> np.ndarray:
        out = np.zeros((len(images), 10), dtype=np.float32)
        out[:, self.digit] = 1.0
        return out

    def close(self) -> None:
        self.closed = True


def publish(repo: Path, *, broken: bool = False, signature_ok: bool = True) -> int:
    with repository.staging_dir(repo, MODEL) as staged:
        (staged / "weights.bin").write_bytes(b"w" * 100)
        if broken:
            (staged / "broken").write_text("1")
        outputs = {"probabilities": repository.EXPECTED_OUTPUT}
        if not signature_ok:
            outputs = {"logits": repository.EXPECTED_OUTPUT}
        return repository.publish(
            staged,
            repo,
            MODEL,
            inputs={"images": repository.EXPECTED_INPUT},
            outputs=outputs,
            metadata={"test_accuracy": 0.99},
        )


def manager(repo: Path, policy: str = "latest:1") -> ModelManager:
    return ModelManager(
        repo,
        BatchingConfig(max_batch_size=4),
        policy=VersionPolicy.parse(policy),
        runner_factory=FakeRunner,
    )


def states(m: ModelManager) -> dict[int, str]:
    (info,) = m.snapshot(MODEL)
    return {v.version: v.state.value for v in info.versions}


async def classify(m: ModelManager, **selector: object) -> tuple[int, int]:
    async with m.lease(MODEL, **selector) as v:  # type: ignore[arg-type]
        assert v.batcher is not None
        probs = await v.batcher.submit(np.zeros((1, 28, 28), np.uint8))
        return v.version, int(probs[0].argmax())


async def test_latest_policy_serves_the_newest_and_unloads_the_old(tmp_path: Path) -> None:
    publish(tmp_path)
    m = manager(tmp_path)
    await m.refresh()
    assert states(m) == {1: "AVAILABLE"}
    assert await classify(m) == (1, 1)
    publish(tmp_path)
    await m.refresh()
    await asyncio.sleep(0.05)  # unloading finishes in the background
    assert states(m) == {2: "AVAILABLE"}
    assert await classify(m) == (2, 2)
    with pytest.raises(ModelNotFound, match="no servable version 1"):
        m.resolve(MODEL, version=1)
    await m.close()


@pytest.mark.parametrize(
    ("policy", "served"),
    [("latest:2", {2, 3}), ("all", {1, 2, 3}), ("specific:[1,3]", {1, 3})],
)
async def test_version_policies(tmp_path: Path, policy: str, served: set[int]) -> None:
    for _ in range(3):
        publish(tmp_path)
    m = manager(tmp_path, policy)
    await m.refresh()
    assert {v for v, s in states(m).items() if s == "AVAILABLE"} == served
    assert m.resolve(MODEL).version == max(served)  # no stable label: the newest
    for v in served:
        assert await classify(m, version=v) == (v, v)
    await m.close()


def test_policy_parsing() -> None:
    assert VersionPolicy.parse("latest") == VersionPolicy("latest", count=1)
    assert str(VersionPolicy.parse("latest: 3")) == "latest:3"
    assert VersionPolicy.parse("specific:[2, 5]").versions == {2, 5}
    assert VersionPolicy.parse("specific:4").versions == {4}
    for bad in ("newest", "latest:0", "specific:[]", "specific:[0]"):
        with pytest.raises(ValueError, match="version policy"):
            VersionPolicy.parse(bad)


async def test_labels_select_and_stable_is_the_default(tmp_path: Path) -> None:
    for _ in range(3):
        publish(tmp_path)
    repository.write_labels(tmp_path, MODEL, {"stable": 1, "canary": 3})
    m = manager(tmp_path, "latest:1")
    await m.refresh()
    # labelled versions are loaded even outside the policy
    assert states(m) == {3: "AVAILABLE", 1: "AVAILABLE"}
    assert await classify(m) == (1, 1)  # stable is the default
    assert await classify(m, label="canary") == (3, 3)
    assert await classify(m, version=3) == (3, 3)
    with pytest.raises(ModelNotFound, match="no label 'beta'"):
        m.resolve(MODEL, label="beta")
    with pytest.raises(ModelNotFound, match="unknown model 'other'"):
        m.resolve("other")
    repository.write_labels(tmp_path, MODEL, {"canary": 3})
    await m.refresh()
    await asyncio.sleep(0.05)
    assert states(m) == {3: "AVAILABLE"}
    assert await classify(m) == (3, 3)  # no stable: the newest
    await m.close()


async def test_failed_version_keeps_the_previous_serving_and_retries_on_change(
    tmp_path: Path,
) -> None:
    publish(tmp_path)
    m = manager(tmp_path)
    await m.refresh()
    bad = publish(tmp_path, broken=True)
    await m.refresh()
    assert states(m) == {2: "FAILED", 1: "AVAILABLE"}
    (info,) = m.snapshot(MODEL)
    assert "cannot load: broken" in info.versions[0].reason
    assert await classify(m) == (1, 1)
    loads = len(FakeRunner.loaded)
    await m.refresh()  # unchanged files: not retried
    assert len(FakeRunner.loaded) == loads and states(m)[2] == "FAILED"
    # fix the files (and the manifest) of version 2: it is retried and takes over
    path = tmp_path / MODEL / str(bad)
    (path / "broken").unlink()
    manifest = repository.read_manifest(path)
    repository.write_manifest(
        path, model=MODEL, version=bad, inputs=manifest.inputs, outputs=manifest.outputs
    )
    await m.refresh()
    await asyncio.sleep(0.05)
    assert states(m) == {2: "AVAILABLE"}
    await m.close()


async def test_checksum_mismatch_and_wrong_signature_fail(tmp_path: Path) -> None:
    publish(tmp_path)
    m = manager(tmp_path, "all")
    await m.refresh()
    v2 = publish(tmp_path)
    (tmp_path / MODEL / str(v2) / "weights.bin").write_bytes(b"x" * 100)
    publish(tmp_path, signature_ok=False)
    await m.refresh()
    (info,) = m.snapshot(MODEL)
    reasons = {v.version: v.reason for v in info.versions}
    assert states(m) == {3: "FAILED", 2: "FAILED", 1: "AVAILABLE"}
    assert "checksum mismatch: weights.bin" in reasons[2]
    assert "wrong serving signature" in reasons[3]
    assert m.resolve(MODEL).version == 1
    await m.close()


async def test_version_without_manifest_is_never_loaded(tmp_path: Path) -> None:
    publish(tmp_path)
    half = tmp_path / MODEL / "2"
    half.mkdir()
    (half / "weights.bin").write_bytes(b"half-copied")
    m = manager(tmp_path)
    await m.refresh()
    assert states(m) == {1: "AVAILABLE"}
    assert half not in FakeRunner.loaded
    await m.close()


async def test_label_waits_for_its_target_to_become_available(tmp_path: Path) -> None:
    publish(tmp_path)
    repository.write_labels(tmp_path, MODEL, {"stable": 1})
    m = manager(tmp_path)
    await m.refresh()
    publish(tmp_path, broken=True)
    repository.write_labels(tmp_path, MODEL, {"stable": 2})
    await m.refresh()
    # version 2 failed: stable keeps answering with version 1
    assert await classify(m, label="stable") == (1, 1)
    assert await classify(m) == (1, 1)
    await m.close()


async def test_unloading_drains_requests_that_started_on_the_version(tmp_path: Path) -> None:
    publish(tmp_path)
    m = manager(tmp_path)
    await m.refresh()
    v1 = m.acquire(MODEL)
    publish(tmp_path)
    await m.refresh()
    await asyncio.sleep(0.05)
    assert states(m) == {2: "AVAILABLE", 1: "UNLOADING"}
    assert v1.batcher is not None  # still usable by the request holding it
    probs = await v1.batcher.submit(np.zeros((2, 28, 28), np.uint8))
    assert probs.argmax(axis=1).tolist() == [1, 1]
    runner = v1.runner
    m.release(v1)
    await asyncio.sleep(0.05)
    assert states(m) == {2: "AVAILABLE"}
    assert isinstance(runner, FakeRunner) and runner.closed
    await m.close()


async def test_model_without_versions_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / MODEL).mkdir()
    m = manager(tmp_path)
    with pytest.raises(ModelUnavailable, match="starting"):
        m.resolve(MODEL)
    await m.refresh()
    with pytest.raises(ModelUnavailable, match="no available version"):
        m.resolve(MODEL)
    assert not m.is_serving(MODEL)
    await m.close()


async def test_bad_labels_file_is_reported_and_ignored(tmp_path: Path, caplog) -> None:
    publish(tmp_path)
    (tmp_path / MODEL / repository.LABELS_FILE).write_text(json.dumps({"stable": "one"}))
    m = manager(tmp_path)
    await m.refresh()
    assert states(m) == {1: "AVAILABLE"}
    assert "ignoring labels" in caplog.text
    await m.close()
