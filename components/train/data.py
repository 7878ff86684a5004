"""The training step's input pipelines (tf.data): shuffled or class-balanced train batches,
val batches, labels sparse or one-hot."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from components.dataset import FaceDataset
from components.train.recipe import TrainConfig
from serving.contract import NUM_CLASSES

VAL_BATCH = 256


def _batches(ds: tf.data.Dataset, batch_size: int, one_hot: bool,
             num_classes: int = NUM_CLASSES) -> tf.data.Dataset:
    def cast(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if y.dtype.is_floating:  # soft targets already (distillation)
            return tf.cast(x, tf.float32), y
        return tf.cast(x, tf.float32), (tf.one_hot(y, num_classes) if one_hot else y)

    return ds.batch(batch_size).map(cast, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE)


def face_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool,
                 seed: int, one_hot: bool = False, num_classes: int = NUM_CLASSES
                 ) -> tf.data.Dataset:
    """uint8 faces [N,48,48] and their labels -> batches of (float32 [B,48,48,1], labels),
    reshuffled every epoch when ``shuffle``; labels one-hot [B,K] when ``one_hot``; float
    ``labels`` [N,K] (soft targets) pass as they are."""
    ds = tf.data.Dataset.from_tensor_slices((images[..., None], labels))
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    return _batches(ds, batch_size, one_hot, num_classes)


def balanced_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                     one_hot: bool = False, targets: np.ndarray | None = None,
                     num_classes: int = NUM_CLASSES) -> tf.data.Dataset:
    """An endless stream drawing every class present equally often (each class shuffled and
    repeated, then interleaved at random): class balance by sampling, not loss weights.
    Takes and gives what :func:`face_batches` does; ``targets``: soft targets [N,7] to
    yield instead of the labels."""
    classes = np.unique(labels)
    y = labels if targets is None else targets
    streams = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        streams.append(tf.data.Dataset.from_tensor_slices((images[idx, ..., None], y[idx]))
                       .shuffle(len(idx), seed=seed + int(c), reshuffle_each_iteration=True)
                       .repeat())
    ds = tf.data.Dataset.sample_from_datasets(streams, weights=[1.0 / len(classes)] * len(classes),
                                              seed=seed)
    return _batches(ds, batch_size, one_hot, num_classes)


def uses_one_hot(config: TrainConfig) -> bool:
    """Whether the loss takes one-hot or soft targets (label smoothing and distillation
    need them)."""
    return config.label_smoothing > 0 or config.teacher_predictions is not None


def training_batches(config: TrainConfig, train_set: FaceDataset, val_set: FaceDataset,
                     targets: np.ndarray | None = None
                     ) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """The train and val pipelines ``config`` asks for: train shuffled, or class-balanced
    and endless with ``class_balance="sampling"``; val in order. ``targets``: soft train
    targets [N,7] (distillation) in place of the train labels; val keeps its labels."""
    one_hot, k = uses_one_hot(config), train_set.num_classes
    if config.class_balance == "sampling":
        train_ds = balanced_dataset(train_set.images, train_set.labels, config.batch_size,
                                    config.seed, one_hot, targets, k)
    else:
        y = train_set.labels if targets is None else targets
        train_ds = face_batches(train_set.images, y, config.batch_size, True, config.seed,
                                one_hot, k)
    val_ds = face_batches(val_set.images, val_set.labels, VAL_BATCH, False, config.seed,
                          one_hot, k)
    return train_ds, val_ds
