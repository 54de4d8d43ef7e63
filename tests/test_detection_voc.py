"""voc:DIR on tiny generated VOC folders: boxes as read, bad annotations counted and named, layout errors."""

import io
import logging

import numpy as np
import pytest
from PIL import Image

from trainers.data.errors import DataError
from trainers.detection import voc


def _jpeg(width=8, height=6):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _xml(width, height, objects):
    parts = [f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, box, difficult in objects:
        coords = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True))
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>{coords}</bndbox></object>")
    return "".join(parts) + "</annotation>"


def make_voc(root, images, splits=None, image_files=None):
    """images: {id: xml text}; splits: {split: [ids]} (default train = all); image_files: ids with a JPEG."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    jpeg = _jpeg()
    for image_id, text in images.items():
        if text is not None:
            (root / "Annotations" / f"{image_id}.xml").write_text(text)
        if image_files is None or image_id in image_files:
            (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpeg)
    for split, ids in (splits or {"train": list(images)}).items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def test_boxes_classes_difficult_and_the_dataset(tmp_path):
    images = {
        "000001": _xml(200, 100, [("dog", (1, 1, 100, 50), 0), ("person", (51, 26, 200, 100), 1)]),
        "000002": _xml(40, 80, [("tvmonitor", (11, 21, 30, 60), 0)]),
        "000003": _xml(40, 80, []),
    }
    make_voc(tmp_path / "VOC2007", images, {"train": ["000001", "000002"], "val": ["000003"]})
    source = voc.VocSource(str(tmp_path))  # the parent of VOC2007/, as the tarball unpacks
    assert source.root.endswith("VOC2007") and source.splits() == ["train", "val"]
    records = source.records("train")
    assert [r.image_id for r in records] == ["000001", "000002"]
    first = records[0]
    # 1-based inclusive pixels -> edges [xmin - 1, xmax], normalised yxyx.
    np.testing.assert_allclose(first.boxes, [[0, 0, 0.5, 0.5], [0.25, 0.25, 1, 1]])
    assert first.classes.tolist() == [voc.VOC_CLASSES.index("dog"), voc.VOC_CLASSES.index("person")]
    assert first.difficult.tolist() == [False, True] and (first.height, first.width) == (100, 200)
    np.testing.assert_allclose(records[1].boxes, [[0.25, 0.25, 0.75, 0.75]])
    assert source.examples("val") == 1 and source.records("val")[0].boxes.shape == (0, 4)
    rows = list(source.dataset("train").as_numpy_iterator())
    assert rows[0]["boxes"].shape == (2, 4) and rows[1]["classes"].tolist() == [19, -1]
    assert rows[1]["num_boxes"] == 1 and rows[0]["difficult"].tolist() == [False, True]
    assert rows[0]["image"] == (tmp_path / "VOC2007" / "JPEGImages" / "000001.jpg").read_bytes()
    assert rows[0]["image_id"] == b"000001" and (rows[0]["height"], rows[0]["width"]) == (100, 200)
    assert "1 difficult" in source.describe("train")[0]


def _bad_folder(root, good):
    images = {f"{i:06d}": _xml(50, 50, [("cat", (5, 5, 20, 20), 0)]) for i in range(good)}
    images.update(
        {
            "bad_xml": "<annotation><size>",
            "no_size": "<annotation><object><name>cat</name></object></annotation>",
            "no_image": _xml(50, 50, [("cat", (5, 5, 20, 20), 0)]),
            "no_xml": None,
            "objects": _xml(
                50,
                50,
                [
                    ("dgo", (5, 5, 20, 20), 0),  # unknown class
                    ("cat", (20, 20, 10, 30), 0),  # negative width
                    ("cat", (60, 60, 80, 80), 0),  # entirely outside the 50 x 50 image
                    ("cat", (40, 40, 70, 55), 0),  # partly outside: clipped, kept
                    ("cat", (1, 1, 50, 50), 0),  # fine
                ],
            ),
        }
    )
    files = [i for i in images if i != "no_image"]
    return make_voc(root, images, image_files=files)


def test_bad_annotations_are_skipped_counted_and_named(tmp_path, caplog):
    _bad_folder(tmp_path, good=5)
    source = voc.VocSource(str(tmp_path), threshold=1.0)
    with caplog.at_level(logging.WARNING, logger="trainers.data"):
        records = source.records("train")
    assert [r.image_id for r in records][-1] == "objects" and len(records) == 6
    report = source.reports["train"]
    assert (report.images, report.bad_images) == (10, 4)
    assert (report.objects, report.bad_objects, report.clipped) == (5 + 5, 3, 1)
    np.testing.assert_allclose(records[-1].boxes, [[39 / 50, 39 / 50, 1, 1], [0, 0, 1, 1]])
    text = "; ".join(report.names)
    for expected in (
        "bad_xml.xml (malformed XML",
        "no_size.xml (no positive <size>",
        "no_image.xml (no image JPEGImages/no_image.jpg)",
        "no_xml.xml (no such file)",
        "unknown class 'dgo'",
        "zero or negative area",
        "box outside the 50x50 image",
    ):
        assert expected in text, text
    assert "skipped image Annotations/no_xml.xml" in caplog.text
    # The same folder at the default 1 %: far too many, stop with the numbers and the names.
    with pytest.raises(DataError, match=r"4 of 10 images and 3 of 10 objects .* more than the 1% allowed.*dgo"):
        voc.VocSource(str(tmp_path)).records("train")


def test_one_bad_image_in_two_hundred_is_tolerated(tmp_path):
    images = {f"{i:06d}": _xml(30, 30, [("bird", (2, 2, 9, 9), 0)]) for i in range(200)}
    images["000007"] = "not xml"
    make_voc(tmp_path, images)
    source = voc.VocSource(str(tmp_path))
    assert source.examples("train") == 199 and source.reports["train"].bad_images == 1


def test_layout_errors_name_the_expected_layout(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        voc.VocSource(str(tmp_path / "missing"))
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(DataError, match=r"no Annotations/ directory; expected the PASCAL VOC layout.*ImageSets/Main"):
        voc.VocSource(str(tmp_path))
    make_voc(tmp_path, {"a": _xml(10, 10, [])}, {"train": ["a"], "trainval": ["a"]})
    source = voc.VocSource(str(tmp_path))
    with pytest.raises(DataError, match=r"no ImageSets/Main/val.txt .* \(present: train.txt, trainval.txt\)"):
        source.records("val")
    (tmp_path / "ImageSets" / "Main" / "test.txt").write_text("\n")
    with pytest.raises(DataError, match="lists no image ids"):
        source.records("test")
    make_voc(tmp_path / "two" / "VOC2007", {"a": _xml(10, 10, [])})
    make_voc(tmp_path / "two" / "VOC2012", {"a": _xml(10, 10, [])})
    with pytest.raises(DataError, match="holds 2 VOC folders"):
        voc.VocSource(str(tmp_path / "two"))
