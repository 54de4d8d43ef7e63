"""`--data shapes[:N]`: generated detection data, coloured shapes on noise, every box known.

Nothing to download, so tests and the demo can train a detector end to end. Each of the N images (64 by
default, `image_size` pixels square) holds 1-3 shapes that do not overlap: red squares, green discs and
blue triangles, 15-45 % of the image side. The validation split is the training images themselves: the
check this data exists for is whether a detector can learn what it sees (mAP@0.5 near 1), not whether it
generalises.
"""

import numpy as np

from trainers.detection.voc import Report

CLASSES = ("square", "disc", "triangle")
COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 80, 230]], np.float32)
DEFAULT_IMAGES = 64
MAX_SHAPES = 3


def _shape_mask(kind, height, width):
    """A filled shape in an height x width box, as a bool mask."""
    y, x = np.mgrid[0:height, 0:width]
    cy, cx = (height - 1) / 2, (width - 1) / 2
    if kind == 0:
        return np.ones((height, width), bool)
    if kind == 1:
        return ((y - cy) / (height / 2)) ** 2 + ((x - cx) / (width / 2)) ** 2 <= 1.0
    # An upward triangle: apex top centre, base the bottom row.
    half = (y + 1) / height * (width / 2)
    return np.abs(x - cx) <= half


def generate(count, size, seed=0):
    """`count` (image uint8 [size, size, 3], boxes [n, 4] normalised yxyx, classes [n]) tuples."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        image = rng.normal(128, 40, (size, size, 3))
        boxes, classes, taken = [], [], np.zeros((size, size), bool)
        for _ in range(int(rng.integers(1, MAX_SHAPES + 1))):
            for _attempt in range(20):
                h, w = (int(v) for v in rng.integers(int(0.15 * size), int(0.45 * size) + 1, 2))
                top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
                if not taken[top : top + h, left : left + w].any():
                    break
            else:
                continue
            kind = int(rng.integers(len(CLASSES)))
            mask = _shape_mask(kind, h, w)
            region = image[top : top + h, left : left + w]
            region[mask] = COLOURS[kind] + rng.normal(0, 10, (int(mask.sum()), 3))
            taken[top : top + h, left : left + w] = True
            boxes.append([top / size, left / size, (top + h) / size, (left + w) / size])
            classes.append(kind)
        out.append(
            (
                np.clip(image, 0, 255).astype(np.uint8),
                np.array(boxes, np.float32).reshape(-1, 4),
                np.array(classes, np.int32),
            )
        )
    return out


class ShapesSource:
    """The generated images as a detection source: the same interface as trainers.detection.voc.VocSource."""

    def __init__(self, count=DEFAULT_IMAGES, image_size=128, seed=0):
        import tensorflow as tf

        self.source = f"shapes:{count}"
        self.class_names = CLASSES
        self.images = generate(count, image_size, seed)
        self.encoded = [tf.io.encode_png(image).numpy() for image, _, _ in self.images]
        self.size = image_size
        self.reports = {}

    def examples(self, split):
        return len(self.images)

    def max_boxes(self, split):
        return max(len(c) for _, _, c in self.images)

    def table(self, split, max_boxes=None):
        """Columns as VocSource.table, with the PNG bytes under "image" instead of a "path"."""
        max_boxes = max_boxes or self.max_boxes(split)
        n = len(self.images)
        boxes = np.zeros((n, max_boxes, 4), np.float32)
        classes = np.full((n, max_boxes), -1, np.int32)
        counts = np.zeros((n,), np.int32)
        for i, (_, b, c) in enumerate(self.images):
            k = min(len(c), max_boxes)
            boxes[i, :k], classes[i, :k], counts[i] = b[:k], c[:k], k
        return {
            "image": np.array(self.encoded, dtype=object),
            "boxes": boxes,
            "classes": classes,
            "difficult": np.zeros((n, max_boxes), bool),
            "num_boxes": counts,
            "height": np.full((n,), self.size, np.int32),
            "width": np.full((n,), self.size, np.int32),
            "image_id": np.array([f"shape{i:04d}" for i in range(n)]),
        }

    def describe(self, split):
        objects = sum(len(c) for _, _, c in self.images)
        report = Report(f"{self.source} {split}", images=len(self.images), objects=objects)
        return [f"{self.source}: {len(self.images)} generated {self.size}-px images, {objects} shapes "
                f"({', '.join(CLASSES)}); validation is the training images"] + report.lines()[1:]  # fmt: skip
