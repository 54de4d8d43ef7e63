"""scikit-learn's 1797 8x8 handwritten digits: a real, learnable data set that needs no download."""

import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits

from trainers.data.base import Source, class_names_for
from trainers.data.pipeline import Stream
from trainers.data.splits import epoch_order, holdout_count, split_indices

SIZE = 32
DEFAULT_VALIDATION = 297  # leaves 1500 for training


def _upscaled_rgb(images):
    """8x8 values 0..16 to 32x32x3 uint8 0..255, so CIFAR-sized networks and augmentation apply."""
    scaled = tf.image.resize(images[..., np.newaxis].astype(np.float32) * (255 / 16), [SIZE, SIZE])
    pixels = np.clip(np.round(scaled.numpy()), 0, 255).astype(np.uint8)
    return np.repeat(pixels, 3, axis=-1)


class DigitsSource(Source):
    """Digits 0-9; validation is the last `validation_split` (default 297) of a fixed shuffle (SPLIT_SEED)."""

    def __init__(self, *, validation_split=0, num_classes=None):
        digits = load_digits()
        super().__init__("digits", class_names_for([str(d) for d in range(10)], num_classes, "digits"))
        self._images = _upscaled_rgb(digits.images)
        self._labels = digits.target.astype(np.int64)
        holdout = holdout_count(validation_split, len(self._labels), "digits", default=DEFAULT_VALIDATION)
        train, validation = split_indices(len(self._labels), holdout)
        self._indices = {"train": train, "validation": validation}

    def _count(self, split):
        return len(self._indices[split])

    def _stream(self, request):
        indices = self._indices[request.split][epoch_order(self._count(request.split), request)]
        images, labels = tf.constant(self._images), tf.constant(self._labels)

        def parse(index):
            return {
                "image": tf.gather(images, index),
                "label": tf.gather(labels, index),
                "name": tf.strings.format("digits #{}", index),
                "bbox": tf.zeros([0, 4]),
            }

        return Stream(tf.data.Dataset.from_tensor_slices(indices), parse, lambda i: f"digits #{indices[i]}")
