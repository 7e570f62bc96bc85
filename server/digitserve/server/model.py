"""A loaded TensorFlow SavedModel behind a numpy-in, numpy-out ``predict``.

This is the only server module that imports TensorFlow.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from .repository import (
    EXPECTED_INPUT,
    EXPECTED_OUTPUT,
    INPUT_NAME,
    OUTPUT_NAME,
    SIGNATURE_NAME,
    ManifestError,
)

log = logging.getLogger(__name__)


class ModelRunner(Protocol):
    """What the batcher needs of a model: uint8 [N,28,28] in, float32 [N,10] out."""

    def predict(self, images: np.ndarray) -> np.ndarray: ...


class SavedModelRunner:
    """Runs the ``serving_default`` signature of a SavedModel. Thread-safe."""

    def __init__(self, path: Path) -> None:
        import tensorflow as tf

        self._tf = tf
        self._loaded = tf.saved_model.load(str(path))
        try:
            self._fn = self._loaded.signatures[SIGNATURE_NAME]
        except KeyError:
            raise ManifestError(
                f"SavedModel has no {SIGNATURE_NAME!r} signature "
                f"(has {sorted(self._loaded.signatures)})"
            ) from None
        self._check_signature()

    def _check_signature(self) -> None:
        tf = self._tf
        _, kwargs = self._fn.structured_input_signature
        outputs = self._fn.structured_outputs
        spec_in = kwargs.get(INPUT_NAME)
        spec_out = outputs.get(OUTPUT_NAME) if isinstance(outputs, dict) else None
        ok = (
            len(kwargs) == 1
            and spec_in is not None
            and spec_in.dtype == tf.as_dtype(EXPECTED_INPUT.dtype)
            and tuple(spec_in.shape.as_list()) == EXPECTED_INPUT.shape
            and spec_out is not None
            and spec_out.dtype == tf.as_dtype(EXPECTED_OUTPUT.dtype)
            and tuple(spec_out.shape.as_list()) == EXPECTED_OUTPUT.shape
        )
        if not ok:
            raise ManifestError(
                f"SavedModel signature {SIGNATURE_NAME!r} is {kwargs} -> {outputs}; expected "
                f"{INPUT_NAME}: uint8[N,28,28] -> {OUTPUT_NAME}: float32[N,10]"
            )

    def predict(self, images: np.ndarray) -> np.ndarray:
        result = self._fn(**{INPUT_NAME: self._tf.constant(images)})[OUTPUT_NAME]
        probs: np.ndarray = result.numpy()
        return probs

    def close(self) -> None:
        """Drop the graph and variables so their memory can be released."""
        self._fn = None
        self._loaded = None
        gc.collect()
