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


def configure_threads(intra_op: int, inter_op: int) -> None:
    """Size TensorFlow's thread pools; must run before TensorFlow executes anything."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:
        log.warning("TensorFlow is already initialised; its thread pools keep their sizes")


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
        # Calling the signature with keyword arguments goes through structured-input
        # handling on every call; a concrete function over it takes one flat tensor
        # and costs about half as much per call.
        signature = self._fn
        self._call = tf.function(
            lambda images: signature(**{INPUT_NAME: images})[OUTPUT_NAME],
            input_signature=[tf.TensorSpec([None, 28, 28], tf.uint8, name=INPUT_NAME)],
        ).get_concrete_function()

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
        probs: np.ndarray = self._call(self._tf.constant(images)).numpy()
        return probs

    def close(self) -> None:
        """Drop the graph and variables so their memory can be released."""
        self._call = None
        self._fn = None
        self._loaded = None
        gc.collect()
