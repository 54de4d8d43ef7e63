"""ImageNet as TFRecord shards in the TF Model Garden schema (labels 1..1000, JPEG bytes, optional boxes)."""

import os

import numpy as np
import tensorflow as tf

from trainers.data.base import Source, class_names_for
from trainers.data.errors import DataError
from trainers.data.pipeline import Stream

SHARD_PATTERNS = {"train": "train-*-of-*", "validation": "validation-*-of-*"}
DEFAULT_CLASSES = 1000
SHUFFLE_BUFFER = 10_000  # serialized records, not decoded images: ~1 GB for ImageNet
CYCLE_LENGTH = 16
READ_BUFFER = 8 << 20
LAYOUT = (
    "expected DIR/train-00000-of-01024 ... and DIR/validation-00000-of-00128 TFRecord shards in the TF Model "
    "Garden ImageNet schema (image/encoded JPEG bytes, image/class/label int64 1..1000)"
)
BOX_KEYS = ("ymin", "xmin", "ymax", "xmax")
FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
    **{f"image/object/bbox/{k}": tf.io.VarLenFeature(tf.float32) for k in BOX_KEYS},
}


def _parse(serialized):
    """Model Garden record -> example dict; labels shifted from 1-based to 0-based."""
    features = tf.io.parse_single_example(serialized, FEATURES)
    boxes = [tf.sparse.to_dense(features[f"image/object/bbox/{k}"]) for k in BOX_KEYS]
    return {
        "data": features["image/encoded"],
        "label": features["image/class/label"] - 1,
        "name": features["image/filename"],
        "bbox": tf.stack(boxes, axis=1),
    }


class TFRecordSource(Source):
    """Shards are shuffled and dealt to input pipelines by file; records are shuffled in a buffer.

    DIR may be local or anything tf.io.gfile reads (gs://...).
    """

    def __init__(self, root, *, num_classes=None):
        spec = f"tfrecord:{root}"
        gfile = tf.io.gfile  # so gs:// buckets work as well as local disks
        if not gfile.isdir(root):
            problem = "is not a directory" if gfile.exists(root) else "does not exist"
            raise DataError(f"{spec}: {root} {problem}; {LAYOUT}")
        self._shards = {split: sorted(gfile.glob(os.path.join(root, p))) for split, p in SHARD_PATTERNS.items()}
        if not self._shards["train"] and not self._shards["validation"]:
            found = sorted(gfile.listdir(root))[:5]
            raise DataError(f"{spec}: no train-*-of-* or validation-*-of-* shards in {root} (found {found}); {LAYOUT}")
        classes = DEFAULT_CLASSES if num_classes is None else num_classes
        super().__init__(spec, class_names_for([], classes, spec))
        self.label_hint = f"the Model Garden schema stores labels 1..{classes} (image/class/label) in {root}"
        self._check_first_record()

    def _check_first_record(self):
        """Catches the common wrong schema (0-based labels, missing features) before training starts."""
        first = next(files[0] for files in self._shards.values() if files)
        try:
            record = next(iter(tf.data.TFRecordDataset(first).take(1)), None)
            if record is None:
                return
            label = int(_parse(record)["label"]) + 1
        except (tf.errors.OpError, ValueError) as e:
            message = getattr(e, "message", str(e)).splitlines()[0]
            raise DataError(
                f"{self.spec}: first record of {first} is not a Model Garden example ({message}); {LAYOUT}"
            ) from None
        if not 1 <= label <= self.num_classes:
            raise DataError(
                f"{self.spec}: first record of {first} has image/class/label {label}, outside "
                f"1..{self.num_classes}; {LAYOUT}. For 0-based labels or another class count, convert the "
                "shards or pass num_classes."
            )

    def _require(self, split):
        if not self._shards[split]:
            raise DataError(f"{self.spec}: no {SHARD_PATTERNS[split]} shards for the {split} split; {LAYOUT}")

    def _count(self, split):
        files = self._shards[split]
        if not files:
            return 0
        records = tf.data.TFRecordDataset(
            files, buffer_size=READ_BUFFER, num_parallel_reads=min(len(files), CYCLE_LENGTH)
        )
        try:
            return int(records.reduce(np.int64(0), lambda n, _: n + 1))
        except tf.errors.OpError as e:
            raise DataError(f"{self.spec}: cannot read the {split} shards: {e.message}") from None

    def _stream(self, request):
        files = np.array(self._shards[request.split])
        if request.shuffle:
            files = files[np.random.default_rng(request.shuffle_seed).permutation(len(files))]
        by_file = len(files) >= request.num_pipelines
        if by_file:
            files = files[request.pipeline_id :: request.num_pipelines]
        records = tf.data.Dataset.from_tensor_slices(files).interleave(
            lambda f: tf.data.TFRecordDataset(f, buffer_size=READ_BUFFER),
            cycle_length=min(len(files), CYCLE_LENGTH),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        if not by_file:
            records = records.shard(request.num_pipelines, request.pipeline_id)
        if request.shuffle:
            records = records.shuffle(SHUFFLE_BUFFER, seed=request.shuffle_seed + request.pipeline_id)
        split = request.split
        return Stream(records, _parse, lambda i: f"{self.spec} {split} record #{i}")
