"""Training a model, checking it, and publishing it into the model repository.

:func:`run` is the whole pipeline: read the data, hold out a validation split, train
with early stopping, export the SavedModel into a staging folder, evaluate *that
artifact* on the 10,000 test images, apply the quality gate, write metadata and report,
and publish atomically.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from digitserve.server import repository
from digitserve.trainer import pipeline, provenance
from digitserve.trainer.data import MnistData, load_mnist
from digitserve.trainer.export import export_saved_model
from digitserve.trainer.gate import GateDecision, QualityGateError, check_quality
from digitserve.trainer.metrics import Evaluation
from digitserve.trainer.models import ARCHITECTURES, build_model
from digitserve.trainer.progress import TrainingProgress
from digitserve.trainer.settings import TrainSettings

logger = logging.getLogger(__name__)

REPORT_DIR = "report"
# Share of the training steps spent warming the learning rate up (at most one epoch).
WARMUP_SHARE = 0.1


@dataclass(frozen=True)
class Hyperparameters:
    """Every value that shapes the trained model: settings merged with the profile recipe."""

    architecture: str
    profile: str
    epochs: int
    batch_size: int
    learning_rate: float
    augment: bool
    label_smoothing: float
    validation_split: float
    patience: int
    seed: int
    train_limit: int | None


def resolve_hyperparameters(settings: TrainSettings) -> Hyperparameters:
    """The settings, with each field left unset taken from the architecture's recipe."""
    recipe = ARCHITECTURES[settings.architecture].recipes[settings.profile]

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    return Hyperparameters(
        architecture=settings.architecture,
        profile=settings.profile,
        epochs=pick(settings.epochs, recipe.epochs),
        batch_size=pick(settings.batch_size, recipe.batch_size),
        learning_rate=pick(settings.learning_rate, recipe.learning_rate),
        augment=pick(settings.augment, recipe.augment),
        label_smoothing=pick(settings.label_smoothing, recipe.label_smoothing),
        validation_split=settings.validation_split,
        patience=settings.patience,
        seed=settings.seed,
        train_limit=settings.train_limit,
    )


@dataclass(frozen=True)
class Split:
    """The training images split into the part trained on and the held-out validation part."""

    train_images: np.ndarray
    train_labels: np.ndarray
    validation_images: np.ndarray
    validation_labels: np.ndarray


def split_training_set(
    data: MnistData, validation_split: float, seed: int, limit: int | None = None
) -> Split:
    """Hold out a random ``validation_split`` of the (first ``limit``) training images."""
    images, labels = data.train_images[:limit], data.train_labels[:limit]
    order = np.random.default_rng(seed).permutation(len(images))
    held_out = max(1, round(len(images) * validation_split))
    validation, train = order[:held_out], order[held_out:]
    return Split(images[train], labels[train], images[validation], labels[validation])


@dataclass(frozen=True)
class FitResult:
    model: keras.Model
    history: list[dict[str, float]]
    """One entry per epoch run: loss, accuracy, val_loss, val_accuracy, learning_rate."""
    best_epoch: int
    """1-based epoch whose weights were kept (lowest validation loss)."""


def make_deterministic(seed: int) -> None:
    """Seed Python, numpy, TensorFlow and Keras and make TensorFlow ops deterministic."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _learning_rate_schedule(peak: float, total_steps: int, steps_per_epoch: int) -> Any:
    """Linear warm-up to ``peak``, then cosine decay to 1% of it."""
    warmup = max(1, min(steps_per_epoch, math.ceil(total_steps * WARMUP_SHARE)))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak / 30,
        warmup_target=peak,
        warmup_steps=warmup,
        decay_steps=max(1, total_steps - warmup),
        alpha=0.01,
    )


class _RecordLearningRate(keras.callbacks.Callback):
    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            )


def fit(hp: Hyperparameters, split: Split, progress: str = "auto") -> FitResult:
    """Train a fresh model of ``hp.architecture`` with early stopping on validation loss."""
    make_deterministic(hp.seed)
    model = build_model(hp.architecture)
    steps = pipeline.steps_per_epoch(len(split.train_images), hp.batch_size)
    model.compile(
        optimizer=keras.optimizers.Adam(
            _learning_rate_schedule(hp.learning_rate, hp.epochs * steps, steps)
        ),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=hp.label_smoothing),
        metrics=["accuracy"],
    )
    train = pipeline.training_dataset(
        split.train_images,
        split.train_labels,
        batch_size=hp.batch_size,
        seed=hp.seed,
        augment=hp.augment,
    )
    validation = pipeline.evaluation_dataset(
        split.validation_images, split.validation_labels, batch_size=1000
    )
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=hp.patience, restore_best_weights=True
    )
    logger.info(
        "training %s (%d parameters) on %d images, validating on %d: up to %d epochs of %d steps",
        hp.architecture,
        model.count_params(),
        len(split.train_images),
        len(split.validation_images),
        hp.epochs,
        steps,
    )
    history = model.fit(
        train,
        epochs=hp.epochs,
        steps_per_epoch=steps,
        validation_data=validation,
        shuffle=False,  # the dataset shuffles itself; Keras warns otherwise
        verbose=0,
        callbacks=[
            _RecordLearningRate(),
            early_stopping,
            TrainingProgress(progress, epochs=hp.epochs, steps_per_epoch=steps),
        ],
    )
    epochs = [
        {key: float(values[i]) for key, values in history.history.items()}
        for i in range(len(history.history["loss"]))
    ]
    best = int(np.argmin([epoch["val_loss"] for epoch in epochs])) + 1
    return FitResult(model=model, history=epochs, best_epoch=best)


@dataclass(frozen=True)
class TrainResult:
    """A published version and how it did."""

    model_name: str
    version: int
    version_dir: Path
    test_accuracy: float
    test_loss: float
    metadata: dict[str, Any]
    gate: GateDecision


def build_metadata(
    hp: Hyperparameters,
    *,
    data: MnistData,
    split: Split,
    fitted: FitResult,
    evaluation: Evaluation,
    trained_at: datetime,
    wall_time: float,
) -> dict[str, Any]:
    """The metadata.json of a version, also recorded in its manifest."""
    return {
        "architecture": hp.architecture,
        "trained_at": trained_at.isoformat(timespec="seconds"),
        "test_accuracy": evaluation.accuracy,
        "test_loss": evaluation.loss,
        "test_examples": len(evaluation.labels),
        "validation_accuracy": fitted.history[fitted.best_epoch - 1]["val_accuracy"],
        "training_parameters": {
            **asdict(hp),
            "train_examples": len(split.train_images),
            "validation_examples": len(split.validation_images),
            "epochs_run": len(fitted.history),
            "best_epoch": fitted.best_epoch,
        },
        "parameter_count": int(fitted.model.count_params()),
        "data_source": data.source,
        "data_checksums": dict(data.checksums),
        "library_versions": provenance.library_versions(),
        "code_version": provenance.code_version(),
        "wall_time_seconds": round(wall_time, 1),
        "history": fitted.history,
    }


def run(settings: TrainSettings) -> TrainResult:
    """Train, evaluate, gate and publish a model; return the published version.

    Raises QualityGateError (nothing published) when the model fails the gate, and
    DataError when the data cannot be read.
    """
    started = time.monotonic()
    trained_at = datetime.now(UTC)
    hp = resolve_hyperparameters(settings)
    logger.info("hyperparameters: %s", asdict(hp))
    data = load_mnist(settings.data_dir)
    logger.info(
        "read %d training and %d test images from %s",
        len(data.train_images),
        len(data.test_images),
        data.source,
    )
    split = split_training_set(data, hp.validation_split, hp.seed, hp.train_limit)
    fitted = fit(hp, split, settings.progress)

    with repository.staging_dir(settings.model_repo, settings.model_name) as staged:
        exported = export_saved_model(fitted.model, staged)
        evaluation = Evaluation(
            labels=data.test_labels.astype(np.int64),
            probabilities=exported.predict(data.test_images),
        )
        logger.info(
            "test accuracy %.4f%% loss %.4f on %d images",
            100 * evaluation.accuracy,
            evaluation.loss,
            len(evaluation.labels),
        )
        decision = check_quality(
            evaluation.accuracy,
            repo=settings.model_repo,
            model=settings.model_name,
            min_accuracy=settings.min_accuracy,
            max_regression=settings.max_regression,
        )
        if not decision.passed:
            raise QualityGateError(decision)
        logger.info(decision.summary())
        metadata = build_metadata(
            hp,
            data=data,
            split=split,
            fitted=fitted,
            evaluation=evaluation,
            trained_at=trained_at,
            wall_time=time.monotonic() - started,
        )
        (staged / repository.METADATA_FILE).write_text(
            json.dumps(metadata, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        if settings.report:
            from digitserve.trainer.report import write_report

            write_report(
                staged / REPORT_DIR,
                evaluation=evaluation,
                images=data.test_images,
                metadata=metadata,
                title=f"{settings.model_name} ({hp.architecture}, {hp.profile} profile)",
            )
        version = repository.publish(
            staged,
            settings.model_repo,
            settings.model_name,
            inputs=exported.signature.inputs,
            outputs=exported.signature.outputs,
            metadata=metadata,
        )
    version_dir = settings.model_repo / settings.model_name / str(version)
    logger.info("published %s version %d in %s", settings.model_name, version, version_dir)
    return TrainResult(
        model_name=settings.model_name,
        version=version,
        version_dir=version_dir,
        test_accuracy=evaluation.accuracy,
        test_loss=evaluation.loss,
        metadata=metadata,
        gate=decision,
    )
