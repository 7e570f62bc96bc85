"""tf.data input pipelines: shuffling, batching and random affine augmentation.

Augmentation uses stateless random ops keyed by (seed, batch number), so a seed gives
the same sequence of augmented batches however the map is parallelised.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from digitserve.trainer.data import IMAGE_SIDE, NUM_CLASSES

# Random affine transform ranges: rotation in radians (±10°), zoom factor, shift in pixels.
MAX_ROTATION = math.radians(10)
MAX_ZOOM = 0.10
MAX_SHIFT = 2.5


def augment_batch(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Rotate, zoom and shift each uint8 image [N, 28, 28] by its own random amount.

    ``seed`` is a shape-[2] int tensor; the result depends on it and nothing else.
    """
    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, num=4)

    def uniform(i: int, limit: float) -> tf.Tensor:
        return tf.random.stateless_uniform([n], seed=seeds[i], minval=-limit, maxval=limit)

    angle = uniform(0, MAX_ROTATION)
    zoom = 1.0 + uniform(1, MAX_ZOOM)
    shift_x = uniform(2, MAX_SHIFT)
    shift_y = uniform(3, MAX_SHIFT)
    # The transform maps each output pixel (x, y) to the input pixel it samples:
    # rotate and scale about the image centre, then shift.
    cos = tf.cos(angle) / zoom
    sin = tf.sin(angle) / zoom
    centre = (IMAGE_SIDE - 1) / 2
    zeros = tf.zeros_like(angle)
    transforms = tf.stack(
        [
            cos,
            -sin,
            centre - cos * centre + sin * centre - shift_x,
            sin,
            cos,
            centre - sin * centre - cos * centre - shift_y,
            zeros,
            zeros,
        ],
        axis=1,
    )
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images[..., tf.newaxis], tf.float32),
        transforms=transforms,
        output_shape=[IMAGE_SIDE, IMAGE_SIDE],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return tf.cast(tf.clip_by_value(tf.round(warped[..., 0]), 0, 255), tf.uint8)


def training_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    augment: bool,
) -> tf.data.Dataset:
    """Endless batches, reshuffled every epoch, optionally augmented, with one-hot labels.

    Each epoch is ``steps_per_epoch(len(images), batch_size)`` batches, the last one short.
    """
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).repeat()
    # Number the batches across epochs so that each one gets its own augmentation seed.
    numbered = tf.data.Dataset.zip(tf.data.Dataset.counter(), dataset)

    def prepare(step: tf.Tensor, batch: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        batch_images, batch_labels = batch
        if augment:
            batch_images = augment_batch(batch_images, tf.stack([tf.cast(seed, tf.int64), step]))
        return batch_images, tf.one_hot(batch_labels, NUM_CLASSES)

    return numbered.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(
        tf.data.AUTOTUNE
    )


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    return math.ceil(num_images / batch_size)


def evaluation_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Batches in order, one-hot labels, no augmentation."""
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
    return dataset.map(lambda x, y: (x, tf.one_hot(y, NUM_CLASSES))).prefetch(tf.data.AUTOTUNE)
