"""The server's settings: one typed object, from flags and ``DIGITSERVE_*`` variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from .batching import BatchingConfig
from .versions import VersionPolicy

MiB = 1024 * 1024


def default_batch_threads() -> int:
    """One model runner per two cores (TensorFlow already spreads one call over cores)."""
    return max(1, (os.cpu_count() or 1) // 2)


class ServerSettings(BaseSettings):
    """Settings of ``digitserve-server``; each can be a flag or a ``DIGITSERVE_`` variable."""

    model_config = SettingsConfigDict(
        env_prefix="DIGITSERVE_",
        cli_kebab_case=True,
        cli_prog_name="digitserve-server",
        cli_implicit_flags=True,
        extra="ignore",
        validate_default=True,
    )

    # Network
    host: str = Field("0.0.0.0", description="Address the gRPC server listens on.")
    port: int = Field(8500, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int | None = Field(
        8501, ge=0, le=65535, description="Prometheus /metrics HTTP port; unset disables it."
    )
    metrics_host: str = Field("0.0.0.0", description="Address the metrics endpoint listens on.")
    metrics_enabled: bool = Field(
        True, description="Collect metrics (off: no instrumentation at all, for comparison)."
    )
    low_confidence_threshold: float = Field(
        0.6, gt=0, le=1, description="Predictions below this confidence count as low-confidence."
    )
    max_message_bytes: int = Field(
        64 * MiB, ge=4 * MiB, description="Largest gRPC message accepted or sent, in bytes."
    )
    max_connection_age_seconds: float | None = Field(
        300.0,
        gt=0,
        description="Close client connections after this age so load rebalances over replicas.",
    )
    max_connection_age_grace_seconds: float = Field(
        30.0, ge=0, description="Time an aged-out connection gets to finish its RPCs."
    )

    # Models
    model_repo: Path = Field(Path("models"), description="Model repository folder.")
    default_model: str = Field("mnist", description="Model used when a request names none.")
    version_policy: str = Field(
        "latest:1", description="Versions served per model: 'latest:N', 'all' or 'specific:[1,2]'."
    )
    model_policies: dict[str, str] = Field(
        default_factory=dict,
        description='Per-model version policies overriding version_policy, e.g. {"mnist": "all"}.',
    )
    poll_seconds: float = Field(
        5.0,
        gt=0,
        description="How often the model repository is checked for changes (SIGHUP: now).",
    )

    # Requests
    max_images_per_request: int = Field(
        1024, ge=1, description="Most images one Classify request may carry."
    )
    max_image_bytes: int = Field(
        4 * MiB, ge=1024, description="Largest encoded PNG/JPEG image accepted, in bytes."
    )
    max_stream_in_flight: int = Field(
        1024, ge=1, description="Most unanswered items one ClassifyStream call may have."
    )

    # Batching and compute
    batching: bool = Field(True, description="Batch requests dynamically (off: one call each).")
    max_batch_size: int = Field(128, ge=1, description="Most images in one model call.")
    max_delay_ms: float = Field(
        0.0,
        ge=0,
        description="How long a batch may wait for more items when runners are idle (ms).",
    )
    max_queued_items: int = Field(
        8192, ge=1, description="Images that may wait per model version before rejection."
    )
    batch_threads: int = Field(
        default_factory=default_batch_threads,
        ge=1,
        description="Model runner threads per model version.",
    )
    tf_intra_op_threads: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="TensorFlow threads within one op (one model call).",
    )
    tf_inter_op_threads: int = Field(
        1, ge=1, description="TensorFlow threads running independent ops in parallel."
    )
    preprocess_threads: int = Field(2, ge=1, description="Threads decoding PNG/JPEG images.")

    # Lifecycle
    drain_delay_seconds: float = Field(
        0.0,
        ge=0,
        description="On SIGTERM, time to keep serving while health reports NOT_SERVING.",
    )
    grace_seconds: float = Field(
        20.0, ge=0, description="On SIGTERM, then, time in-flight RPCs get to finish."
    )

    # Logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )
    log_format: Literal["text", "json"] = Field("text", description="Log line format.")

    @model_validator(mode="after")
    def _check_limits(self) -> ServerSettings:
        if self.max_queued_items < self.max_images_per_request:
            raise ValueError(
                f"max_queued_items ({self.max_queued_items}) must be >= "
                f"max_images_per_request ({self.max_images_per_request}), or a full "
                "request could never be queued"
            )
        for policy in [self.version_policy, *self.model_policies.values()]:
            VersionPolicy.parse(policy)
        return self

    def policies(self) -> tuple[VersionPolicy, dict[str, VersionPolicy]]:
        """The default version policy and the per-model ones."""
        return VersionPolicy.parse(self.version_policy), {
            name: VersionPolicy.parse(text) for name, text in self.model_policies.items()
        }

    def batching_config(self) -> BatchingConfig:
        return BatchingConfig(
            max_batch_size=self.max_batch_size,
            max_delay_seconds=self.max_delay_ms / 1000.0,
            max_queued_items=self.max_queued_items,
            threads=self.batch_threads,
            enabled=self.batching,
        )

    @property
    def listen_address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_settings(argv: list[str] | None = None) -> ServerSettings:
    """Settings from flags (``argv``), then ``DIGITSERVE_*`` variables, then defaults."""
    return CliApp.run(ServerSettings, cli_args=argv if argv is not None else [])
