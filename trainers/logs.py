"""TensorBoard writers and the console: what a person watches while a run trains."""

import logging
import math

import numpy as np
import tensorflow as tf

log = logging.getLogger("trainers")


class Board:
    """`DIR/logs/train` and `DIR/logs/validation` writers."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.train = tf.summary.create_file_writer(f"{log_dir}/train")
        self.validation = tf.summary.create_file_writer(f"{log_dir}/validation")

    def scalars(self, writer, step, values):
        with writer.as_default(step=int(step)):
            for name, value in values.items():
                tf.summary.scalar(name, float(value))
        writer.flush()

    def hparams(self, config):
        from tensorboard.plugins.hparams import api as hp

        flat = {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in vars(config).items()}
        with self.train.as_default():
            hp.hparams(flat)
        self.train.flush()

    def image_grid(self, images, step, name="augmented_samples"):
        """Up to 16 augmented training images tiled into one picture (pixels 0..255)."""
        images = np.clip(np.asarray(images)[:16], 0, 255).astype(np.uint8)
        n, h, w, c = images.shape
        side = math.ceil(math.sqrt(n))
        grid = np.zeros((side * h, side * w, c), np.uint8)
        for i, image in enumerate(images):
            r, col = divmod(i, side)
            grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = image
        with self.train.as_default(step=int(step)):
            tf.summary.image(name, grid[None], max_outputs=1)
        self.train.flush()
