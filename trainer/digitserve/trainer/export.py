"""Exporting a trained Keras model as the SavedModel the server serves, and reading it back.

The SavedModel has one signature, ``serving_default(images: uint8[N,28,28]) ->
{probabilities: float32[N,10]}``, traced once with a free batch dimension so that the
server never retraces whatever batch size it sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from digitserve.server.repository import (
    EXPECTED_INPUT,
    EXPECTED_OUTPUT,
    INPUT_NAME,
    OUTPUT_NAME,
    SIGNATURE_NAME,
    TensorSpec,
)
from digitserve.trainer.data import IMAGE_SIDE


class ExportError(Exception):
    """The exported SavedModel does not have the serving signature the server requires."""


class _ServingModule(tf.Module):
    """Wraps the model with the serving function; the model's variables are tracked."""

    def __init__(self, model: keras.Model):
        super().__init__(name="digitserve")
        self.model = model
        # No Python control flow to convert: autograph off, so tracing never re-reads
        # this file's source (which fails if the file changed since it was imported).
        self.serve = tf.function(
            self._serve,
            autograph=False,
            input_signature=[
                tf.TensorSpec([None, IMAGE_SIDE, IMAGE_SIDE], tf.uint8, name=INPUT_NAME)
            ],
        )

    def _serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = self.model(images, training=False)
        return {OUTPUT_NAME: tf.cast(probabilities, tf.float32)}


@dataclass(frozen=True)
class ServingSignature:
    """The signature of an exported SavedModel, in the repository's terms."""

    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


def export_saved_model(model: keras.Model, export_dir: Path) -> ExportedModel:
    """Write ``model`` as a SavedModel into ``export_dir``; return it loaded back and checked."""
    module = _ServingModule(model)
    tf.saved_model.save(
        module,
        str(export_dir),
        signatures={SIGNATURE_NAME: module.serve.get_concrete_function()},
    )
    return ExportedModel(export_dir)


class ExportedModel:
    """A SavedModel loaded back, as the server loads it: its serving signature only."""

    def __init__(self, export_dir: Path):
        # Keep the loaded object: it owns the variables the function reads.
        self._loaded = tf.saved_model.load(str(export_dir))
        try:
            self._function = self._loaded.signatures[SIGNATURE_NAME]
        except KeyError:
            raise ExportError(
                f"{export_dir} has no {SIGNATURE_NAME!r} signature "
                f"(it has: {', '.join(self._loaded.signatures) or 'none'})"
            ) from None
        self.signature = _check_signature(self._function)

    def predict(self, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Probabilities float32 [N, 10] for uint8 images [N, 28, 28], computed in batches."""
        outputs = [
            self._function(**{INPUT_NAME: tf.constant(images[start : start + batch_size])})
            for start in range(0, len(images), batch_size)
        ]
        return np.concatenate([output[OUTPUT_NAME].numpy() for output in outputs], axis=0)


def _spec(spec: tf.TensorSpec) -> TensorSpec:
    return TensorSpec(spec.dtype.name, tuple(spec.shape.as_list()))


def _check_signature(function: Any) -> ServingSignature:
    """Read a serving function's signature; raise ExportError unless it is the expected one."""
    _args, kwargs = function.structured_input_signature
    signature = ServingSignature(
        inputs={name: _spec(spec) for name, spec in kwargs.items()},
        outputs={name: _spec(spec) for name, spec in function.structured_outputs.items()},
    )
    expected = ServingSignature({INPUT_NAME: EXPECTED_INPUT}, {OUTPUT_NAME: EXPECTED_OUTPUT})
    if signature != expected:
        raise ExportError(f"exported signature {signature} differs from the expected {expected}")
    return signature
