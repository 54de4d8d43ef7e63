"""ImageNet as TFRecord shards in the TF Model Garden schema (labels 1..1000, JPEG bytes, optional boxes).

Record counts come from DIR/counts.json, num_examples, the known ImageNet counts or one reading pass, in
that order (trainers.data.counts); the pipelines check them and raise DataError when a split holds more or
fewer records than that.
"""

import os

import numpy as np
import tensorflow as tf

from trainers.data import counts as record_counts
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


def find_shards(root, spec):
    """{split: sorted shard paths} of DIR; DataError with the layout when there are none."""
    gfile = tf.io.gfile  # so gs:// buckets work as well as local disks
    if not gfile.isdir(root):
        problem = "is not a directory" if gfile.exists(root) else "does not exist"
        raise DataError(f"{spec}: {root} {problem}; {LAYOUT}")
    shards = {split: sorted(gfile.glob(os.path.join(root, p))) for split, p in SHARD_PATTERNS.items()}
    if not shards["train"] and not shards["validation"]:
        found = sorted(gfile.listdir(root))[:5]
        raise DataError(f"{spec}: no train-*-of-* or validation-*-of-* shards in {root} (found {found}); {LAYOUT}")
    return shards


class TFRecordSource(Source):
    """Shards are shuffled and dealt to input pipelines by file; records are shuffled in a buffer.

    DIR may be local or anything tf.io.gfile reads (gs://...).
    """

    def __init__(self, root, *, num_classes=None, num_examples=None):
        """num_examples: "train=N,validation=M" (either alone), used when no valid count file exists."""
        spec = f"tfrecord:{root}"
        self._shards = find_shards(root, spec)
        self.root = root
        self._given = record_counts.parse_num_examples(num_examples)
        for split in self._given:
            if not self._shards[split]:
                raise DataError(
                    f"{spec}: num_examples gives a {split} count, but {root} has no {SHARD_PATTERNS[split]} "
                    f"shards; {LAYOUT}"
                )
        self._split_counts = None  # {split: counts.SplitCount}, resolved at the first num_examples()
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

    def record_count(self, split):
        """The split's counts.SplitCount: its total, and where that came from (count file, flag, ...)."""
        self._check_split(split)
        if self._split_counts is None:
            self._split_counts = record_counts.resolve(self.root, self._shards, self._given, self.spec)
        return self._split_counts[split]

    def _count(self, split):
        return self.record_count(split).total

    def _expected(self, request, files, by_file):
        """Records this input pipeline's stream should hold, or None when that share is unknown."""
        count = self.record_count(request.split)
        if not by_file:  # records dealt round-robin
            return len(range(request.pipeline_id, count.total, request.num_pipelines))
        if request.num_pipelines == 1:
            return count.total
        if count.shards is not None:
            return sum(count.shards[os.path.basename(f)] for f in files)
        return None  # num_examples or the ImageNet totals say nothing about a subset of shards

    def _length_check(self, request, files, by_file):
        """The pipeline's check_length callback: DataError when the stream passes or falls short of its count."""
        expected = self._expected(request, files, by_file)
        if expected is None:
            return None
        split, count = request.split, self.record_count(request.split)
        share = (
            f" (input pipeline {request.pipeline_id} of {request.num_pipelines})" if request.num_pipelines > 1 else ""
        )

        def check(seen, ended):
            if seen > expected or (ended and seen < expected):
                message = record_counts.wrong_count_message(
                    self.spec, self.root, split, count, expected, seen, ended, share
                )
                self.count_problem = message
                record_counts.log.error("%s", message)
                raise DataError(message)

        return check

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
        check = self._length_check(request, files, by_file)
        return Stream(records, _parse, lambda i: f"{self.spec} {split} record #{i}", check_length=check)
