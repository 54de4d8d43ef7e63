"""VOC07 AP against hand-computed cases; the COCO path against pycocotools run on the same fixture as files."""

import contextlib
import io
import json

import numpy as np
import pytest

from trainers.detection import metrics

TOP_LEFT, BOTTOM_RIGHT, WHOLE = [0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0, 0, 1, 1]


def test_voc07_eleven_point_ap_by_hand():
    ev = metrics.DetectionEvaluator(["cat", "dog", "cow"])
    # Image a: a cat and a difficult cat; image b: one cat covering the image, and a dog.
    ev.add("a", 100, 100, [TOP_LEFT, BOTTOM_RIGHT], [0, 0], [False, True], [], [], [])
    ev.add("b", 100, 100, [WHOLE, TOP_LEFT], [0, 1], [False, False], [], [], [])
    # Cat detections by score: TP on a's cat, on the difficult one (ignored), a duplicate (FP),
    # TP on b's cat, and one on nothing (FP).
    ev.detections[0] = (np.array([TOP_LEFT, BOTTOM_RIGHT, TOP_LEFT]), np.array([0.9, 0.8, 0.7]), np.array([0, 0, 0]))
    ev.detections[1] = (
        np.array([WHOLE, [0.9, 0.9, 0.95, 0.95], WHOLE]),
        np.array([0.6, 0.5, 0.4]),
        np.array([0, 0, 2]),
    )
    # recall 0.5, 0.5, 0.5, 1, 1 and precision 1, 1, 0.5, 2/3, 0.5: 6 points at 1, 5 at 2/3.
    ap, npos = ev.class_ap(0)
    assert npos == 2
    assert ap == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    # The dog was never detected: AP 0. No cow exists: no AP, and not in the mean (its FP is harmless).
    result = ev.voc()
    assert result["AP@0.5"]["dog"] == 0.0 and np.isnan(result["AP@0.5"]["cow"])
    assert result["mAP@0.5"] == pytest.approx((6 + 5 * 2 / 3) / 11 / 2)
    # VOC2010+ area: 0.5 * 1 + 0.5 * 2/3.
    area = metrics.DetectionEvaluator(["cat", "dog", "cow"], use_07_metric=False)
    area.images, area.ground_truth, area.detections = ev.images, ev.ground_truth, ev.detections
    assert area.class_ap(0)[0] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_voc_overlap_must_exceed_half_and_perfect_detections_score_one():
    ev = metrics.DetectionEvaluator(["cat"])
    ev.add("a", 10, 10, [WHOLE], [0], [False], [[0, 0, 0.5, 1]], [0.9], [0])  # IoU exactly 0.5: a FP
    assert ev.voc()["mAP@0.5"] == 0.0
    ev = metrics.DetectionEvaluator(["cat"])
    ev.add("a", 10, 10, [WHOLE], [0], None, [[0, 0, 0.55, 1]], [0.9], [0])
    assert ev.voc()["mAP@0.5"] == 1.0
    assert metrics.voc_ap([0.5, 1.0], [1.0, 0.5]) == pytest.approx((6 + 5 * 0.5) / 11)
    np.testing.assert_allclose(metrics.iou_matrix([[0, 0, 2, 2]], [[1, 1, 3, 3], [5, 5, 5, 5]]), [[1 / 7, 0]])


def _fixture():
    """Two images, two classes; detections: exact, IoU ~0.62, a miss, a FP, one on a difficult box."""
    ev = metrics.DetectionEvaluator(["cat", "dog"])
    ev.add(
        "a",
        200,
        100,
        [[0.1, 0.1, 0.3, 0.3], [0.5, 0.2, 0.9, 0.9], [0.0, 0.0, 0.05, 0.1]],
        [0, 1, 0],
        [False, False, True],
        [[0.1, 0.1, 0.3, 0.3], [0.5, 0.2, 0.9, 0.634], [0.0, 0.0, 0.05, 0.1], [0.6, 0.0, 0.7, 0.1]],
        [0.9, 0.8, 0.7, 0.3],
        [0, 1, 0, 1],
    )
    ev.add("b", 100, 100, [[0.2, 0.2, 0.8, 0.8]], [1], [False], [[0.2, 0.2, 0.8, 0.8]], [0.6], [0])
    return ev


def test_coco_numbers_are_pycocotools_on_the_same_data_as_files(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ev = _fixture()
    ours = ev.coco()
    truth, results = ev.coco_dicts()
    # The conversion by hand: image a is 200 high and 100 wide; COCO boxes are x, y, width, height.
    assert truth["annotations"][0]["bbox"] == pytest.approx([10, 20, 20, 40])
    assert truth["annotations"][0]["area"] == pytest.approx(800)
    assert [a["iscrowd"] for a in truth["annotations"]] == [0, 0, 1, 0]
    assert results[1] == {"image_id": 1, "category_id": 2, "bbox": pytest.approx([20, 100, 43.4, 80]), "score": 0.8}
    (tmp_path / "gt.json").write_text(json.dumps(truth))
    (tmp_path / "dt.json").write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "gt.json"))
        direct = COCOeval(gt, gt.loadRes(str(tmp_path / "dt.json")), "bbox")
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
    for name, value in zip(metrics.COCO_NAMES, direct.stats, strict=True):
        assert ours[name] == pytest.approx(value) if value >= 0 else np.isnan(ours[name]), name
    # Known values: cat found exactly (the difficult one ignored): AP 1 at every threshold. Dog: the
    # IoU 0.62 hit counts at 0.5, 0.55, 0.6 and image b's dog is missed: recall 1/2 there, 0 above.
    assert ours["AP per class"]["cat"] == pytest.approx(1.0)
    assert ours["AP per class"]["dog"] == pytest.approx(3 / 10 * 51 / 101)
    assert ours["AP50"] == pytest.approx((1 + 51 / 101) / 2)
    assert "Average Precision" in ours["summary"]


def test_add_batch_trims_padding_and_empty_inputs_give_zero_or_nan():
    batch = {
        "image_id": np.array([b"a", b"b"]),
        "height": np.array([10, 10]),
        "width": np.array([10, 10]),
        "boxes": np.array([[WHOLE, [0, 0, 0, 0]], [TOP_LEFT, BOTTOM_RIGHT]], np.float32),
        "classes": np.array([[0, -1], [0, 0]]),
        "difficult": np.zeros((2, 2), bool),
        "num_boxes": np.array([1, 2]),
        "detection_boxes": np.array([[WHOLE, WHOLE], [TOP_LEFT, WHOLE]], np.float32),
        "detection_scores": np.array([[0.9, 0.0], [0.8, 0.0]], np.float32),
        "detection_classes": np.array([[0, 0], [0, 0]]),
        "num_detections": np.array([1, 1]),
    }
    ev = metrics.DetectionEvaluator(["cat"])
    ev.add_batch(batch)
    assert len(ev) == 2 and ev.images[0] == ("a", 10, 10) and len(ev.ground_truth[0][0]) == 1
    # 3 cats, 2 found with precision 1: recall 2/3 -> 7 of 11 points at 1.
    assert ev.voc()["mAP@0.5"] == pytest.approx(7 / 11)
    empty = metrics.DetectionEvaluator(["cat"])
    empty.add("a", 10, 10, [WHOLE], [0], None, [], [], [])
    assert empty.coco()["AP"] == 0.0 and empty.voc()["mAP@0.5"] == 0.0
