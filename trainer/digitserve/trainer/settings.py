"""The trainer's settings: one typed object read from flags and ``DIGITSERVE_*`` variables.

Fields left unset (``None``) take the value of the chosen architecture's recipe for the
chosen profile (see :mod:`digitserve.trainer.models`); an explicit flag always wins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Profile = Literal["full", "quick"]
ProgressMode = Literal["auto", "rich", "plain", "off"]

_COMMON_CONFIG = SettingsConfigDict(
    env_prefix="DIGITSERVE_",
    use_attribute_docstrings=True,
    cli_kebab_case=True,
    cli_implicit_flags=True,
    cli_hide_none_type=True,
    cli_avoid_json=True,
    extra="ignore",
)


class _DataAndRepository(BaseSettings):
    """Where the data and the model repository are."""

    model_config = _COMMON_CONFIG

    data_dir: Path | None = None
    """Folder with the MNIST IDX files (.gz or plain) or mnist.npz; unset: Keras download."""
    model_repo: Path = Path("models")
    """Root of the model repository to publish into / read from."""
    model_name: str = "mnist"
    """Name of the model in the repository."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Logging level."""

    @field_validator("model_name")
    @classmethod
    def _valid_model_name(cls, value: str) -> str:
        from digitserve.server.repository import RepositoryError, validate_model_name

        try:
            return validate_model_name(value)
        except RepositoryError as exc:
            raise ValueError(str(exc)) from None


class TrainSettings(_DataAndRepository):
    """Train an MNIST classifier, check it, and publish it as the next version.

    (`digitserve-train report --help`: the report of a published version.)
    """

    model_config = SettingsConfigDict(**_COMMON_CONFIG, cli_prog_name="digitserve-train")

    architecture: str = "cnn"
    """Model architecture: cnn, dense128, mlp or mlp-128-32."""
    profile: Profile = "full"
    """Recipe profile: full (best accuracy) or quick (about a minute, for demos)."""
    epochs: int | None = Field(default=None, ge=1)
    """Maximum number of epochs (early stopping may end sooner); unset: from the profile."""
    batch_size: int | None = Field(default=None, ge=1, le=8192)
    """Training batch size; unset: from the profile."""
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    """Peak learning rate of the warm-up + cosine schedule; unset: from the profile."""
    augment: bool | None = None
    """Random shifts, rotations and zoom of training images; unset: from the profile."""
    label_smoothing: float | None = Field(default=None, ge=0, lt=1)
    """Label smoothing of the training loss; unset: from the profile."""
    validation_split: float = Field(default=0.05, gt=0, lt=0.5)
    """Fraction of the training images held out for validation and early stopping."""
    patience: int = Field(default=4, ge=1)
    """Early stopping: epochs without a better validation loss before stopping."""
    seed: int = Field(default=0, ge=0, lt=2**31)
    """Random seed; the same seed and settings give the same model and metrics."""
    train_limit: int | None = Field(default=None, ge=10)
    """Use only the first N training images (for tests and experiments)."""
    min_accuracy: float = Field(default=0.98, ge=0, le=1)
    """Quality gate: refuse to publish below this test accuracy."""
    max_regression: float = Field(default=0.002, ge=0, le=1)
    """Quality gate: refuse to publish if test accuracy is this much below the stable version."""
    report: bool = True
    """Write the evaluation report (JSON, plots, HTML) into the version's report/ folder."""
    progress: ProgressMode = "auto"
    """Progress display: rich bars on a terminal, plain log lines otherwise (auto)."""

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, value: str) -> str:
        from digitserve.trainer.models import ARCHITECTURES

        if value not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {value!r}: choose one of {', '.join(ARCHITECTURES)}"
            )
        return value

    @model_validator(mode="after")
    def _enough_images(self) -> TrainSettings:
        if self.train_limit is not None and round(self.train_limit * self.validation_split) < 1:
            raise ValueError(
                f"train_limit {self.train_limit} with validation_split "
                f"{self.validation_split} leaves no validation images"
            )
        return self


class ReportSettings(_DataAndRepository):
    """Write the evaluation report of a published version into a folder."""

    model_config = SettingsConfigDict(**_COMMON_CONFIG, cli_prog_name="digitserve-train report")

    version: int | None = Field(default=None, ge=1)
    """Version to report on; unset: the latest published version."""
    out: Path | None = None
    """Folder to write the report into; unset: report-<model>-<version> in the current folder."""
