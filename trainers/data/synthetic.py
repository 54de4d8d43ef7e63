"""Random images and labels: for smoke tests and input-bound benchmarks, no files at all."""

import numpy as np
import tensorflow as tf

from trainers.data.base import Source, class_names_for
from trainers.data.pipeline import Stream, derive_seed
from trainers.data.splits import epoch_order

TRAIN_EXAMPLES = 1024
VALIDATION_EXAMPLES = 256
DEFAULT_CLASSES = 10


class SyntheticSource(Source):
    """Uniform random uint8-range pixels made on the fly at the requested size; the same for the same seed."""

    def __init__(self, *, num_classes=None, seed=0):
        classes = DEFAULT_CLASSES if num_classes is None else num_classes
        super().__init__("synthetic", class_names_for([], classes, "synthetic"))
        self._seed = seed
        counts = {"train": TRAIN_EXAMPLES, "validation": VALIDATION_EXAMPLES}
        self._labels = {
            split: np.random.default_rng(derive_seed(seed, split, "labels")).integers(0, classes, n)
            for split, n in counts.items()
        }

    def _count(self, split):
        return len(self._labels[split])

    def _stream(self, request):
        split, size = request.split, request.image_size
        ids = epoch_order(self._count(split), request)
        labels = tf.constant(self._labels[split], tf.int64)
        image_seed = derive_seed(self._seed, split, "images")

        def parse(index):
            seed = tf.stack([tf.constant(image_seed, tf.int64), index])
            pixels = tf.random.stateless_uniform([size, size, 3], seed, 0, 256, dtype=tf.int32)
            return {
                "image": tf.cast(pixels, tf.uint8),
                "label": tf.gather(labels, index),
                "name": tf.strings.format("synthetic {} #{}", (split, index)),
                "bbox": tf.zeros([0, 4]),
            }

        return Stream(tf.data.Dataset.from_tensor_slices(ids), parse, lambda i: f"synthetic {split} #{ids[i]}")
