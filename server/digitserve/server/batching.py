"""Dynamic request batching for one model version.

Requests (arrays of 1..k images) wait in one bounded queue. Each runner is a
thread that computes one batch at a time. Batches are formed on the event loop
the moment a runner is free: when a request arrives and a runner idles, or when
a runner hands back its results and the queue is not empty. A lone request
therefore runs at once; under load, requests pile up while runners are busy and
the next batch takes them together (up to ``max_batch_size`` images). Requests
larger than the room left in a batch are split and reassembled in order.

Hand-offs are cheap on purpose: a batch goes to a runner through a SimpleQueue
and comes back with one ``call_soon_threadsafe``, with no asyncio task or
executor future in between.

Guarantees:
- ``submit`` never blocks: past ``max_queued_items`` waiting images it raises
  ``QueueFull`` at once.
- An entry whose deadline has passed or whose caller went away (its future is
  cancelled) is dropped before reaching the model and is never computed.
- Futures are only resolved if not already done, so a cancelled caller never
  disturbs the rest of its batch; a failing model call fails only its batch.
- Batches are zero-padded up to an allowed size (powers of two up to
  ``max_batch_size``) so the model only ever sees a few shapes; ``warm_up`` runs
  each of them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .errors import BatchFailed, DeadlineExpired, ModelUnavailable, QueueFull
from .model import ModelRunner

log = logging.getLogger(__name__)

NUM_CLASSES = 10


class BatchObserver(Protocol):
    """Receives the batcher's figures (the metrics module implements it)."""

    def batch_done(
        self, size: int, padded: int, queue_waits: Sequence[float], compute_seconds: float
    ) -> None: ...

    def batch_failed(self, size: int) -> None: ...

    def rejected(self, reason: str, images: int) -> None: ...

    def queue_depth(self, images: int) -> None: ...


class _NullObserver:
    def batch_done(
        self, size: int, padded: int, queue_waits: Sequence[float], compute_seconds: float
    ) -> None:
        pass

    def batch_failed(self, size: int) -> None:
        pass

    def rejected(self, reason: str, images: int) -> None:
        pass

    def queue_depth(self, images: int) -> None:
        pass


@dataclass(frozen=True)
class BatchingConfig:
    """How one batcher forms batches. Validated on creation."""

    max_batch_size: int = 128
    max_delay_seconds: float = 0.0
    max_queued_items: int = 8192
    threads: int = 1
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_delay_seconds < 0:
            raise ValueError(f"max_delay must be >= 0, got {self.max_delay_seconds}")
        if self.max_queued_items < 1:
            raise ValueError(f"max_queued_items must be >= 1, got {self.max_queued_items}")
        if self.threads < 1:
            raise ValueError(f"batch_threads must be >= 1, got {self.threads}")

    def padded_sizes(self) -> list[int]:
        """The batch sizes the model is ever called with."""
        sizes = []
        size = 1
        while size < self.max_batch_size:
            sizes.append(size)
            size *= 2
        sizes.append(self.max_batch_size)
        return sizes


def padded_size(n: int, sizes: Sequence[int]) -> int:
    """The smallest allowed size that holds ``n`` images (``n`` if none does)."""
    for size in sizes:
        if size >= n:
            return size
    return n


@dataclass(eq=False)
class _Entry:
    """One submitted request, possibly spread over several batches."""

    images: np.ndarray
    future: asyncio.Future[np.ndarray]
    deadline: float | None  # time.monotonic() seconds
    enqueued_at: float
    result: np.ndarray | None = None
    next_row: int = 0  # first row not yet dispatched
    rows_pending: int = 0  # rows dispatched whose results have not come back
    dropped: bool = False

    @property
    def rows_left(self) -> int:
        return len(self.images) - self.next_row


@dataclass
class _Slice:
    entry: _Entry
    start: int
    stop: int
    queue_wait: float = field(default=0.0)


@dataclass(eq=False)
class _Job:
    """One batch on its way to a runner thread and back."""

    slices: list[_Slice]
    parts: list[np.ndarray]
    size: int
    padded: int
    probs: np.ndarray | None = None
    error: Exception | None = None
    seconds: float = 0.0


class Batcher:
    """The queue and runners of one model version."""

    def __init__(
        self,
        runner: ModelRunner,
        config: BatchingConfig,
        *,
        name: str = "model",
        observer: BatchObserver | None = None,
    ) -> None:
        self._runner = runner
        self._config = config
        self._sizes = config.padded_sizes()
        self._name = name
        self._observer: BatchObserver = observer or _NullObserver()
        self._queue: collections.deque[_Entry] = collections.deque()
        self._queued_rows = 0
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # runner threads waiting for a batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def config(self) -> BatchingConfig:
        return self._config

    @property
    def queued_images(self) -> int:
        return self._queued_rows

    def start(self) -> None:
        """Start the runner threads (on the event loop that will submit work)."""
        if self._threads:
            return
        self._loop = asyncio.get_running_loop()
        self._threads = [
            threading.Thread(target=self._run_jobs, name=f"runner-{self._name}-{i}", daemon=True)
            for i in range(self._config.threads)
        ]
        self._idle = len(self._threads)
        for thread in self._threads:
            thread.start()

    async def warm_up(self) -> None:
        """Run the model once at every padded size, off the event loop."""
        for size in self._sizes:
            blank = np.zeros((size, 28, 28), dtype=np.uint8)
            await asyncio.to_thread(self._predict, [blank], size)

    async def submit(self, images: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """Classify ``images`` (uint8 [k,28,28]); returns float32 [k,10] in the same order.

        ``deadline`` is a ``time.monotonic()`` instant after which the images are
        not worth computing. Raises QueueFull, DeadlineExpired, BatchFailed or
        ModelUnavailable; cancelling the caller withdraws the request.
        """
        return await self.enqueue(images, deadline)

    def enqueue(
        self, images: np.ndarray, deadline: float | None = None
    ) -> asyncio.Future[np.ndarray]:
        """Queue ``images`` and return the future of their probabilities.

        Cancelling the future withdraws whatever part of the request has not
        reached the model yet. Raises QueueFull or ModelUnavailable at once.
        """
        if self._closed:
            raise ModelUnavailable(f"model {self._name} is shutting down")
        count = len(images)
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        if count == 0:
            future.set_result(np.empty((0, NUM_CLASSES), dtype=np.float32))
            return future
        if self._queued_rows + count > self._config.max_queued_items:
            self._observer.rejected("queue_full", count)
            raise QueueFull(
                f"server queue for {self._name} is full ({self._queued_rows} images waiting, "
                f"limit max_queued_items={self._config.max_queued_items}); retry with backoff"
            )
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            self._observer.rejected("deadline", count)
            raise DeadlineExpired("deadline passed before the request was queued")
        entry = _Entry(images=images, future=future, deadline=deadline, enqueued_at=now)
        future.add_done_callback(lambda f: self._withdraw(entry) if f.cancelled() else None)
        self._queue.append(entry)
        self._queued_rows += count
        self._observer.queue_depth(self._queued_rows)
        if self._idle:
            self._dispatch()
        return future

    def _withdraw(self, entry: _Entry) -> None:
        if not entry.dropped and entry.rows_left:
            self._observer.rejected("cancelled", entry.rows_left)
        self._drop(entry)

    def _drop(self, entry: _Entry) -> None:
        if entry.dropped:
            return
        entry.dropped = True
        self._queued_rows -= entry.rows_left
        entry.next_row = len(entry.images)
        self._observer.queue_depth(self._queued_rows)

    def _dispatch(self) -> None:
        """Hand batches to idle runners while there is queued work (event loop only)."""
        while self._idle and self._queued_rows and not self._closed:
            if self._should_wait():
                return
            slices = self._take_batch()
            if not slices:
                return
            self._idle -= 1
            parts = [s.entry.images[s.start : s.stop] for s in slices]
            size = sum(len(part) for part in parts)
            padded = padded_size(size, self._sizes) if self._config.enabled else size
            self._jobs.put(_Job(slices, parts, size, padded))

    def _should_wait(self) -> bool:
        """With max_delay, a free runner waits (up to it) for a fuller batch."""
        delay = self._config.max_delay_seconds
        if delay <= 0 or self._queued_rows >= self._config.max_batch_size:
            return False
        oldest = next((e.enqueued_at for e in self._queue if not e.dropped), None)
        if oldest is None:
            return False
        remaining = oldest + delay - time.monotonic()
        if remaining <= 0:
            return False
        if self._timer is None:
            assert self._loop is not None
            self._timer = self._loop.call_later(remaining, self._on_timer)
        return True

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _take_batch(self) -> list[_Slice]:
        """Pop up to max_batch_size live rows off the queue, dropping dead entries."""
        room = self._config.max_batch_size
        slices: list[_Slice] = []
        now = time.monotonic()
        while self._queue and room > 0:
            entry = self._queue[0]
            if entry.future.done() or entry.dropped:
                self._queue.popleft()
                self._drop(entry)
                continue
            if entry.deadline is not None and entry.deadline <= now:
                self._queue.popleft()
                self._drop(entry)
                self._observer.rejected("deadline", len(entry.images))
                entry.future.set_exception(
                    DeadlineExpired("deadline passed while the request waited in the queue")
                )
                continue
            if slices and not self._config.enabled:
                break  # batching off: one request per model call
            take = entry.rows_left if not self._config.enabled else min(room, entry.rows_left)
            start = entry.next_row
            entry.next_row += take
            entry.rows_pending += take
            self._queued_rows -= take
            room -= take
            slices.append(_Slice(entry, start, start + take, now - entry.enqueued_at))
            if entry.rows_left == 0:
                self._queue.popleft()
        self._observer.queue_depth(self._queued_rows)
        return slices

    def _run_jobs(self) -> None:
        """A runner thread: compute batches and post each result back to the loop."""
        loop = self._loop
        assert loop is not None
        while (job := self._jobs.get()) is not None:
            started = time.perf_counter()
            try:
                job.probs = self._predict(job.parts, job.padded)
            except Exception as exc:
                job.error = exc
            job.seconds = time.perf_counter() - started
            try:
                loop.call_soon_threadsafe(self._finish, job)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return

    def _predict(self, parts: list[np.ndarray], padded: int) -> np.ndarray:
        """Runs in a runner thread: join, pad, call the model, check and trim its output."""
        batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
        size = len(batch)
        if padded > size:
            batch = np.concatenate(
                [batch, np.zeros((padded - size, *batch.shape[1:]), dtype=batch.dtype)]
            )
        probs = np.asarray(self._runner.predict(batch))
        if probs.shape != (padded, NUM_CLASSES):
            raise RuntimeError(
                f"model returned shape {probs.shape} for a batch of {padded} images; "
                f"expected ({padded}, {NUM_CLASSES})"
            )
        return probs[:size]

    def _finish(self, job: _Job) -> None:
        """Back on the loop: hand out a batch's results, then start the next batch."""
        self._idle += 1
        if job.error is not None:
            log.error(
                "model %s failed on a batch of %d images",
                self._name,
                job.size,
                exc_info=job.error,
            )
            self._observer.batch_failed(job.size)
            for s in job.slices:
                self._fail(s.entry, BatchFailed("the model failed on this request's batch"))
        else:
            assert job.probs is not None
            self._observer.batch_done(
                job.size, job.padded - job.size, [s.queue_wait for s in job.slices], job.seconds
            )
            offset = 0
            for s in job.slices:
                rows = s.stop - s.start
                self._deliver(s.entry, s.start, job.probs[offset : offset + rows])
                offset += rows
        self._dispatch()

    def _deliver(self, entry: _Entry, start: int, probs: np.ndarray) -> None:
        entry.rows_pending -= len(probs)
        if entry.future.done():
            return
        if entry.result is None:
            if start == 0 and len(probs) == len(entry.images):
                entry.future.set_result(probs)
                return
            entry.result = np.empty((len(entry.images), NUM_CLASSES), dtype=np.float32)
        entry.result[start : start + len(probs)] = probs
        if entry.rows_left == 0 and entry.rows_pending == 0:
            entry.future.set_result(entry.result)

    def _fail(self, entry: _Entry, error: Exception) -> None:
        entry.rows_pending = 0
        self._drop(entry)
        with contextlib.suppress(ValueError):
            self._queue.remove(entry)
        if not entry.future.done():
            entry.future.set_exception(error)

    async def close(self) -> None:
        """Stop the runners (after their current batch); queued requests get
        ModelUnavailable."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
        self._threads = []
        # Results posted by the last batches run before anything queued after them.
        await asyncio.sleep(0)
        while self._queue:
            entry = self._queue.popleft()
            self._drop(entry)
            if not entry.future.done():
                entry.future.set_exception(ModelUnavailable(f"model {self._name} was unloaded"))
