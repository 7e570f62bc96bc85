"""``digitserve-bench``: load a digitserve server and report its throughput and latency.

    digitserve-bench [--target host:port] [--mode unary|stream] [--images K]
                     [--concurrency 1,8,64 | --rate 500[,1000] [--arrivals poisson|fixed]]
                     [--window 64] [--warmup 2] [--duration 5 | --requests N]
                     [--processes P] [--model M] [--version N | --label L]
                     [--data-dir D] [--timeout 10] [--json]

Modes (every image is sent as 784 raw pixels):

* ``unary``: ``Classify`` calls of ``--images`` K images each (default 1).
* ``stream``: ``ClassifyStream`` calls, one image per request message; each of
  the ``--concurrency`` streams keeps ``--window`` items unanswered.

Load:

* closed loop (default): ``--concurrency`` levels, run one after the other;
  that many calls (unary) or streams are kept busy, each sending its next
  request as soon as the previous one is answered.
* open loop (``--rate R``): requests are *scheduled* at R per second (Poisson
  or evenly spaced arrivals) whatever the server does, and a request's latency
  is measured from its scheduled send time, so time spent queued behind a slow
  server or a lagging client counts (no coordinated omission). Requests
  scheduled during the measurement are all sent and waited for after it ends;
  a request the client could not send before its deadline (the client being the
  bottleneck) is counted as a ``NOT_SENT`` error. For ``stream``, the rate is
  spread over ``--concurrency`` streams with no window.

Each level has a warm-up (``--warmup`` seconds, not counted), then a measurement
of ``--duration`` seconds (or of ``--requests`` answered requests). Reported per
level: calls/s and images/s (answered OK, stream items count as calls), latency
percentiles of the successful calls in milliseconds, errors by status code, and
the client's CPU use in cores (near 1.0 per process means the client, not the
server, may be the limit: try ``--processes``).

The load generator is one asyncio event loop per process: requests are
serialized once before the run and sent as bytes, unary responses are not
parsed, and gRPC retries are off so that every failure is counted as it
happened. ``--processes P`` splits the load over P processes and merges their
latency samples exactly.

Images come from the MNIST test file (``t10k-images-idx3-ubyte[.gz]``) in
``--data-dir`` (default ``$DIGITSERVE_DATA_DIR``); without it, random
digit-like images are used.

Exit status: 0 when every level had at least one successful call; 1 when a level
had none (the report is printed all the same) or the target was unreachable;
2 for a bad command line.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import gzip
import json
import math
import multiprocessing
import os
import queue
import random
import sys
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import grpc
import grpc.aio
import numpy as np

from digitserve.client.channel import ChannelSettings, RetryPolicy, create_aio_channel
from digitserve.client.messages import model_selector
from digitserve.v1 import digitserve_pb2

__all__ = [
    "NOT_SENT",
    "BenchError",
    "BenchSettings",
    "Level",
    "main",
    "read_idx_images",
    "render_table",
    "run_benchmark",
    "synthetic_images",
]

DEFAULT_TARGET = "localhost:8500"
ENV_PREFIX = "DIGITSERVE_"
MODES = ("unary", "stream")
ARRIVALS = ("poisson", "fixed")
TEST_IMAGES_FILE = "t10k-images-idx3-ubyte"
IDX_IMAGES_MAGIC = 2051
SIDE = 28
PIXELS = SIDE * SIDE

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_SERVICE = digitserve_pb2.DESCRIPTOR.services_by_name["DigitClassifier"].full_name
CLASSIFY_METHOD = f"/{_SERVICE}/Classify"
STREAM_METHOD = f"/{_SERVICE}/ClassifyStream"

#: The error counted for an open-loop request the client fell too far behind to send.
NOT_SENT = "NOT_SENT"
#: Status code names by number, for the ``ItemError.code`` of stream items.
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
#: Most distinct prebuilt requests, and most bytes they may take together.
_MAX_PAYLOADS = 1024
_PAYLOAD_BUDGET_BYTES = 32 * 1024 * 1024
#: How long a process waits for the others to be ready before starting a level.
_START_TIMEOUT = 120.0
#: ``_ID_PREFIXES[n]`` is the serialized ``ClassifyStreamRequest`` carrying only ``id=str(n)``.
_ID_PREFIXES: list[bytes] = []


class BenchError(Exception):
    """The benchmark cannot run (bad settings, unreachable target); the message says why."""


# -- settings ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Level:
    """One load level: a closed-loop concurrency, or an open-loop rate."""

    concurrency: int
    """Closed loop: calls (unary) or streams kept busy. Open loop: streams used by
    ``stream`` mode (unary ignores it)."""
    rate: float | None = None
    """Open loop: requests scheduled per second; None for a closed loop."""

    @property
    def name(self) -> str:
        return f"c={self.concurrency}" if self.rate is None else f"rate={self.rate:g}/s"


@dataclass(frozen=True, slots=True)
class BenchSettings:
    """What to measure and how; from flags, then ``DIGITSERVE_*`` variables, then defaults."""

    target: str = DEFAULT_TARGET
    """Server address: host:port, dns:///name:port, or several ip:port joined by commas."""
    mode: str = "unary"
    """``unary`` (Classify calls) or ``stream`` (ClassifyStream items)."""
    images: int = 1
    """Images per Classify call (unary only)."""
    concurrency: tuple[int, ...] = (1,)
    """Closed-loop levels: calls or streams in flight; run one after the other."""
    rates: tuple[float, ...] = ()
    """Open-loop levels in requests/s (replaces the closed loop when given)."""
    arrivals: str = "poisson"
    """Open-loop arrival process: ``poisson`` (exponential gaps) or ``fixed`` (even gaps)."""
    window: int = 64
    """Stream mode, closed loop: unanswered items each stream keeps in flight."""
    warmup: float = 2.0
    """Seconds of load before each level's measurement, not counted."""
    duration: float = 5.0
    """Seconds each level is measured for (unless ``requests`` is set)."""
    requests: int | None = None
    """Measure each level until this many requests were answered (instead of a duration)."""
    processes: int = 1
    """Client processes the load is split over (their figures are merged)."""
    timeout: float = 10.0
    """Deadline of each unary call in seconds (a stream gets the whole level plus this)."""
    connect_timeout: float = 10.0
    """Seconds to wait for the target to accept a connection before giving up."""
    model: str | None = None
    """Model name to ask for; None for the server's default model."""
    version: int | None = None
    """Model version number to ask for."""
    label: str | None = None
    """Model version label to ask for."""
    data_dir: Path | None = None
    """Folder holding the MNIST test images file; None: synthetic images."""
    seed: int = 0
    """Seed of the open-loop arrivals and of synthetic images."""
    json: bool = False
    """Print the report as JSON instead of a table."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise BenchError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.images < 1:
            raise BenchError(f"images must be >= 1, got {self.images}")
        if self.mode == "stream" and self.images != 1:
            raise BenchError("--images applies to unary mode only (a stream item is one image)")
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise BenchError(f"concurrency levels must be >= 1, got {list(self.concurrency)}")
        if any(not (r > 0 and math.isfinite(r)) for r in self.rates):
            raise BenchError(f"rates must be finite numbers > 0, got {list(self.rates)}")
        if self.arrivals not in ARRIVALS:
            raise BenchError(f"arrivals must be one of {', '.join(ARRIVALS)}")
        if self.window < 1:
            raise BenchError(f"window must be >= 1, got {self.window}")
        if not (self.warmup >= 0 and math.isfinite(self.warmup)):
            raise BenchError(f"warmup must be >= 0 seconds, got {self.warmup}")
        if not (self.duration > 0 and math.isfinite(self.duration)):
            raise BenchError(f"duration must be > 0 seconds, got {self.duration}")
        if self.requests is not None and self.requests < 1:
            raise BenchError(f"requests must be >= 1, got {self.requests}")
        if self.processes < 1:
            raise BenchError(f"processes must be >= 1, got {self.processes}")
        if not (self.timeout > 0 and self.connect_timeout > 0):
            raise BenchError("timeout and connect timeout must be > 0 seconds")
        try:
            model_selector(self.model, self.version, self.label)
        except ValueError as exc:
            raise BenchError(str(exc)) from None

    @property
    def open_loop(self) -> bool:
        return bool(self.rates)

    @property
    def images_per_call(self) -> int:
        return self.images if self.mode == "unary" else 1

    def levels(self) -> list[Level]:
        """The load levels, in the order they run."""
        if self.open_loop:
            streams = self.concurrency[0]
            return [Level(streams, rate) for rate in self.rates]
        return [Level(c) for c in self.concurrency]

    def level_seconds(self, level: Level) -> float:
        """How long a level is measured for, when it is measured by time."""
        if self.requests is not None and level.rate is not None:
            return self.requests / level.rate
        return self.duration


# -- images and requests ----------------------------------------------------------------


def read_idx_images(path: Path) -> np.ndarray:
    """The images of an IDX image file (plain or gzipped) as uint8 [N,28,28]."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 16:
        raise BenchError(f"{path} is too short to be an IDX image file")
    magic, count, rows, cols = np.frombuffer(raw[:16], dtype=">i4")
    if magic != IDX_IMAGES_MAGIC or (rows, cols) != (SIDE, SIDE):
        raise BenchError(
            f"{path} is not an IDX file of 28x28 images (magic {magic}, shape {rows}x{cols})"
        )
    if len(raw) != 16 + int(count) * PIXELS:
        raise BenchError(f"{path} holds {len(raw) - 16} pixel bytes, expected {count} images")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(int(count), SIDE, SIDE)


def synthetic_images(count: int, seed: int = 0) -> np.ndarray:
    """Random digit-like images: a few bright strokes on black, uint8 [count,28,28]."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, SIDE, SIDE), dtype=np.uint8)
    for image in images:
        for _ in range(rng.integers(2, 5)):
            (r0, c0), (r1, c1) = rng.integers(4, 24, size=(2, 2))
            steps = max(abs(r1 - r0), abs(c1 - c0)) + 1
            rows = np.linspace(r0, r1, steps).round().astype(int)
            cols = np.linspace(c0, c1, steps).round().astype(int)
            image[rows, cols] = 255
            image[np.minimum(rows + 1, SIDE - 1), cols] = 190
    return images


def load_images(data_dir: Path | None, seed: int) -> tuple[np.ndarray, str]:
    """The MNIST test images of ``data_dir`` and a description; synthetic ones without them."""
    if data_dir is not None:
        for name in (TEST_IMAGES_FILE, f"{TEST_IMAGES_FILE}.gz"):
            path = data_dir / name
            if path.is_file():
                images = read_idx_images(path)
                return images, f"MNIST test images ({len(images)}) from {path}"
    return synthetic_images(256, seed), "synthetic digit-like images (no MNIST test file found)"


@dataclass(frozen=True)
class Payloads:
    """Every request of a run, serialized once and reused."""

    unary: list[bytes]
    """Serialized ``ClassifyRequest`` messages of ``images_per_call`` images."""
    stream_tails: list[bytes]
    """Serialized ``ClassifyStreamRequest`` messages without their id."""
    images_per_call: int

    @classmethod
    def build(cls, images: np.ndarray, settings: BenchSettings) -> Payloads:
        selector = model_selector(settings.model, settings.version, settings.label)
        per_call = settings.images_per_call
        if settings.mode == "unary":
            count = max(1, min(_MAX_PAYLOADS, _PAYLOAD_BUDGET_BYTES // (per_call * (PIXELS + 8))))
            unary = []
            for index in range(count):
                rows = np.arange(index * per_call, (index + 1) * per_call) % len(images)
                request = digitserve_pb2.ClassifyRequest(
                    images=[digitserve_pb2.Image(pixels=images[row].tobytes()) for row in rows],
                    model=selector,
                )
                unary.append(request.SerializeToString())
            return cls(unary=unary, stream_tails=[], images_per_call=per_call)
        # A serialized message followed by another one parses as their merge: each stream
        # item is sent as (its id's message) + (a prebuilt message with the image).
        tails = [
            digitserve_pb2.ClassifyStreamRequest(
                image=digitserve_pb2.Image(pixels=image.tobytes()), model=selector
            ).SerializeToString()
            for image in images[:_MAX_PAYLOADS]
        ]
        return cls(unary=[], stream_tails=tails, images_per_call=1)


class _ItemIds:
    """The ids of one stream's items, as small integers reused once answered.

    An item is sent as ``_ID_PREFIXES[slot]`` followed by its image's prebuilt
    message; the pool grows when every slot is in flight.
    """

    def __init__(self) -> None:
        self.free: list[int] = []
        self.size = 0
        self.started: list[float] = []
        self.counted: list[bool] = []

    def take(self, started: float, counted: bool = True) -> tuple[int, bytes]:
        if self.free:
            slot = self.free.pop()
            self.started[slot] = started
            self.counted[slot] = counted
        else:
            slot = self.size
            self.size += 1
            self.started.append(started)
            self.counted.append(counted)
        prefixes = _ID_PREFIXES
        while len(prefixes) <= slot:
            prefixes.append(
                digitserve_pb2.ClassifyStreamRequest(id=str(len(prefixes))).SerializeToString()
            )
        return slot, prefixes[slot]

    def give_back(self, slot: int) -> None:
        self.free.append(slot)

    @property
    def in_flight(self) -> int:
        return self.size - len(self.free)


# -- recording --------------------------------------------------------------------------


@dataclass
class Tally:
    """What one process saw during one level's measurement."""

    ok_calls: int = 0
    """Calls (stream items) answered OK that count."""
    ok_images: int = 0
    """Images of those calls."""
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    """Failed calls (stream items) by status code name."""
    latencies: array[float] = field(default_factory=lambda: array("d"))
    """Seconds, one per successful counted call."""
    send_lags: array[float] = field(default_factory=lambda: array("d"))
    """Open loop: seconds between a request's scheduled and actual send."""
    scheduled: int = 0
    """Open loop: requests scheduled within the measurement."""
    completed_in_window: int = 0
    """Open loop: requests answered OK during the measurement (whenever scheduled)."""
    measured_seconds: float = 0.0
    """Length of the measurement."""
    cpu_seconds: float = 0.0
    """CPU time this process used during the measurement (every thread)."""

    def to_wire(self) -> dict[str, Any]:
        """A picklable, compact form for sending between processes."""
        data = asdict(self)
        data["errors"] = dict(self.errors)
        data["latencies"] = self.latencies.tobytes()
        data["send_lags"] = self.send_lags.tobytes()
        return data

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Tally:
        tally = cls(**{**data, "errors": collections.Counter(data["errors"])})
        tally.latencies = array("d")
        tally.latencies.frombytes(data["latencies"])
        tally.send_lags = array("d")
        tally.send_lags.frombytes(data["send_lags"])
        return tally

    @classmethod
    def merge(cls, tallies: Sequence[Tally]) -> Tally:
        """The tallies of processes that ran the same level side by side."""
        merged = cls()
        for t in tallies:
            merged.ok_calls += t.ok_calls
            merged.ok_images += t.ok_images
            merged.errors.update(t.errors)
            merged.latencies.extend(t.latencies)
            merged.send_lags.extend(t.send_lags)
            merged.scheduled += t.scheduled
            merged.completed_in_window += t.completed_in_window
            merged.measured_seconds = max(merged.measured_seconds, t.measured_seconds)
            merged.cpu_seconds += t.cpu_seconds
        return merged


class _Run:
    """The clock and counters of one level in one process."""

    def __init__(self, start: float, warmup: float, seconds: float, requests: int | None) -> None:
        self.measure_start = start + warmup
        self.measure_end = math.inf if requests is not None else self.measure_start + seconds
        self.requests = requests
        self.tally = Tally()
        self.stop = asyncio.Event()
        self._counted = 0
        self._cpu_start: float | None = None

    def closed_done(self, started: float, finished: float, images: int, code: str | None) -> None:
        """A closed-loop call finished; counted if it finished during the measurement."""
        if not self.measure_start <= finished < self.measure_end:
            return
        tally = self.tally
        if code is None:
            tally.ok_calls += 1
            tally.ok_images += images
            tally.latencies.append(finished - started)
        else:
            tally.errors[code] += 1
        if self.requests is not None:
            self._counted += 1
            if self._counted >= self.requests:
                self.measure_end = finished
                self.stop.set()

    def open_done(
        self, scheduled: float, finished: float, images: int, code: str | None, counted: bool
    ) -> None:
        """An open-loop request finished: counted if it was scheduled during the measurement."""
        tally = self.tally
        if code is None and self.measure_start <= finished < self.measure_end:
            tally.completed_in_window += 1
        if not counted:
            return
        if code is None:
            tally.ok_calls += 1
            tally.ok_images += images
            tally.latencies.append(finished - scheduled)
        else:
            tally.errors[code] += 1

    def in_window(self, scheduled: float) -> bool:
        return self.measure_start <= scheduled < self.measure_end

    async def wait_for_end(self) -> None:
        """Sleep through the warm-up and the measurement (or until enough requests)."""
        await _sleep_until(self.measure_start)
        self._cpu_start = time.process_time()
        if self.requests is None:
            await _sleep_until(self.measure_end)
            self.stop.set()
        else:
            await self.stop.wait()
        self.finish()

    def finish(self) -> None:
        if self._cpu_start is not None:
            self.tally.cpu_seconds = time.process_time() - self._cpu_start
            self._cpu_start = None
        end = min(self.measure_end, time.perf_counter())
        self.tally.measured_seconds = max(0.0, end - self.measure_start)


async def _sleep_until(instant: float) -> None:
    """Sleep until ``instant``; yields to the loop even when it has passed, so that a
    schedule running late cannot starve the calls it starts."""
    await asyncio.sleep(max(0.0, instant - time.perf_counter()))


def _code_name(error: grpc.aio.AioRpcError) -> str:
    code = error.code()
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


# -- load generation --------------------------------------------------------------------

Interval = Callable[[], float]
StreamResponse = digitserve_pb2.ClassifyStreamResponse
StreamMethod = grpc.aio.StreamStreamMultiCallable[bytes, StreamResponse]


def _intervals(rate: float, arrivals: str, rng: random.Random) -> Interval:
    """Time between two scheduled requests at ``rate`` per second."""
    if arrivals == "fixed":
        gap = 1.0 / rate
        return lambda: gap
    return lambda: rng.expovariate(rate)


class _Load:
    """Runs one level's load from one process over one channel."""

    def __init__(
        self,
        settings: BenchSettings,
        payloads: Payloads,
        channel: grpc.aio.Channel,
        run: _Run,
        seed: int,
        stream_seconds: float,
    ) -> None:
        self.settings = settings
        self.stream_seconds = stream_seconds
        self.payloads = payloads
        self.run = run
        self.seed = seed
        # No serializers: requests go out as the prebuilt bytes; unary responses are
        # not parsed (their status says whether they succeeded).
        self.classify = channel.unary_unary(
            CLASSIFY_METHOD, request_serializer=None, response_deserializer=None
        )
        self.stream = _stream_method(channel)

    async def closed_unary(self, worker: int) -> None:
        run, payloads = self.run, self.payloads.unary
        classify, timeout = self.classify, self.settings.timeout
        images = self.payloads.images_per_call
        index = worker * 7919  # workers start at different requests
        perf_counter = time.perf_counter
        while not run.stop.is_set():
            payload = payloads[index % len(payloads)]
            index += 1
            started = perf_counter()
            try:
                await classify(payload, timeout=timeout)
            except grpc.aio.AioRpcError as error:
                run.closed_done(started, perf_counter(), images, _code_name(error))
            else:
                run.closed_done(started, perf_counter(), images, None)

    async def open_unary(self, rate: float) -> None:
        run, payloads = self.run, self.payloads.unary
        next_gap = _intervals(rate, self.settings.arrivals, random.Random(self.seed))
        pending: set[asyncio.Task[None]] = set()
        scheduled = run.measure_start - self.settings.warmup
        index = 0
        while scheduled < run.measure_end:
            await _sleep_until(scheduled)
            counted = run.in_window(scheduled)
            run.tally.scheduled += counted
            if self._too_late(scheduled, counted):
                scheduled += next_gap()
                continue
            task = asyncio.create_task(
                self._scheduled_call(payloads[index % len(payloads)], scheduled, counted)
            )
            pending.add(task)
            task.add_done_callback(pending.discard)
            index += 1
            scheduled += next_gap()
        if pending:
            await asyncio.gather(*pending)

    def _too_late(self, scheduled: float, counted: bool) -> bool:
        """Whether a scheduled request is dropped unsent: the client fell so far behind
        its schedule that the request's deadline has passed. Counted as NOT_SENT."""
        if time.perf_counter() - scheduled < self.settings.timeout:
            return False
        if counted:
            self.run.tally.errors[NOT_SENT] += 1
        return True

    async def _scheduled_call(self, payload: bytes, scheduled: float, counted: bool) -> None:
        run = self.run
        sent = time.perf_counter()
        if counted:
            run.tally.send_lags.append(sent - scheduled)
        try:
            await self.classify(payload, timeout=self.settings.timeout)
        except grpc.aio.AioRpcError as error:
            code: str | None = _code_name(error)
        else:
            code = None
        run.open_done(scheduled, time.perf_counter(), self.payloads.images_per_call, code, counted)

    def _stream_deadline(self) -> float:
        return (
            self.run.measure_start
            - time.perf_counter()
            + self.stream_seconds
            + self.settings.timeout
            + 30.0
        )

    async def closed_stream(self, worker: int) -> None:
        """One stream kept ``window`` items deep; a failed stream is replaced by a new one."""
        while not self.run.stop.is_set():
            ids = _ItemIds()
            try:
                await self._closed_stream_call(worker, ids)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
                code = _code_name(error) if isinstance(error, grpc.aio.AioRpcError) else "UNKNOWN"
                now = time.perf_counter()
                for slot in range(ids.size):
                    if slot not in ids.free:
                        self.run.closed_done(ids.started[slot], now, 1, code)
                await asyncio.sleep(0.01)  # no busy loop against a refusing server

    async def _closed_stream_call(self, worker: int, ids: _ItemIds) -> None:
        run, tails = self.run, self.payloads.stream_tails
        perf_counter = time.perf_counter
        call = self.stream(None, timeout=self._stream_deadline())
        index = worker * 7919
        try:
            for _ in range(self.settings.window):
                slot, prefix = ids.take(perf_counter())
                await call.write(prefix + tails[index % len(tails)])
                index += 1
            closing = False
            while True:
                response = await call.read()
                if not isinstance(response, StreamResponse):
                    break  # grpc.aio.EOF: the server ended the stream
                finished = perf_counter()
                slot = int(response.id)
                code = (
                    _CODE_NAMES.get(response.error.code, "UNKNOWN")
                    if response.HasField("error")
                    else None
                )
                run.closed_done(ids.started[slot], finished, 1, code)
                ids.give_back(slot)
                if not run.stop.is_set():
                    slot, prefix = ids.take(perf_counter())
                    await call.write(prefix + tails[index % len(tails)])
                    index += 1
                elif not closing:
                    closing = True
                    await call.done_writing()
        finally:
            call.cancel()

    async def open_stream(self, worker: int, streams: int, rate: float) -> None:
        """One of ``streams`` streams, sending its share of ``rate`` on a schedule."""
        run = self.run
        ids = _ItemIds()
        call = self.stream(None, timeout=self._stream_deadline())
        reader = asyncio.create_task(self._open_stream_reader(call, ids))
        # Independent arrivals per stream: together they are a Poisson process of ``rate``.
        rng = random.Random(f"{self.seed}-{worker}")
        next_gap = _intervals(rate / streams, self.settings.arrivals, rng)
        tails = self.payloads.stream_tails
        scheduled = run.measure_start - self.settings.warmup
        if self.settings.arrivals == "fixed":
            scheduled += worker / rate  # the streams take turns
        index = worker * 7919
        try:
            while scheduled < run.measure_end and not reader.done():
                await _sleep_until(scheduled)
                counted = run.in_window(scheduled)
                run.tally.scheduled += counted
                if self._too_late(scheduled, counted):
                    scheduled += next_gap()
                    continue
                slot, prefix = ids.take(scheduled, counted)
                if counted:
                    run.tally.send_lags.append(time.perf_counter() - scheduled)
                await call.write(prefix + tails[index % len(tails)])
                index += 1
                scheduled += next_gap()
            if not reader.done():
                await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the reader reports the call's status
        try:
            await reader
        except grpc.aio.AioRpcError as error:
            now = time.perf_counter()
            for slot in range(ids.size):
                if slot not in ids.free:
                    run.open_done(ids.started[slot], now, 1, _code_name(error), ids.counted[slot])
        finally:
            call.cancel()

    async def _open_stream_reader(
        self,
        call: grpc.aio.StreamStreamCall[bytes, StreamResponse],
        ids: _ItemIds,
    ) -> None:
        run = self.run
        while True:
            response = await call.read()
            if not isinstance(response, StreamResponse):
                return  # grpc.aio.EOF: the server ended the stream
            finished = time.perf_counter()
            slot = int(response.id)
            code = (
                _CODE_NAMES.get(response.error.code, "UNKNOWN")
                if response.HasField("error")
                else None
            )
            run.open_done(ids.started[slot], finished, 1, code, ids.counted[slot])
            ids.give_back(slot)


async def _probe(channel: grpc.aio.Channel, settings: BenchSettings, payloads: Payloads) -> str:
    """One request of the kind the level sends; a warning if it failed or looked wrong."""
    try:
        if settings.mode == "unary":
            classify = channel.unary_unary(
                CLASSIFY_METHOD,
                request_serializer=None,
                response_deserializer=digitserve_pb2.ClassifyResponse.FromString,
            )
            response = await classify(payloads.unary[0], timeout=settings.timeout)
            if len(response.predictions) != payloads.images_per_call:
                return (
                    f"the probe call got {len(response.predictions)} predictions "
                    f"for {payloads.images_per_call} images"
                )
            return ""
        call = _stream_method(channel)(None, timeout=settings.timeout)
        try:
            _, prefix = _ItemIds().take(0.0)
            await call.write(prefix + payloads.stream_tails[0])
            await call.done_writing()
            item = await call.read()
        finally:
            call.cancel()
        if not isinstance(item, StreamResponse) or item.id != "0":
            return "the probe stream item got no matching answer"
        if item.HasField("error"):
            return (
                f"the probe stream item failed: "
                f"{_CODE_NAMES.get(item.error.code, 'UNKNOWN')}: {item.error.message}"
            )
        return ""
    except grpc.aio.AioRpcError as error:
        return f"the probe call failed: {_code_name(error)}: {error.details()}"


def _stream_method(channel: grpc.aio.Channel) -> StreamMethod:
    """ClassifyStream taking prebuilt request bytes and giving parsed responses."""
    return channel.stream_stream(
        STREAM_METHOD,
        request_serializer=None,
        response_deserializer=StreamResponse.FromString,
    )


def _channel_settings() -> ChannelSettings:
    """The SDK's channel configuration with retries off: every failure is counted."""
    # No retries and no health watching: every failure counts, and a server without
    # grpc.health.v1 (the echo server) is measured the same way.
    return ChannelSettings(retry=RetryPolicy(max_attempts=1), health_check=False)


async def run_level(
    settings: BenchSettings,
    level: Level,
    payloads: Payloads,
    *,
    start_gate: Callable[[], None] | None = None,
    seed: int | None = None,
    warn: Callable[[str], None] | None = None,
) -> Tally:
    """Run one level from this process and return what it saw.

    ``start_gate`` is called (blocking) once connected, to start processes together.
    """
    channel = create_aio_channel(settings.target, _channel_settings())
    try:
        try:
            await asyncio.wait_for(channel.channel_ready(), settings.connect_timeout)
        except TimeoutError:
            raise BenchError(
                f"could not connect to {settings.target} within {settings.connect_timeout:g} s"
            ) from None
        problem = await _probe(channel, settings, payloads)
        if problem and warn is not None:
            warn(problem)
        if start_gate is not None:
            await asyncio.to_thread(start_gate)
        gc.collect()
        gc.freeze()  # the prebuilt requests need not be scanned again and again
        # An open-loop level measured by requests lasts requests/rate seconds.
        requests = settings.requests if level.rate is None else None
        seconds = settings.level_seconds(level)
        run = _Run(time.perf_counter(), settings.warmup, seconds, requests)
        # A closed loop measured by requests may take any time: its streams get an hour.
        stream_seconds = seconds if requests is None else 3600.0
        load = _Load(
            settings,
            payloads,
            channel,
            run,
            settings.seed if seed is None else seed,
            stream_seconds,
        )
        if level.rate is None:
            work = load.closed_unary if settings.mode == "unary" else load.closed_stream
            workers = [work(i) for i in range(level.concurrency)]
        elif settings.mode == "unary":
            workers = [load.open_unary(level.rate)]
        else:
            workers = [
                load.open_stream(i, level.concurrency, level.rate) for i in range(level.concurrency)
            ]
        tasks = [asyncio.create_task(w) for w in [run.wait_for_end(), *workers]]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            gc.unfreeze()
        return run.tally
    finally:
        await channel.close(grace=None)


# -- several processes ------------------------------------------------------------------


def _split(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal positive shares (fewer if total < parts)."""
    parts = min(parts, total)
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _process_shares(settings: BenchSettings, level: Level) -> list[tuple[Level, int | None]]:
    """Each process's level and request count when the load is split over processes."""
    processes = settings.processes
    if level.rate is None:
        counts = _split(level.concurrency, processes)
        shares = [Level(c) for c in counts]
    else:
        streams = _split(level.concurrency, processes) if settings.mode == "stream" else []
        count = len(streams) if streams else processes
        shares = [Level(streams[i] if streams else 1, level.rate / count) for i in range(count)]
    if settings.requests is None:
        return [(share, None) for share in shares]
    requests = _split(settings.requests, len(shares))
    return list(zip(shares[: len(requests)], requests, strict=True))


def _process_main(
    settings: BenchSettings,
    level: Level,
    seed: int,
    barrier: Any,
    results: Any,
) -> None:
    """Body of one client process (spawned): run its share, send back its tally."""
    try:
        images, _ = load_images(settings.data_dir, settings.seed)
        payloads = Payloads.build(images, settings)

        def gate() -> None:
            barrier.wait(_START_TIMEOUT)

        tally = asyncio.run(run_level(settings, level, payloads, start_gate=gate, seed=seed))
        results.put(("ok", tally.to_wire()))
    except BaseException as exc:
        barrier.abort()
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def _run_in_processes(settings: BenchSettings, level: Level) -> Tally:
    context = multiprocessing.get_context("spawn")
    shares = _process_shares(settings, level)
    barrier = context.Barrier(len(shares))
    results = context.Queue()
    processes = [
        context.Process(
            target=_process_main,
            args=(replace(settings, requests=requests), share, settings.seed + i, barrier, results),
            name=f"digitserve-bench-{i}",
            daemon=True,
        )
        for i, (share, requests) in enumerate(shares)
    ]
    for process in processes:
        process.start()
    budget = _START_TIMEOUT + settings.warmup + settings.level_seconds(level) + 60.0
    tallies: list[Tally] = []
    failures: list[str] = []
    try:
        deadline = time.monotonic() + budget
        while len(tallies) + len(failures) < len(processes):
            try:
                status, payload = results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError("client processes did not report in time") from None
            if status == "ok":
                tallies.append(Tally.from_wire(payload))
            else:
                failures.append(payload)
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join()
        results.close()
    if failures:
        raise BenchError(f"a client process failed: {failures[0]}")
    return Tally.merge(tallies)


# -- reporting --------------------------------------------------------------------------


def _ms_percentiles(samples: array[float], quantiles: Sequence[int]) -> dict[str, float] | None:
    if not samples:
        return None
    values = np.frombuffer(samples, dtype=np.float64) * 1000.0
    points = np.percentile(values, quantiles, method="inverted_cdf")
    summary = {f"p{q}": round(float(p), 3) for q, p in zip(quantiles, points, strict=True)}
    summary["max"] = round(float(values.max()), 3)
    summary["mean"] = round(float(values.mean()), 3)
    return summary


def summarize(settings: BenchSettings, level: Level, tally: Tally) -> dict[str, Any]:
    """The report of one level (JSON-ready)."""
    seconds = tally.measured_seconds

    def per_second(count: int) -> float:
        return round(count / seconds, 1) if seconds > 0 else 0.0

    result: dict[str, Any] = {
        "mode": settings.mode,
        "images_per_call": settings.images_per_call,
        "loop": "closed" if level.rate is None else "open",
        "concurrency": level.concurrency,
        "window": settings.window if settings.mode == "stream" and level.rate is None else None,
        "rate": level.rate,
        "arrivals": settings.arrivals if level.rate is not None else None,
        "processes": settings.processes,
        "duration_s": round(seconds, 3),
        "calls": tally.ok_calls,
        "images": tally.ok_images,
        "errors": dict(sorted(tally.errors.items())),
        "error_count": sum(tally.errors.values()),
        "calls_per_s": per_second(tally.ok_calls),
        "images_per_s": per_second(tally.ok_images),
        "latency_ms": _ms_percentiles(tally.latencies, (50, 95, 99)),
        "client_cpu_cores": round(tally.cpu_seconds / seconds, 2) if seconds > 0 else 0.0,
    }
    if level.rate is not None:
        # Throughput while measuring, whenever the answered requests were scheduled.
        result["calls_per_s"] = per_second(tally.completed_in_window)
        result["images_per_s"] = per_second(tally.completed_in_window * settings.images_per_call)
        result["offered_rate"] = per_second(tally.scheduled)
        result["send_lag_ms"] = _ms_percentiles(tally.send_lags, (50, 99))
    return result


def run_benchmark(
    settings: BenchSettings, *, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run every level and return the report (JSON-ready)."""
    say = progress or (lambda _message: None)
    images, data = load_images(settings.data_dir, settings.seed)
    payloads = Payloads.build(images, settings) if settings.processes == 1 else None
    results = []
    for level in settings.levels():
        seconds = (
            f"{settings.requests} requests"
            if settings.requests is not None and level.rate is None
            else f"{settings.level_seconds(level):g} s"
        )
        say(f"{settings.mode} {level.name}: {settings.warmup:g} s warm-up, then {seconds}")
        if payloads is not None:
            tally = asyncio.run(run_level(settings, level, payloads, warn=say))
        else:
            tally = _run_in_processes(settings, level)
        results.append(summarize(settings, level, tally))
    return {
        "tool": "digitserve-bench",
        "target": settings.target,
        "model": {"name": settings.model, "version": settings.version, "label": settings.label},
        "data": data,
        "warmup_s": settings.warmup,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": results,
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render_table(report: Mapping[str, Any]) -> str:
    """The report as a plain-text table, one row per level."""
    results = report["results"]
    open_loop = any(r["loop"] == "open" for r in results)
    header = ["load", "calls/s", "images/s", "p50 ms", "p95 ms", "p99 ms", "max ms"]
    if open_loop:
        header += ["offered/s", "lag p99 ms"]
    header += ["client cpu", "errors"]
    rows = [header]
    for r in results:
        latency = r["latency_ms"] or {}
        load = f"c={r['concurrency']}" if r["loop"] == "closed" else f"{r['rate']:g}/s"
        if r["window"]:
            load += f" w={r['window']}"
        row = [
            load,
            _fmt(r["calls_per_s"], 1),
            _fmt(r["images_per_s"], 1),
            *(_fmt(latency.get(k)) for k in ("p50", "p95", "p99", "max")),
        ]
        if open_loop:
            lag = r.get("send_lag_ms") or {}
            row += [_fmt(r.get("offered_rate"), 1), _fmt(lag.get("p99"))]
        errors = ", ".join(f"{code} {n}" for code, n in r["errors"].items()) or "-"
        row += [f"{r['client_cpu_cores']:.2f}", errors]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    first = results[0] if results else {}
    title = (
        f"digitserve-bench {first.get('mode', '')}, {first.get('images_per_call', 1)} "
        f"image(s) per call, target {report['target']}; {report['data']}"
    )
    lines = [title]
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:-1], widths[1:-1], strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


# -- command line -----------------------------------------------------------------------


def _csv(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list, got {text!r}"
            ) from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digitserve-bench",
        description="Load a digitserve server and report throughput and latency.",
        epilog="Exit status: 0 every level had successful calls; 1 a level had none or the "
        "target was unreachable; 2 bad command line.",
    )
    add = parser.add_argument
    add("--target", help=f"server address (default $DIGITSERVE_TARGET, else {DEFAULT_TARGET})")
    add("--mode", choices=MODES, default="unary", help="unary Classify calls or stream items")
    add("--images", type=int, default=1, help="images per Classify call (unary; default 1)")
    add(
        "--concurrency",
        type=_csv(int),
        default=(1,),
        help="closed-loop levels, e.g. 1,8,64 (open loop: streams used by stream mode)",
    )
    add("--rate", type=_csv(float), default=(), help="open-loop levels in requests/s, e.g. 500")
    add("--arrivals", choices=ARRIVALS, default="poisson", help="open-loop arrival process")
    add("--window", type=int, default=64, help="stream items in flight per stream (default 64)")
    add("--warmup", type=float, default=2.0, help="warm-up seconds per level (default 2)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--duration", type=float, default=5.0, help="seconds per level (default 5)")
    group.add_argument("--requests", type=int, help="answered requests per level instead")
    add("--processes", type=int, default=1, help="client processes sharing the load")
    add("--timeout", type=float, default=10.0, help="deadline of each call in seconds")
    add("--connect-timeout", type=float, default=10.0, help="seconds to wait to connect")
    add("--model", help="model name (default: the server's default model)")
    version = parser.add_mutually_exclusive_group()
    version.add_argument("--version", type=int, help="model version number")
    version.add_argument("--label", help="model version label")
    add(
        "--data-dir",
        type=Path,
        help="folder with the MNIST test images (default $DIGITSERVE_DATA_DIR)",
    )
    add("--seed", type=int, default=0, help="seed of open-loop arrivals and synthetic images")
    add("--json", action="store_true", help="print the report as JSON")
    add("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> BenchSettings:
    """Flags win over ``DIGITSERVE_*`` variables, which win over defaults."""
    data_dir = args.data_dir or environ.get(f"{ENV_PREFIX}DATA_DIR") or None
    return BenchSettings(
        target=args.target or environ.get(f"{ENV_PREFIX}TARGET") or DEFAULT_TARGET,
        mode=args.mode,
        images=args.images,
        concurrency=args.concurrency,
        rates=args.rate,
        arrivals=args.arrivals,
        window=args.window,
        warmup=args.warmup,
        duration=args.duration,
        requests=args.requests,
        processes=args.processes,
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        model=args.model,
        version=args.version,
        label=args.label,
        data_dir=Path(data_dir) if data_dir else None,
        seed=args.seed,
        json=args.json,
    )


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Entry point of ``digitserve-bench``; returns the exit status."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exit_:
        return EXIT_OK if exit_.code == 0 else EXIT_USAGE
    try:
        settings = settings_from_args(args, os.environ if environ is None else environ)
    except BenchError as exc:
        print(f"digitserve-bench: {exc}", file=err)
        return EXIT_USAGE

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"digitserve-bench: {message}", file=err, flush=True)

    try:
        report = run_benchmark(settings, progress=progress)
    except BenchError as exc:
        print(f"digitserve-bench: error: {exc}", file=err)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("digitserve-bench: interrupted", file=err)
        return EXIT_INTERRUPTED
    if settings.json:
        json.dump(report, out, indent=2)
        out.write("\n")
    else:
        out.write(render_table(report) + "\n")
    out.flush()
    return EXIT_OK if all(r["calls"] > 0 for r in report["results"]) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
