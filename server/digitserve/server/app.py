"""Assembling and running the server: gRPC, health, reflection, models, metrics, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from digitserve.v1 import digitserve_pb2_grpc as pb_grpc

from .grpc_api import SERVICE_DESCRIPTOR, SERVICE_NAME, DigitClassifierServicer
from .metrics import Metrics
from .service import ClassifierService, Limits
from .settings import ServerSettings
from .versions import ModelManager, RunnerFactory

log = logging.getLogger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def grpc_options(settings: ServerSettings) -> list[tuple[str, int]]:
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Clients keep connections alive with pings every 30 s or more.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.so_reuseport", 0),
    ]
    if settings.max_connection_age_seconds is not None:
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
            (
                "grpc.max_connection_age_grace_ms",
                int(settings.max_connection_age_grace_seconds * 1000),
            ),
        ]
    return options


class DigitServer:
    """A running digitserve. Create with ``create_server``; stop with ``stop``."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        runner_factory: RunnerFactory | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics(settings)
        policy, model_policies = settings.policies()
        extra = {"runner_factory": runner_factory} if runner_factory else {}
        self.manager = ModelManager(
            settings.model_repo,
            settings.batching_config(),
            policy=policy,
            model_policies=model_policies,
            observer=self.metrics,
            on_change=self._sync_health,
            **extra,
        )
        self.metrics.bind_manager(self.manager)
        self.service = ClassifierService(
            self.manager,
            default_model=settings.default_model,
            limits=Limits(settings.max_images_per_request, settings.max_image_bytes),
            preprocess_threads=settings.preprocess_threads,
            observer=self.metrics,
        )
        self.health = HealthServicer()
        self.grpc = grpc.aio.server(options=grpc_options(settings))
        servicer = DigitClassifierServicer(
            self.service, max_stream_in_flight=settings.max_stream_in_flight
        )
        pb_grpc.add_DigitClassifierServicer_to_server(
            self.metrics.tracker().instrument(servicer, SERVICE_DESCRIPTOR), self.grpc
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            [SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME], self.grpc
        )
        self.port = 0
        self.refresh_now = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._draining = False
        self._stopped = asyncio.Event()
        self._health_changed = asyncio.Event()

    async def start(self) -> int:
        """Bind, start answering (NOT_SERVING until a model is warm), start loading models."""
        self.port = self.grpc.add_insecure_port(self.settings.listen_address)
        if self.port == 0:
            raise RuntimeError(f"could not bind {self.settings.listen_address}")
        await self._set_health(False)
        await self.grpc.start()
        self.metrics.start_http()
        log.info("digitserve listening on %s (port %d)", self.settings.listen_address, self.port)
        self._watcher = asyncio.create_task(self._watch(), name="repository-watcher")
        return self.port

    async def _watch(self) -> None:
        try:
            await self.manager.refresh()
        except Exception:
            log.exception("first repository scan failed; will retry")
        await self.manager.watch(self.settings.poll_seconds, self.refresh_now)

    async def wait_until_serving(self) -> None:
        """Wait until the default model serves (wrap in ``asyncio.timeout``)."""
        while not self.manager.is_serving(self.settings.default_model):
            self._health_changed.clear()
            await self._health_changed.wait()

    async def _sync_health(self) -> None:
        await self._set_health(self.manager.is_serving(self.settings.default_model))
        self._health_changed.set()

    async def _set_health(self, serving: bool) -> None:
        if self._draining:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, keep serving for drain_delay, refuse new RPCs, finish in-flight."""
        if self._draining:
            await self._stopped.wait()
            return
        self._draining = True
        grace = self.settings.grace_seconds if grace is None else grace
        log.info("draining: health NOT_SERVING; in-flight requests get %.1fs", grace)
        await self.health.enter_graceful_shutdown()
        if self.settings.drain_delay_seconds > 0:
            await asyncio.sleep(self.settings.drain_delay_seconds)
        await self.grpc.stop(grace)
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.manager.close()
        self.service.close()
        self.metrics.stop_http()
        log.info("stopped")
        self._stopped.set()


async def create_server(
    settings: ServerSettings, *, runner_factory: RunnerFactory | None = None
) -> tuple[DigitServer, int]:
    """Build and start a server; returns it and the port it bound (useful with port 0)."""
    server = DigitServer(settings, runner_factory=runner_factory)
    port = await server.start()
    return server, port


async def serve(settings: ServerSettings) -> None:
    """Run until SIGTERM or SIGINT, then drain and return. SIGHUP rescans the repository."""
    server, _ = await create_server(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.refresh_now.set)
    try:
        await stop.wait()
        log.info("signal received; shutting down")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await server.stop()
