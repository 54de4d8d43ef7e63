"""`--data coco:DIR`: the instances JSON read into the VOC source's columns; bad annotations counted and named."""

import json

import numpy as np
import pytest
from PIL import Image

from trainers.data.errors import DataError
from trainers.detection.coco import CocoSource
from trainers.detection.sources import open_source

CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]


def write(root, split, images, annotations):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(exist_ok=True)
    for image in images:
        if image.get("file_name") and not image.get("missing"):
            Image.new("RGB", (image["width"] or 4, image["height"] or 4)).save(root / split / image["file_name"])
    data = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


def fixture(root, bad=0):
    images = [{"id": i, "file_name": f"{i:012d}.png", "height": 40, "width": 80} for i in range(1, 201)]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [8, 4, 40, 20], "iscrowd": 0},  # car
        {"id": 2, "image_id": 1, "category_id": 18, "bbox": [60, 30, 40, 20], "iscrowd": 0},  # clipped to 80x40
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 1},  # a crowd region
    ]
    for k in range(bad):  # unknown categories: bad objects
        annotations.append({"id": 100 + k, "image_id": 3, "category_id": 99, "bbox": [1, 1, 5, 5]})
    write(root, "train2017", images, annotations)
    write(root, "val2017", images[:5], annotations[:1])


def test_coco_boxes_classes_and_crowds_are_read_as_the_voc_columns(tmp_path):
    fixture(tmp_path)
    source = open_source(f"coco:{tmp_path}", 64)
    assert source.class_names == ("person", "car", "dog")  # category id order, 0-based
    table = source.table("train")
    assert len(table["boxes"]) == 200 and source.examples("validation") == 5
    np.testing.assert_allclose(table["boxes"][0][:2], [[4 / 40, 8 / 80, 24 / 40, 48 / 80], [30 / 40, 60 / 80, 1, 1]])
    assert list(table["classes"][0][:2]) == [1, 2] and table["num_boxes"][0] == 2
    assert table["difficult"][1][0] and table["classes"][1][0] == 0  # the crowd: kept, marked, never trained on
    report = source.source.reports["train2017"]
    assert (report.clipped, report.difficult, report.bad_objects, report.empty) == (1, 1, 0, 198)


def test_bad_coco_annotations_are_counted_and_more_than_one_percent_stops(tmp_path):
    fixture(tmp_path / "objects", bad=1)  # 1 bad of 4 objects: over 1 %
    with pytest.raises(DataError, match=r"1 of 4 objects .*annotation 100: unknown category 99"):
        CocoSource(str(tmp_path / "objects")).records("train2017")

    fixture(tmp_path / "images")
    path = tmp_path / "images" / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    data["images"][5]["file_name"] = "nowhere.png"  # 1 of 200 images: skipped, counted, named
    path.write_text(json.dumps(data))
    source = CocoSource(str(tmp_path / "images"))
    assert len(source.records("train2017")) == 199
    report = source.reports["train2017"]
    assert report.bad_images == 1 and "no image train2017/nowhere.png" in report.names[0]

    data["images"][6]["file_name"] = "nowhere2.png"
    data["images"][7]["height"] = 0  # 3 of 200: over 1 %
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"3 of 200 images .*nowhere\.png"):
        CocoSource(str(tmp_path / "images")).records("train2017")


def test_coco_layout_errors_say_what_is_expected(tmp_path):
    with pytest.raises(DataError, match="no annotations/ directory"):
        open_source(f"coco:{tmp_path}", 64)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train2017.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        open_source(f"coco:{tmp_path}", 64)


def fake_voc(self, split, decoders=None, **kwargs):
    """tfds' voc/2007 examples as read with the image undecoded: 6 PNGs with 1-3 boxes each (tfds' own random
    mock gives a Sequence's fields different lengths)."""
    import tensorflow as tf

    def example(i):
        n = i % 3 + 1
        png = tf.io.encode_png(tf.fill([30 + i, 40, 3], tf.constant(i * 20, tf.uint8)))
        boxes = tf.constant([[0.1, 0.2, 0.5, 0.6]] * n) + 0.05 * i
        difficult = tf.constant([k == 1 for k in range(n)])
        return {"image": png, "objects": {"bbox": boxes, "label": tf.range(n, dtype=tf.int64) + i,
                                          "is_difficult": difficult}}  # fmt: skip

    examples = [example(i) for i in range(6)]
    return tf.data.Dataset.from_generator(
        lambda: iter(examples),
        output_signature={
            "image": tf.TensorSpec([], tf.string),
            "objects": {
                "bbox": tf.TensorSpec([None, 4], tf.float32),
                "label": tf.TensorSpec([None], tf.int64),
                "is_difficult": tf.TensorSpec([None], tf.bool),
            },
        },
    )


def test_tfds_voc_is_converted_once_to_the_coco_layout(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(as_dataset_fn=fake_voc, data_dir=str(tmp_path)):  # converted files go there
        source = open_source("tfds:voc/2007", 64, data_dir=str(tmp_path))
        assert len(source.class_names) == 20 and source.class_names[0] == "aeroplane"
        table = source.table("train")
        assert len(table["boxes"]) == 6 and source.examples("validation") == 6
        # Image 4 (index 3): 1 box, label 3, 33 x 40 pixels; its box moved by 0.15.
        np.testing.assert_allclose(table["boxes"][3][0], [0.25, 0.35, 0.65, 0.75], atol=1e-5)
        assert table["classes"][3][0] == 3 and (table["height"][3], table["width"][3]) == (33, 40)
        assert table["difficult"][1].tolist()[:2] == [False, True]  # is_difficult -> ignored, as VOC's own
        converted = list(tmp_path.rglob("instances_train.json"))
        assert len(converted) == 1
        stamp = converted[0].stat().st_mtime_ns
        open_source("tfds:voc/2007", 64, data_dir=str(tmp_path))  # the second start reads what the first wrote
        assert converted[0].stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="not a detection data set"):
        open_source("tfds:mnist", 64, data_dir=str(tmp_path))
