"""Grad-CAM in the exported graph: what the network looked at, served by TF Serving like any
prediction (the ``explain`` signatures of :mod:`serving.contract`).

For each face and each of the seven classes, the gradient of the class's log-probability
with respect to the last convolutional feature map weighs that map's channels (Selvaraju et
al., 2017); the weighted sum, through a ReLU, scaled to [0, 1] and resized to 48x48, is the
heatmap. All seven come back, so a caller shows the predicted class's or any other without
a second request. One network pass and seven gradients per face: an explanation costs a
few predictions, which is why it is a signature of its own.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from serving.contract import IMAGE_SIZE

_POOLING = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.Dropout,
            keras.layers.SpatialDropout2D)


def feature_layer(model: keras.Model) -> keras.layers.Layer | None:
    """The layer whose output Grad-CAM explains: the last top-level layer with a 4-D output
    of more than one channel that is not a pooling or dropout layer (the last conv block's
    activation, or a nested convolutional base). ``None`` for a model without one (an
    ensemble of whole networks)."""
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None)
        shape = getattr(shape, "shape", None)
        if (shape is not None and len(shape) == 4 and (shape[-1] or 0) > 1
                and not isinstance(layer, _POOLING) and not isinstance(layer, keras.layers.InputLayer)):
            return layer
    return None


def gradcam_model(model: keras.Model) -> keras.Model | None:
    """``model`` with the feature map as a second output, or ``None`` when it has none."""
    layer = feature_layer(model)
    if layer is None:
        return None
    return keras.Model(model.inputs, [layer.output, model.output], name="gradcam")


def gradcam(grad_model: keras.Model, pixels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``(probabilities [N,K], heatmaps [N,K,48,48] in [0, 1])`` for ``pixels``, K the
    model's classes."""
    with tf.GradientTape(persistent=True) as tape:
        features, probabilities = grad_model(pixels, training=False)
        scores = tf.math.log(tf.maximum(probabilities, 1e-12))
        num_classes = probabilities.shape[-1]
        per_class = [scores[:, k] for k in range(num_classes)]
    grads = tf.stack([tape.gradient(s, features) for s in per_class], axis=1)  # N,7,h,w,c
    del tape
    weights = tf.reduce_mean(grads, axis=(2, 3))  # N,7,c
    cams = tf.nn.relu(tf.einsum("nhwc,nkc->nkhw", features, weights))
    peak = tf.reduce_max(cams, axis=(2, 3), keepdims=True)
    cams = tf.math.divide_no_nan(cams, peak)
    shape = tf.shape(cams)
    resized = tf.image.resize(tf.reshape(cams, [-1, shape[2], shape[3], 1]),
                              [IMAGE_SIZE, IMAGE_SIZE], method="bilinear")
    heatmaps = tf.reshape(tf.clip_by_value(resized, 0.0, 1.0),
                          [-1, num_classes, IMAGE_SIZE, IMAGE_SIZE])
    return probabilities, heatmaps
