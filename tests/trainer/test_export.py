"""The exported SavedModel's serving signature, as the server will call it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from digitserve.server.repository import INPUT_NAME, OUTPUT_NAME, SIGNATURE_NAME
from digitserve.trainer.train import TrainResult


@pytest.fixture(scope="module")
def serving_function(published: TrainResult) -> Iterator[Any]:
    loaded = tf.saved_model.load(str(published.version_dir))
    yield loaded.signatures[SIGNATURE_NAME]
    del loaded


def test_signature_is_uint8_images_to_float32_probabilities(serving_function: Any) -> None:
    _args, inputs = serving_function.structured_input_signature
    assert list(inputs) == [INPUT_NAME]
    assert inputs[INPUT_NAME].dtype == tf.uint8
    assert inputs[INPUT_NAME].shape.as_list() == [None, 28, 28]
    outputs = serving_function.structured_outputs
    assert list(outputs) == [OUTPUT_NAME]
    assert outputs[OUTPUT_NAME].dtype == tf.float32
    assert outputs[OUTPUT_NAME].shape.as_list() == [None, 10]


@pytest.mark.parametrize("batch", [1, 3, 32, 129])
def test_any_batch_size_gives_probabilities(serving_function: Any, batch: int) -> None:
    images = np.random.default_rng(batch).integers(0, 256, (batch, 28, 28), dtype=np.uint8)
    result = serving_function(**{INPUT_NAME: tf.constant(images)})
    probabilities = result[OUTPUT_NAME].numpy()
    assert probabilities.shape == (batch, 10)
    assert probabilities.dtype == np.float32
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_rejects_other_dtypes(serving_function: Any) -> None:
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        serving_function(**{INPUT_NAME: tf.zeros((2, 28, 28), tf.float32)})
