"""Input pipeline: augmentation is seeded, keeps shape, dtype and ink; batches are endless."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from digitserve.trainer.pipeline import augment_batch, steps_per_epoch, training_dataset


def digits(n: int) -> np.ndarray:
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 8:20, 12:16] = 255  # a centred vertical bar
    return images


def test_augmentation_is_a_function_of_the_seed() -> None:
    images = tf.constant(digits(16))
    first = augment_batch(images, tf.constant([1, 2], tf.int64)).numpy()
    again = augment_batch(images, tf.constant([1, 2], tf.int64)).numpy()
    other = augment_batch(images, tf.constant([1, 3], tf.int64)).numpy()
    assert first.dtype == np.uint8 and first.shape == (16, 28, 28)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first[0], first[1])  # each image its own transform
    # Small transforms: the ink stays on the image, roughly as much of it.
    ink = first.astype(np.float64).sum(axis=(1, 2)) / digits(1).astype(np.float64).sum()
    assert np.all((ink > 0.7) & (ink < 1.3))


def test_training_batches_cover_each_epoch_then_repeat() -> None:
    images = digits(10)
    labels = np.arange(10, dtype=np.uint8)
    dataset = training_dataset(images, labels, batch_size=4, seed=0, augment=False)
    assert steps_per_epoch(10, 4) == 3
    batches = list(dataset.take(6).as_numpy_iterator())
    assert [len(x) for x, _ in batches] == [4, 4, 2, 4, 4, 2]
    first_epoch = np.concatenate([y.argmax(axis=1) for _, y in batches[:3]])
    second_epoch = np.concatenate([y.argmax(axis=1) for _, y in batches[3:]])
    assert sorted(first_epoch) == sorted(second_epoch) == list(range(10))
    assert list(first_epoch) != list(second_epoch)  # reshuffled
    assert batches[0][1].shape == (4, 10)  # one-hot labels
