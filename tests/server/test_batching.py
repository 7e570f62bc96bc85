"""Unit tests of the batcher with a fake model runner that records every call."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from digitserve.server.batching import Batcher, BatchingConfig, padded_size
from digitserve.server.errors import BatchFailed, DeadlineExpired, QueueFull


class FakeRunner:
    """Returns one-hot rows encoding each image's first pixel; can block or fail."""

    def __init__(self, *, fail_when: int | None = None) -> None:
        self.calls: list[np.ndarray] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_when = fail_when  # fail a batch containing an image tagged with this value

    def predict(self, images: np.ndarray) -> np.ndarray:
        self.calls.append(images.copy())
        self.entered.set()
        assert self.gate.wait(10), "test never released the runner"
        tags = images[:, 0, 0].astype(int)
        if self.fail_when is not None and self.fail_when in tags:
            raise RuntimeError("boom")
        probs = np.zeros((len(images), 10), dtype=np.float32)
        probs[np.arange(len(images)), tags % 10] = 1.0
        probs[:, :] += tags[:, None] / 1000.0  # unique per tag, to check order
        return probs

    def tags_seen(self) -> list[list[int]]:
        return [call[:, 0, 0].astype(int).tolist() for call in self.calls]


def images(*tags: int) -> np.ndarray:
    out = np.zeros((len(tags), 28, 28), dtype=np.uint8)
    out[:, 0, 0] = tags
    return out


def check_rows(probs: np.ndarray, tags: list[int]) -> None:
    assert probs.shape == (len(tags), 10)
    assert [int(p.argmax()) for p in probs] == [t % 10 for t in tags]
    np.testing.assert_allclose(probs.max(axis=1), [1 + t / 1000.0 for t in tags], rtol=1e-6)


async def blocked(runner: FakeRunner, batcher: Batcher, *tags: int) -> asyncio.Task[np.ndarray]:
    """Occupy the single runner with a request; returns its task."""
    runner.gate.clear()
    runner.entered.clear()
    task = asyncio.create_task(batcher.submit(images(*tags)))
    await asyncio.to_thread(runner.entered.wait, 5)
    return task


@pytest.fixture
async def setup():
    made: list[Batcher] = []

    def make(runner: FakeRunner, **config: object) -> Batcher:
        values = {"max_batch_size": 8, "max_queued_items": 64, "threads": 1, **config}
        batcher = Batcher(runner, BatchingConfig(**values))  # type: ignore[arg-type]
        batcher.start()
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        await batcher.close()


async def test_lone_request_is_dispatched_without_waiting(setup) -> None:
    runner = FakeRunner()
    batcher = setup(runner, max_batch_size=1024, max_queued_items=4096)
    started = time.perf_counter()
    probs = await batcher.submit(images(3))
    elapsed = time.perf_counter() - started
    check_rows(probs, [3])
    assert runner.tags_seen() == [[3]]  # padded to 1: the smallest allowed size
    assert elapsed < 0.5  # nothing waits for a fuller batch


async def test_requests_queued_while_busy_form_one_batch(setup) -> None:
    runner = FakeRunner()
    batcher = setup(runner)
    first = await blocked(runner, batcher, 1)
    rest = [asyncio.create_task(batcher.submit(images(t))) for t in (2, 3, 4, 5)]
    await asyncio.sleep(0.05)
    assert batcher.queued_images == 4
    runner.gate.set()
    check_rows(await first, [1])
    for task, tag in zip(rest, (2, 3, 4, 5), strict=True):
        check_rows(await task, [tag])
    assert runner.tags_seen() == [[1], [2, 3, 4, 5]]


async def test_batches_take_at_most_max_batch_size(setup) -> None:
    runner = FakeRunner()
    batcher = setup(runner, max_batch_size=4)
    first = await blocked(runner, batcher, 1)
    rest = [asyncio.create_task(batcher.submit(images(t))) for t in range(10, 16)]
    await asyncio.sleep(0.05)
    runner.gate.set()
    await asyncio.gather(first, *rest)
    seen = runner.tags_seen()
    assert seen[1] == [10, 11, 12, 13]
    assert seen[2][:2] == [14, 15]
    assert max(len(call) for call in runner.calls) <= 4


async def test_split_request_is_reassembled_in_order(setup) -> None:
    runner = FakeRunner()
    batcher = setup(runner, max_batch_size=4)
    first = await blocked(runner, batcher, 1)
    a = asyncio.create_task(batcher.submit(images(20, 21)))
    b = asyncio.create_task(batcher.submit(images(*range(30, 39))))  # 9 images
    await asyncio.sleep(0.05)
    runner.gate.set()
    await first
    check_rows(await a, [20, 21])
    check_rows(await b, list(range(30, 39)))
    # b is spread over three model calls: [20,21,30,31], [32..35], [36,37,38 + padding]
    assert runner.tags_seen()[1:] == [[20, 21, 30, 31], [32, 33, 34, 35], [36, 37, 38, 0]]


async def test_full_queue_is_rejected_at_once(setup) -> None:
    runner = FakeRunner()
    batcher = setup(runner, max_batch_size=4, max_queued_items=6)
    first = await blocked(runner, batcher, 1)
    waiting = [asyncio.create_task(batcher.submit(images(2, 3, 4))) for _ in range(2)]
    await asyncio.sleep(0.02)
    started = time.perf_counter()
    with pytest.raises(QueueFull, match="max_queued_items=6"):
        await batcher.submit(images(9))
    assert time.perf_counter() - started < 0.1
    runner.gate.set()
    await asyncio.gather(first, *waiting)
    # once drained, new work is accepted again
    check_rows(await batcher.submit(images(9)), [9])


async def test_expired_request_is_never_computed(setup) -> None:
    runner = FakeRunner()
    batcher = setup(runner)
    first = await blocked(runner, batcher, 1)
    doomed = asyncio.create_task(batcher.submit(images(66), deadline=time.monotonic() + 0.05))
    alive = asyncio.create_task(batcher.submit(images(7)))
    await asyncio.sleep(0.1)  # the deadline passes while the runner is busy
    runner.gate.set()
    with pytest.raises(DeadlineExpired):
        await doomed
    check_rows(await alive, [7])
    await first
    assert all(66 not in call for call in runner.tags_seen())


async def test_past_deadline_is_refused_before_queueing(setup) -> None:
    runner = FakeRunner()
    batcher = setup(runner)
    with pytest.raises(DeadlineExpired):
        await batcher.submit(images(5), deadline=time.monotonic() - 1)
    assert runner.calls == []


async def test_cancelled_request_is_never_computed_and_spares_its_batch(setup) -> None:
    runner = FakeRunner()
    batcher = setup(runner)
    first = await blocked(runner, batcher, 1)
    before = asyncio.create_task(batcher.submit(images(2)))
    cancelled = asyncio.create_task(batcher.submit(images(77, 78)))
    after = asyncio.create_task(batcher.submit(images(3)))
    await asyncio.sleep(0.02)
    assert batcher.queued_images == 4
    cancelled.cancel()
    await asyncio.sleep(0)
    assert batcher.queued_images == 2  # withdrawn at once
    runner.gate.set()
    await first
    check_rows(await before, [2])
    check_rows(await after, [3])
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert runner.tags_seen()[1] == [2, 3]


async def test_caller_cancelled_during_compute_does_not_disturb_others(setup) -> None:
    runner = FakeRunner()
    batcher = setup(runner)
    first = await blocked(runner, batcher, 1)
    a = asyncio.create_task(batcher.submit(images(4)))
    b = asyncio.create_task(batcher.submit(images(5)))
    await asyncio.sleep(0.02)
    runner.gate.set()
    await first
    # a and b are now in one batch; cancel a while it is being computed
    runner.gate.clear()
    runner.entered.clear()
    c = asyncio.create_task(batcher.submit(images(6)))
    await asyncio.to_thread(runner.entered.wait, 5)
    c.cancel()
    runner.gate.set()
    check_rows(await a, [4])
    check_rows(await b, [5])
    with pytest.raises(asyncio.CancelledError):
        await c
    check_rows(await batcher.submit(images(8)), [8])  # the batcher keeps working


async def test_failing_batch_fails_only_its_own_requests(setup) -> None:
    runner = FakeRunner(fail_when=13)
    batcher = setup(runner, max_batch_size=2)
    first = await blocked(runner, batcher, 1)
    bad = [asyncio.create_task(batcher.submit(images(t))) for t in (12, 13)]
    good = asyncio.create_task(batcher.submit(images(14)))
    await asyncio.sleep(0.02)
    runner.gate.set()
    await first
    for task in bad:
        with pytest.raises(BatchFailed):
            await task
    check_rows(await good, [14])
    check_rows(await batcher.submit(images(15)), [15])


async def test_wrong_output_length_fails_the_batch() -> None:
    class Short:
        def predict(self, batch: np.ndarray) -> np.ndarray:
            return np.zeros((len(batch) - 1, 10), dtype=np.float32)

    batcher = Batcher(Short(), BatchingConfig(max_batch_size=4))
    batcher.start()
    try:
        with pytest.raises(BatchFailed):
            await batcher.submit(images(1, 2, 3))
    finally:
        await batcher.close()


def test_padding_sizes() -> None:
    config = BatchingConfig(max_batch_size=100)
    assert config.padded_sizes() == [1, 2, 4, 8, 16, 32, 64, 100]
    assert [padded_size(n, config.padded_sizes()) for n in (1, 3, 5, 64, 65, 100)] == [
        1,
        4,
        8,
        64,
        100,
        100,
    ]
    assert BatchingConfig(max_batch_size=1).padded_sizes() == [1]


async def test_batches_are_padded_and_warm_up_covers_every_size(setup) -> None:
    runner = FakeRunner()
    batcher = setup(runner, max_batch_size=8)
    await batcher.warm_up()
    assert [len(call) for call in runner.calls] == [1, 2, 4, 8]
    runner.calls.clear()
    check_rows(await batcher.submit(images(1, 2, 3)), [1, 2, 3])
    assert [len(call) for call in runner.calls] == [4]


async def test_batching_off_runs_one_request_per_call(setup) -> None:
    runner = FakeRunner()
    batcher = setup(runner, enabled=False)
    first = await blocked(runner, batcher, 1)
    rest = [asyncio.create_task(batcher.submit(images(t, t + 1))) for t in (10, 20, 30)]
    await asyncio.sleep(0.02)
    runner.gate.set()
    await asyncio.gather(first, *rest)
    assert runner.tags_seen() == [[1], [10, 11], [20, 21], [30, 31]]


async def test_max_delay_waits_for_a_fuller_batch(setup) -> None:
    runner = FakeRunner()
    batcher = setup(runner, max_batch_size=4, max_delay_seconds=0.2)
    tasks = []
    for tag in (1, 2, 3):
        tasks.append(asyncio.create_task(batcher.submit(images(tag))))
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert runner.tags_seen() == [[1, 2, 3, 0]]


async def test_several_runner_threads_share_the_queue(setup) -> None:
    runner = FakeRunner()
    batcher = setup(runner, threads=2, max_batch_size=4)
    results = await asyncio.gather(*(batcher.submit(images(t)) for t in range(40)))
    for tag, probs in enumerate(results):
        check_rows(probs, [tag])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_batch_size", 0, "max_batch_size must be >= 1"),
        ("max_queued_items", 0, "max_queued_items must be >= 1"),
        ("threads", 0, "batch_threads must be >= 1"),
        ("max_delay_seconds", -1.0, "max_delay must be >= 0"),
    ],
)
def test_config_is_validated(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchingConfig(**{field: value})  # type: ignore[arg-type]
