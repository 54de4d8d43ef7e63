"""`--data tfds:voc/2007` or `tfds:coco/2017`: tensorflow-datasets detection data, converted once to the COCO
layout and read by trainers.detection.coco.CocoSource.

The pipeline picks images at random positions of a permutation; a tfds split is a stream. So the first
run writes each image's encoded bytes as they are (no re-encoding) and one instances JSON per split under
`<the data set's tfds folder>/keras_resnet_coco/`; every later run reads those. The JSON is written last
(to a temporary name, then renamed): a conversion cut off half-way is redone, never half-used.
tfds' difficult flags (VOC's `is_difficult`, COCO's `is_crowd`) become COCO `iscrowd`: not trained on,
ignored by the evaluation. Downloads only with --download, as the classification sources.
"""

import json
import logging
import os

import numpy as np

from trainers.data.bad_images import LOGGER_NAME
from trainers.data.errors import DataError

SPLITS = ("train", "validation")
FOLDER = "keras_resnet_coco"
DIFFICULT = ("is_difficult", "is_crowd")

log = logging.getLogger(LOGGER_NAME)


def _image_shape(data):
    """(height, width) of encoded image bytes, reading only the header where the format allows."""
    import tensorflow as tf

    if data[:2] == b"\xff\xd8":
        return tuple(int(v) for v in tf.image.extract_jpeg_shape(data).numpy()[:2])
    return tuple(int(v) for v in tf.io.decode_image(data, channels=3, expand_animations=False).shape[:2])


def _extension(data):
    return ".jpg" if data[:2] == b"\xff\xd8" else ".png" if data[:4] == b"\x89PNG" else ".img"


def convert(builder, root, split):
    """Writes `split` of the prepared `builder` as root/<split>/<n>.<ext> and annotations/instances_<split>.json."""
    import tensorflow_datasets as tfds

    path = os.path.join(root, "annotations", f"instances_{split}.json")
    if os.path.exists(path):
        return
    objects = builder.info.features["objects"]
    names = objects["label"].names
    difficult_key = next((k for k in DIFFICULT if k in objects), None)
    os.makedirs(os.path.join(root, split), exist_ok=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    images, annotations = [], []
    dataset = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    log.warning("%s %s: writing its images and boxes in the COCO layout under %s (once)", builder.name, split, root)
    for number, example in enumerate(dataset.as_numpy_iterator(), start=1):
        data = example["image"]
        height, width = _image_shape(data)
        file_name = f"{number:07d}{_extension(data)}"
        with open(os.path.join(root, split, file_name), "wb") as f:
            f.write(data)
        images.append({"id": number, "file_name": file_name, "height": height, "width": width})
        found = example["objects"]
        hard = found[difficult_key] if difficult_key else np.zeros(len(found["label"]), bool)
        for box, label, crowd in zip(found["bbox"], found["label"], hard, strict=True):
            y1, x1, y2, x2 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": number,
                    "category_id": int(label) + 1,
                    "bbox": [x1 * width, y1 * height, (x2 - x1) * width, (y2 - y1) * height],
                    "iscrowd": int(bool(crowd)),
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(names)]
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    os.replace(path + ".tmp", path)


def open_tfds(name, data_dir=None, download=False):
    """The COCO-layout folder of tfds data set `name` (converting it on first use)."""
    import tensorflow_datasets as tfds

    spec = f"tfds:{name}"
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise DataError(f"{spec}: unknown tensorflow-datasets name {name!r} (e.g. voc/2007, coco/2017)") from None
    features = builder.info.features
    if "objects" not in features or "bbox" not in features["objects"] or "label" not in features["objects"]:
        raise DataError(f"{spec}: not a detection data set (no objects with bbox and label: {list(features)})")
    if download and not builder.is_prepared():
        log.warning("%s: downloading and preparing (needs internet)", spec)
        builder.download_and_prepare()
    root = os.path.join(builder.data_dir, FOLDER)
    try:
        for split in SPLITS:
            convert(builder, root, split)
    except (AssertionError, FileNotFoundError) as error:
        said = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DataError(
            f"{spec}: no prepared data in {builder.data_dir} ({said}). "
            f"Pass --download to fetch it now (needs internet), or `tfds build {name} --data_dir DIR` elsewhere and "
            "--data-dir DIR."
        ) from None
    return root
