"""Prometheus metrics: requests, batching, versions, model quality, build and process.

Every server has its own registry (tests run several servers in one process).
Names use the ``digitserve_`` prefix and base units; label values are bounded
(RPC names, status code names, model names, version numbers, digits, fixed
reasons) — never request ids or messages.

``Metrics`` implements the observer protocols of the batcher, the version
manager and the service, and provides the gRPC interceptor that counts and times
RPCs and tags each one with a request id. With ``metrics_enabled`` off every
hook is a no-op and no interceptor runs, so the cost of metrics can be measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import itertools
import logging
import os
import platform
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf.descriptor import ServiceDescriptor
from prometheus_client import (
    CollectorRegistry,
    Gauge,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from . import logs
from .metric_types import FastCounter, FastGauge, FastHistogram

if TYPE_CHECKING:
    from .batching import BatchObserver
    from .settings import ServerSettings
    from .versions import ModelManager, State

log = logging.getLogger(__name__)
# One DEBUG line per finished RPC (with its request id): rpc, code, model, version, duration.
access_log = logging.getLogger("digitserve.access")

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
CONFIDENCE_BUCKETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)
REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID = 128
# Status codes whose request series exist from the start (see Metrics._zero_series).
ERROR_CODES = (
    "INVALID_ARGUMENT", "NOT_FOUND", "UNAVAILABLE", "RESOURCE_EXHAUSTED",
    "DEADLINE_EXCEEDED", "CANCELLED", "INTERNAL",
)  # fmt: skip


class _VersionCollector(Collector):
    """``digitserve_model_version_info``, read from the manager at scrape time."""

    def __init__(self) -> None:
        self.manager: ModelManager | None = None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "digitserve_model_version_info",
            "One series per known model version (value 1) with its state and labels.",
            labels=["model", "version", "state", "labels"],
        )
        available = GaugeMetricFamily(
            "digitserve_model_available_versions",
            "Number of AVAILABLE versions per model.",
            labels=["model"],
        )
        if self.manager is not None:
            for _attempt in range(3):
                try:
                    infos = self.manager.snapshot()
                    break
                except RuntimeError:  # changed while being read from another thread
                    continue
            else:
                infos = []
            for info in infos:
                by_version: dict[int, list[str]] = {}
                for label, number in info.labels.items():
                    by_version.setdefault(number, []).append(label)
                count = 0
                for v in info.versions:
                    family.add_metric(
                        [
                            info.name,
                            str(v.version),
                            v.state.value,
                            ",".join(sorted(by_version.get(v.version, []))),
                        ],
                        1.0,
                    )
                    count += v.state.value == "AVAILABLE"
                available.add_metric([info.name], float(count))
        yield family
        yield available

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


def _git_commit() -> str:
    """The code's commit: DIGITSERVE_GIT_COMMIT (set in container images), else git."""
    if commit := os.environ.get("DIGITSERVE_GIT_COMMIT"):
        return commit
    root = Path(__file__).resolve().parents[3]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=2,
            check=False,
        )
        if out.returncode == 0:
            return out.stdout.strip()
    return "unknown"


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class _BatchMetrics:
    """The batch observer of one model version."""

    def __init__(self, metrics: Metrics, model: str, version: int) -> None:
        labels = (model, str(version))
        self._wait = metrics.queue_wait.labels(*labels)
        self._compute = metrics.compute.labels(*labels)
        self._size = metrics.batch_size.labels(*labels)
        self._padding = metrics.padding.labels(*labels)
        self._depth = metrics.queue_depth.labels(*labels)
        self._failed = metrics.batch_failures.labels(*labels)
        metrics.queue_capacity.labels(*labels).set(metrics._queue_capacity)
        self._rejections = metrics.rejections
        self._model = model

    def batch_done(
        self, size: int, padded: int, queue_waits: Sequence[float], compute_seconds: float
    ) -> None:
        self._size.observe(size)
        self._compute.observe(compute_seconds)
        if padded:
            self._padding.inc(padded)
        for wait in queue_waits:
            self._wait.observe(wait)

    def batch_failed(self, size: int) -> None:
        self._failed.inc()

    def rejected(self, reason: str, images: int) -> None:
        self._rejections.labels(self._model, reason).inc(images)

    def queue_depth(self, images: int) -> None:
        self._depth.set(images)


class _NoBatchMetrics:
    def batch_done(self, *args: Any) -> None:
        pass

    def batch_failed(self, size: int) -> None:
        pass

    def rejected(self, reason: str, images: int) -> None:
        pass

    def queue_depth(self, images: int) -> None:
        pass


class Metrics:
    """All of the server's metrics and the hooks that feed them."""

    def __init__(self, settings: ServerSettings) -> None:
        self.enabled = settings.metrics_enabled
        self._port_setting = settings.metrics_port
        self._host = settings.metrics_host
        self._low_confidence = settings.low_confidence_threshold
        self._queue_capacity = settings.max_queued_items
        self._tracker: RequestTracker | None = None
        self._models_seen: set[str] = set()
        self.registry = CollectorRegistry()
        self.port: int | None = None
        self._http: Any = None
        self._http_thread: threading.Thread | None = None
        reg = self.registry

        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
        build = Gauge(
            "digitserve_build_info",
            "Build of this server (value 1).",
            ["version", "git_commit", "tensorflow_version", "grpc_version", "python_version"],
            registry=reg,
        )
        build.labels(
            _dist_version("digitserve"),
            _git_commit(),
            _dist_version("tensorflow-cpu")
            if _dist_version("tensorflow-cpu") != "unknown"
            else _dist_version("tensorflow"),
            grpc.__version__,
            platform.python_version(),
        ).set(1)

        self.requests = FastCounter(
            "digitserve_requests",
            "RPCs finished, by method, status code and the model version that answered.",
            ["rpc", "code", "model", "version"],
            registry=reg,
        )
        self.latency = FastHistogram(
            "digitserve_request_duration_seconds",
            "Time from receiving an RPC to its last response, in seconds.",
            ["rpc", "model"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.inflight = FastGauge(
            "digitserve_inflight_requests", "RPCs being served.", ["rpc"], registry=reg
        )
        self.stream_items = FastCounter(
            "digitserve_stream_items",
            "ClassifyStream items answered, by status code.",
            ["code", "model", "version"],
            registry=reg,
        )
        self.images = FastCounter(
            "digitserve_images_classified",
            "Images classified, by model version.",
            ["model", "version"],
            registry=reg,
        )
        self.queue_wait = FastHistogram(
            "digitserve_batch_queue_wait_seconds",
            "Time a request's images waited in the batch queue, in seconds.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.compute = FastHistogram(
            "digitserve_batch_compute_seconds",
            "Time of one model call on a batch, in seconds.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.batch_size = FastHistogram(
            "digitserve_batch_size_images",
            "Images per model call, before padding.",
            ["model", "version"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=reg,
        )
        self.padding = FastCounter(
            "digitserve_batch_padding_images",
            "Blank images added to pad batches up to an allowed size.",
            ["model", "version"],
            registry=reg,
        )
        self.batch_failures = FastCounter(
            "digitserve_batch_failures",
            "Model calls that raised; their requests got INTERNAL.",
            ["model", "version"],
            registry=reg,
        )
        self.queue_depth = FastGauge(
            "digitserve_queue_depth_images",
            "Images waiting in the batch queue.",
            ["model", "version"],
            registry=reg,
        )
        self.queue_capacity = FastGauge(
            "digitserve_queue_capacity_images",
            "Images that may wait in the batch queue before new work is rejected.",
            ["model", "version"],
            registry=reg,
        )
        self.rejections = FastCounter(
            "digitserve_rejections",
            "Images or requests refused, by reason "
            "(queue_full, deadline, cancelled, invalid_input).",
            ["model", "reason"],
            registry=reg,
        )
        self.load_duration = FastHistogram(
            "digitserve_model_load_duration_seconds",
            "Time to verify, load and warm up a version, in seconds.",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=reg,
        )
        self.load_failures = FastCounter(
            "digitserve_model_load_failures",
            "Versions that failed to load, by reason (manifest, checksum, signature, load_error).",
            ["model", "reason"],
            registry=reg,
        )
        self.last_load = FastGauge(
            "digitserve_model_last_load_success_timestamp_seconds",
            "Unix time of the last version that became AVAILABLE.",
            ["model"],
            registry=reg,
        )
        self.predicted = FastCounter(
            "digitserve_predictions",
            "Predicted digits, by model version and digit.",
            ["model", "version", "digit"],
            registry=reg,
        )
        self.low_confidence = FastCounter(
            "digitserve_low_confidence_predictions",
            f"Predictions whose confidence is below {self._low_confidence}.",
            ["model", "version"],
            registry=reg,
        )
        self.confidence = FastHistogram(
            "digitserve_prediction_confidence",
            "Confidence (top probability) of each prediction.",
            ["model", "version"],
            buckets=CONFIDENCE_BUCKETS,
            registry=reg,
        )
        self._versions = _VersionCollector()
        reg.register(self._versions)
        self._prediction_children: dict[tuple[str, int], tuple[Any, ...]] = {}

    # -- HTTP endpoint ----------------------------------------------------------------

    def start_http(self) -> None:
        if not self.enabled or self._port_setting is None:
            return
        self._http, self._http_thread = start_http_server(
            self._port_setting, addr=self._host, registry=self.registry
        )
        self.port = self._http.server_port
        log.info("metrics on http://%s:%d/metrics", self._host, self.port)

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def bind_manager(self, manager: ModelManager) -> None:
        self._versions.manager = manager

    def model_label(self, name: str) -> str:
        """``name`` if the repository knows that model, else "".

        Clients choose the model names they send: an unknown one must not become a
        label value (one new series, and one cached child, per made-up name).
        """
        manager = self._versions.manager
        if not name or manager is None:
            return name
        return name if manager.knows(name) else ""

    # -- version observer -----------------------------------------------------------

    def version_state(self, model: str, version: int, state: State | None) -> None:
        if not self.enabled:
            return
        if model not in self._models_seen:
            self._models_seen.add(model)
            self._zero_series(model)
        if state is None:
            self._remove_version_series(model, str(version))

    def _zero_series(self, model: str) -> None:
        """Create a model's error series at 0, so a first failure shows in rate()."""
        for reason in ("manifest", "checksum", "signature", "load_error"):
            self.load_failures.labels(model, reason)
        for reason in ("queue_full", "deadline", "cancelled", "invalid_input"):
            self.rejections.labels(model, reason)
        for rpc in ("Classify", "ClassifyStream"):
            for code in ERROR_CODES:
                self.requests.labels(rpc, code, model, "")

    def _remove_version_series(self, model: str, version: str) -> None:
        """An unloaded version's series go, so reloads do not pile them up."""
        for metric in (
            self.confidence,
            self.queue_wait, self.compute, self.batch_size, self.padding,
            self.batch_failures, self.queue_depth, self.queue_capacity,
            self.images, self.low_confidence,
        ):  # fmt: skip
            metric.remove(model, version)
        for digit in range(10):
            self.predicted.remove(model, version, str(digit))
        self.stream_items.remove("OK", model, version)
        self._prediction_children.pop((model, int(version)), None)
        if self._tracker is not None:
            self._tracker.forget(model, version)

    def load_finished(self, model: str, version: int, seconds: float) -> None:
        if self.enabled:
            self.load_duration.labels(model).observe(seconds)
            self.last_load.labels(model).set(time.time())

    def load_failed(self, model: str, version: int, reason: str) -> None:
        if self.enabled:
            self.load_failures.labels(model, reason).inc()

    def batch_observer(self, model: str, version: int) -> BatchObserver:
        return _BatchMetrics(self, model, version) if self.enabled else _NoBatchMetrics()

    # -- prediction observer --------------------------------------------------------

    def predictions(self, model: str, version: int, probabilities: np.ndarray) -> None:
        if not self.enabled:
            return
        key = (model, version)
        children = self._prediction_children.get(key)
        if children is None:
            v = str(version)
            children = (
                self.images.labels(model, v),
                self.low_confidence.labels(model, v),
                tuple(self.predicted.labels(model, v, str(d)) for d in range(10)),
                self.confidence.labels(model, v),
            )
            self._prediction_children[key] = children
        images, low, digits, confidence = children
        images.inc(len(probabilities))
        if len(probabilities) == 1:  # the common case, without numpy's per-call overhead
            row = probabilities[0].tolist()
            top = max(row)
            digits[row.index(top)].inc()
            confidence.observe(top)
            if top < self._low_confidence:
                low.inc()
        else:
            tops = probabilities.max(axis=1)
            for digit, count in enumerate(np.bincount(probabilities.argmax(axis=1), minlength=10)):
                if count:
                    digits[digit].inc(int(count))
            confidence.observe_many(tops)
            lows = int((tops < self._low_confidence).sum())
            if lows:
                low.inc(lows)
        logs.note_version(model, version)

    def item_failed(self, model: str, code: str) -> None:
        if self.enabled:
            self.stream_items.labels(code, model, "").inc()
            if code == "INVALID_ARGUMENT":
                self.rejections.labels(model, "invalid_input").inc()

    def item_done(self, model: str, version: int) -> None:
        if self.enabled:
            self.stream_items.labels("OK", model, str(version)).inc()

    # -- gRPC interceptor ---------------------------------------------------------------

    def tracker(self) -> RequestTracker:
        if self._tracker is None:
            self._tracker = RequestTracker(self)
        return self._tracker


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and 0 < len(value) <= MAX_REQUEST_ID:
            return value
    return _new_request_id()


def _request_ids() -> Callable[[], str]:
    """Unique 32-hex-digit ids: a random per-process prefix and a counter. Cheaper than
    reading 16 random bytes per request (a system call, ~6 us in a VM), and unique as
    long as the prefix is."""
    prefix = os.urandom(8).hex()
    counter = itertools.count()
    return lambda: f"{prefix}{next(counter):016x}"


_new_request_id = _request_ids()


def _final_code(context: grpc.aio.ServicerContext, exc: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if exc is None:
        return "OK"
    if isinstance(exc, asyncio.CancelledError):
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    return "UNKNOWN"


class RequestTracker:
    """Gives every digitserve RPC a request id (echoed in trailing metadata) and, with
    metrics on, counts and times it.

    It wraps the servicer's methods once, when the server is built (``instrument``),
    rather than acting as a gRPC interceptor: an aio interceptor costs a coroutine, a
    handler lookup and a new handler tuple on every call. Handlers are coroutines, so
    one extra coroutine frame per call is all this adds.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics if metrics.enabled else None
        # Label lookups cost more than the updates: cache the children.
        self._children: dict[tuple[str, ...], Any] = {}

    def instrument(self, servicer: Any, service: ServiceDescriptor) -> Any:
        """An object with the servicer's RPC methods, each wrapped."""
        return SimpleNamespace(
            **{
                method.name: self._wrap(method.name, getattr(servicer, method.name))
                for method in service.methods
            }
        )

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (str(id(metric)), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def forget(self, model: str, version: str) -> None:
        """Drop an unloaded version's request series and their cached children."""
        m = self._m
        for key in [k for k in self._children if k[-2:] == (model, version)]:
            del self._children[key]
            if m is not None and key[0] == str(id(m.requests)):
                m.requests.remove(*key[1:])

    def _wrap(self, rpc: str, behavior: Any) -> Any:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            ctx = logs.RequestContext(_request_id(context))
            context.set_trailing_metadata(((REQUEST_ID_HEADER, ctx.request_id),))
            logs.current_request.set(ctx)  # this task serves only this RPC
            m = self._m
            if m is None:
                return await behavior(request, context)
            inflight = self._child(m.inflight, rpc)
            inflight.inc()
            started = time.perf_counter()
            exc: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as e:
                exc = e
                raise
            finally:
                inflight.dec()
                self._finish(m, rpc, ctx, _final_code(context, exc), started)

        return wrapper

    def _finish(
        self, m: Metrics, rpc: str, ctx: logs.RequestContext, code: str, started: float
    ) -> None:
        elapsed = time.perf_counter() - started
        # A version answered: the model exists. Otherwise the name may be made up.
        model = ctx.model if ctx.version else m.model_label(ctx.model)
        self._child(m.requests, rpc, code, model, ctx.version).inc()
        self._child(m.latency, rpc, model).observe(elapsed)
        if code == "INVALID_ARGUMENT":
            m.rejections.labels(model, "invalid_input").inc()
        if access_log.isEnabledFor(logging.DEBUG):
            access_log.debug(
                "%s %s in %.1f ms",
                rpc,
                code,
                elapsed * 1000,
                extra={"rpc": rpc, "code": code, "model": model, "version": ctx.version},
            )
