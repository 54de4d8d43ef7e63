"""tf.data input pipelines: ImageNet (TFRecord, folders, tfds), CIFAR (tfds), digits and synthetic data.

    source = open_source("folder:/data/imagenet", validation_split=0)
    ds = source.dataset("train", global_batch_size=256, image_size=224, augment="scale", training=True)

Every source yields float32 RGB images in 0..255 (the engine normalises) and int32 labels, skips and counts
unreadable images (source.bad_images), and raises DataError with the expected layout for bad paths.
"""

import os

from trainers.data.augment import AUGMENTATIONS, eval_short_side, ten_crop, ten_crop_batch
from trainers.data.bad_images import BadImages
from trainers.data.base import SPLITS, Source
from trainers.data.errors import DataError
from trainers.data.folder import FolderSource
from trainers.data.synthetic import SyntheticSource
from trainers.data.tfrecord import TFRecordSource

SPECS = ("tfds:NAME", "tfrecord:DIR", "folder:DIR", "digits", "synthetic")

__all__ = [
    "AUGMENTATIONS",
    "SPECS",
    "SPLITS",
    "BadImages",
    "DataError",
    "Source",
    "eval_short_side",
    "open_source",
    "ten_crop",
    "ten_crop_batch",
]


def _directory(kind, rest, data_dir):
    """DIR of 'kind:DIR', falling back to data_dir so 'folder:' plus --data-dir works too."""
    path = rest or data_dir
    if not path:
        raise DataError(f"{kind}: needs a directory, as '{kind}:DIR' or with data_dir")
    return os.path.expanduser(path)


def open_source(
    spec, *, data_dir=None, validation_split=0, num_classes=None, seed=0, download=False, num_examples=None
):
    """The data source named by `spec`, checked enough to fail now rather than hours into training.

    validation_split (a count, or a fraction below 1) holds that part of train out for validation: needed
    for folders without train/ and validation/ subfolders, optional for tfds, 297 by default for digits.
    num_classes, when given, must cover the data set's classes; a larger value pads class_names.
    The held-out part never depends on `seed` (the training seed): only synthetic data is made from it.
    num_examples ("train=1281167,validation=50000", either split alone) gives tfrecord:DIR record counts when
    DIR has no valid count file (see trainers.data.counts); other sources know their sizes and refuse it.
    """
    if not isinstance(spec, str):
        raise DataError(f"data spec must be a string, one of {', '.join(SPECS)}; got {spec!r}")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise DataError(f"num_classes must be a positive int or None, got {num_classes!r}")
    kind, _, rest = spec.partition(":")
    if num_examples is not None and kind != "tfrecord":
        raise DataError(
            f"num_examples={num_examples!r} applies to tfrecord:DIR only; {spec} knows its own size "
            "(folders list their files, tfds stores its split sizes). Leave --num-examples out."
        )
    if kind == "tfds":
        from trainers.data.tfds_source import TFDSSource  # importing tensorflow_datasets costs seconds

        return TFDSSource(
            rest,
            data_dir=data_dir,
            validation_split=validation_split,
            num_classes=num_classes,
            seed=seed,
            download=download,
        )
    if kind == "tfrecord":
        return TFRecordSource(_directory(kind, rest, data_dir), num_classes=num_classes, num_examples=num_examples)
    if kind == "folder":
        return FolderSource(
            _directory(kind, rest, data_dir),
            validation_split=validation_split,
            num_classes=num_classes,
        )
    if spec == "digits":
        from trainers.data.digits import DigitsSource  # importing scikit-learn costs a second

        return DigitsSource(validation_split=validation_split, num_classes=num_classes)
    if spec == "synthetic":
        return SyntheticSource(num_classes=num_classes, seed=seed)
    raise DataError(f"Unknown data spec {spec!r}. Valid forms: {', '.join(SPECS)}")
