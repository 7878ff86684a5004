"""Encoded images in the served graph, and in the export's self-check.

:func:`decode_image` is the ``predict_images`` signatures' decoder: any JPEG, PNG, GIF or
BMP to the 48x48 gray face ingest would make of it (Pillow's pixels, for JPEG exactly).
:func:`png_bytes` and :func:`jpeg_bytes_and_pixels` encode real faces to test it with.
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow as tf
from PIL import Image

from serving.contract import IMAGE_SIZE


def _decode_jpeg_gray(data: tf.Tensor) -> tf.Tensor:
    # libjpeg's accurate integer DCT, straight to gray (its Y channel): the pixels Pillow
    # gives ingest (``draft("L")``), exactly; TensorFlow's default fast DCT differs from them
    # by 2 grey levels on average and up to 20.
    img = tf.io.decode_jpeg(data, channels=1, dct_method="INTEGER_ACCURATE")
    return tf.cast(img, tf.float32)


def _decode_other_gray(data: tf.Tensor) -> tf.Tensor:
    img = tf.io.decode_image(data, channels=0, expand_animations=False)
    img = tf.image.convert_image_dtype(img, tf.float32) * 255.0  # uint8 or uint16 -> 0-255
    channels = tf.shape(img)[-1]
    return tf.case(
        [(channels == 1, lambda: img[..., :1]), (channels == 2, lambda: img[..., :1])],
        default=lambda: tf.image.rgb_to_grayscale(img[..., :3]),  # ITU-R 601 luma, like Pillow
    )


def decode_image(data: tf.Tensor) -> tf.Tensor:
    """One encoded image (JPEG, PNG, GIF, BMP; any size, colour or gray) -> float32
    [48,48,1] gray, values 0-255: the pixels ingest's Pillow path gives for it."""
    gray = tf.cond(tf.io.is_jpeg(data), lambda: _decode_jpeg_gray(data),
                   lambda: _decode_other_gray(data))
    gray.set_shape([None, None, 1])
    size = tf.shape(gray)[:2]
    return tf.cond(
        tf.reduce_all(size == IMAGE_SIZE),
        lambda: gray,
        lambda: tf.image.resize(gray, [IMAGE_SIZE, IMAGE_SIZE], method="bilinear", antialias=True),
    )


def png_bytes(face: np.ndarray) -> bytes:
    """A uint8 grayscale face [48, 48] encoded as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(face).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes_and_pixels(face: np.ndarray, quality: int = 90) -> tuple[bytes, np.ndarray]:
    """A uint8 grayscale face [48, 48] encoded as JPEG bytes, and the pixels Pillow decodes
    from them the way ingest does (lossy: not the face itself)."""
    buf = io.BytesIO()
    Image.fromarray(face).save(buf, format="JPEG", quality=quality)
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        img.draft("L", img.size)
        return buf.getvalue(), np.asarray(img.convert("L"), dtype=np.uint8)
