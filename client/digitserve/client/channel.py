"""How the SDK connects: targets, load balancing, retries, keepalive and message limits.

Everything a channel is built with lives here so that the clients, the
benchmark tool and the tests build channels the same way:

* ``channel_target`` turns one target (``host:port``, ``dns:///name:port``,
  any gRPC target URI) or a list of IP addresses into a gRPC target; a list
  becomes the ``ipv4:`` / ``ipv6:`` multi-address form so one channel spreads
  calls over every replica.
* ``service_config`` is the JSON service config: ``round_robin`` over every
  resolved address, and retries of UNAVAILABLE only (never
  RESOURCE_EXHAUSTED: the server says that when it is overloaded, and retrying
  it would turn overload into a retry storm), with exponential backoff and
  retry throttling.
* ``channel_options`` is the full list of channel arguments.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import grpc
import grpc.aio

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ChannelSettings",
    "RetryPolicy",
    "channel_options",
    "channel_target",
    "create_aio_channel",
    "create_channel",
    "service_config",
]

MiB = 1024 * 1024

#: Largest message sent or received, as the server's default ``max_message_bytes``.
DEFAULT_MAX_MESSAGE_BYTES = 64 * MiB

#: The services whose calls the retry policy covers.
RETRIED_SERVICES = ("digitserve.v1.DigitClassifier", "grpc.health.v1.Health")

#: Most attempts gRPC allows in a retry policy (it caps larger values to this).
MAX_ATTEMPTS_LIMIT = 5


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Transparent retries of calls that failed with UNAVAILABLE.

    gRPC retries a call only until the server has started answering it, so an
    item of a stream is never computed twice. Waits grow from
    ``initial_backoff`` by ``backoff_multiplier`` up to ``max_backoff``, each
    randomised by gRPC between 0 and that value.
    """

    max_attempts: int = 4
    """Attempts per call, the first one included (1 disables retries; at most 5)."""
    initial_backoff: float = 0.1
    """Upper bound of the wait before the first retry, in seconds."""
    max_backoff: float = 2.0
    """Upper bound of any wait between attempts, in seconds."""
    backoff_multiplier: float = 2.0
    """Factor by which the wait bound grows after each retry."""
    throttle_max_tokens: int = 10
    """Retry throttling: retries stop while fewer than half of these tokens are left."""
    throttle_token_ratio: float = 0.1
    """Retry throttling: tokens a successful call gives back (a failure takes one)."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise ValueError(
                f"max_attempts must be in 1..{MAX_ATTEMPTS_LIMIT}, got {self.max_attempts}"
            )
        if not self.initial_backoff > 0:
            raise ValueError(f"initial_backoff must be > 0 seconds, got {self.initial_backoff}")
        if not self.max_backoff >= self.initial_backoff:
            raise ValueError(
                f"max_backoff ({self.max_backoff}) must be >= initial_backoff "
                f"({self.initial_backoff})"
            )
        if not self.backoff_multiplier >= 1:
            raise ValueError(f"backoff_multiplier must be >= 1, got {self.backoff_multiplier}")
        if not 1 <= self.throttle_max_tokens <= 1000:
            raise ValueError(
                f"throttle_max_tokens must be in 1..1000, got {self.throttle_max_tokens}"
            )
        if not self.throttle_token_ratio > 0:
            raise ValueError(f"throttle_token_ratio must be > 0, got {self.throttle_token_ratio}")


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """How a channel is configured; the defaults match the server's."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest message sent or received, in bytes (the server's ``max_message_bytes``)."""
    keepalive_time: float = 60.0
    """Seconds between keepalive pings while calls are open (none are sent when idle)."""
    keepalive_timeout: float = 20.0
    """Seconds to wait for a ping's answer before the connection is considered dead."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    """Retries of UNAVAILABLE calls."""
    retry_buffer_bytes: int = 16 * MiB
    """Request bytes kept per call so it can be retried; larger requests are not retried."""
    health_check: bool = True
    """Send calls only to replicas whose grpc.health.v1 status is SERVING: a replica that
    is still loading its model or draining for shutdown gets no new calls."""

    def __post_init__(self) -> None:
        if not self.max_message_bytes >= 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if not self.keepalive_time >= 1:
            raise ValueError(f"keepalive_time must be >= 1 second, got {self.keepalive_time}")
        if not self.keepalive_timeout > 0:
            raise ValueError(f"keepalive_timeout must be > 0 seconds, got {self.keepalive_timeout}")
        if not self.retry_buffer_bytes >= 0:
            raise ValueError(f"retry_buffer_bytes must be >= 0, got {self.retry_buffer_bytes}")


def channel_target(target: str | Sequence[str]) -> str:
    """The gRPC target for one target string or a list of replica addresses.

    A string is used as it is: ``host:port`` (resolved by DNS, every address
    used), ``dns:///name:port``, ``ipv4:...``, ``unix:...`` and so on. A list
    of ``ip:port`` addresses (IPv6 as ``[ip]:port``), all of one family,
    becomes ``ipv4:a:p,b:p`` or ``ipv6:[a]:p,[b]:p``. Host names cannot be
    listed (gRPC has no multi-name target): give one DNS name that resolves to
    every replica instead.
    """
    if isinstance(target, str):
        if not target.strip():
            raise ValueError("the target must not be empty (e.g. 'localhost:8500')")
        return target
    addresses = list(target)
    if not addresses:
        raise ValueError("the list of target addresses must not be empty")
    if len(addresses) == 1:
        return channel_target(addresses[0])
    parsed = [_parse_ip_address(address) for address in addresses]
    versions = {ip.version for ip, _ in parsed}
    if len(versions) > 1:
        raise ValueError(
            f"the target addresses {addresses} mix IPv4 and IPv6; gRPC can balance over "
            "several addresses of one family only"
        )
    if versions == {4}:
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in parsed)
    return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in parsed)


def _parse_ip_address(address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"target address {address!r} must be 'ip:port' (IPv6: '[ip]:port')")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise ValueError(
            f"target address {address!r} is not an IP address and port: a list of targets "
            "must hold IP addresses (gRPC has no multi-name target); for host names give one "
            "name that resolves to every replica, e.g. 'dns:///digitserve:8500'"
        ) from None
    if ip.version == 6 and not bracketed:
        raise ValueError(f"IPv6 target address {address!r} must be written '[ip]:port'")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"target address {address!r} needs a port in 1..65535")
    return ip, int(port_text)


def service_config(settings: ChannelSettings) -> dict[str, Any]:
    """The gRPC service config: round_robin over healthy replicas, and retries of
    UNAVAILABLE with backoff."""
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if settings.health_check:
        # Client-side health checking: each subchannel watches grpc.health.v1.
        config["healthCheckConfig"] = {"serviceName": ""}
    retry = settings.retry
    if retry.max_attempts > 1:
        config["methodConfig"] = [
            {
                "name": [{"service": service} for service in RETRIED_SERVICES],
                "retryPolicy": {
                    "maxAttempts": retry.max_attempts,
                    "initialBackoff": _duration(retry.initial_backoff),
                    "maxBackoff": _duration(retry.max_backoff),
                    "backoffMultiplier": retry.backoff_multiplier,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
        config["retryThrottling"] = {
            "maxTokens": retry.throttle_max_tokens,
            "tokenRatio": retry.throttle_token_ratio,
        }
    return config


def _duration(seconds: float) -> str:
    """Seconds in the JSON form of ``google.protobuf.Duration`` ("0.1s", "2s")."""
    text = f"{seconds:.9f}".rstrip("0").rstrip(".")
    return f"{text}s"


def channel_options(settings: ChannelSettings | None = None) -> list[tuple[str, str | int]]:
    """The channel arguments for ``grpc.insecure_channel`` / ``grpc.aio.secure_channel`` & co."""
    settings = settings or ChannelSettings()
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", round(settings.keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", round(settings.keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.enable_retries", 1),
        ("grpc.per_rpc_retry_buffer_size", settings.retry_buffer_bytes),
        ("grpc.service_config", json.dumps(service_config(settings), separators=(",", ":"))),
        # Our service config is the one in force, whatever DNS TXT records say.
        ("grpc.service_config_disable_resolution", 1),
        ("grpc.primary_user_agent", f"digitserve-client/{_version()}"),
    ]


def _version() -> str:
    try:
        return metadata.version("digitserve")
    except metadata.PackageNotFoundError:
        return "unknown"


def create_channel(
    target: str | Sequence[str],
    settings: ChannelSettings | None = None,
    *,
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.Channel:
    """A blocking-API channel to ``target`` (TLS when ``credentials`` are given)."""
    uri = channel_target(target)
    options = channel_options(settings)
    if credentials is None:
        return grpc.insecure_channel(uri, options=options)
    return grpc.secure_channel(uri, credentials, options=options)


def create_aio_channel(
    target: str | Sequence[str],
    settings: ChannelSettings | None = None,
    *,
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to ``target``; create it inside the event loop that will use it."""
    uri = channel_target(target)
    options = channel_options(settings)
    if credentials is None:
        return grpc.aio.insecure_channel(uri, options=options)
    return grpc.aio.secure_channel(uri, credentials, options=options)
