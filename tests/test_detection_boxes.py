"""Boxes, anchors, matching, sampling, NMS and RoIAlign of trainers.detection (tiny tensors, in-process)."""

import math

import numpy as np
import tensorflow as tf

from trainers.detection import anchors, boxes, roi_align


def test_formats_round_trip_and_coco_xywh():
    norm = np.array([[0.1, 0.2, 0.5, 0.6]], np.float32)  # yxyx in [0, 1] of a 100 x 200 image
    absolute = boxes.normalized_to_absolute(norm, 100, 200).numpy()
    np.testing.assert_allclose(absolute, [[10, 40, 50, 120]], rtol=1e-6)
    np.testing.assert_allclose(boxes.absolute_to_normalized(absolute, 100, 200), norm, rtol=1e-6)
    np.testing.assert_allclose(boxes.to_coco_xywh(norm, 100, 200), [[40, 10, 80, 40]], rtol=1e-6)
    np.testing.assert_allclose(boxes.convert(absolute, "yxyx", "xywh"), [[40, 10, 80, 40]], rtol=1e-6)
    np.testing.assert_allclose(boxes.convert(norm, "rel_yxyx", "yxyx", height=100, width=200), absolute, rtol=1e-5)
    np.testing.assert_allclose(boxes.flip_left_right(norm), [[0.1, 0.4, 0.5, 0.8]], rtol=1e-6)


def test_iou_known_values_batched_and_padding():
    a = np.array([[0, 0, 2, 2], [0, 0, 4, 4]], np.float32)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [0, 0, 0, 0]], np.float32)
    got = boxes.iou(a, b).numpy()
    np.testing.assert_allclose(got, [[1 / 7, 1, 0], [4 / 16, 4 / 16, 0]], atol=1e-6)
    batched = boxes.iou(np.stack([a, a]), np.stack([b, b])).numpy()
    np.testing.assert_allclose(batched[1], got, atol=1e-7)
    np.testing.assert_allclose(boxes.area(b), [4, 4, 0])


def test_encode_decode_round_trip_with_weights():
    rng = np.random.default_rng(0)
    anchor = np.array([[10, 20, 50, 100], [0, 0, 16, 16], [30, 30, 130, 80]], np.float32)
    target = anchor + rng.uniform(-5, 5, anchor.shape).astype(np.float32)
    for weights in (boxes.RPN_WEIGHTS, boxes.HEAD_WEIGHTS):
        deltas = boxes.encode(target, anchor, weights)
        np.testing.assert_allclose(boxes.decode(deltas, anchor, weights), target, atol=1e-3)
    # Hand-computed Faster R-CNN deltas (dy, dx, dh, dw): centre moved by 4 px in y on a 40-high anchor.
    one = boxes.encode(np.array([[14, 20, 54, 100]], np.float32), anchor[:1], boxes.HEAD_WEIGHTS).numpy()
    np.testing.assert_allclose(one, [[10 * 4 / 40, 0, 0, 0]], atol=1e-6)
    # Batched boxes against unbatched anchors.
    batched = boxes.encode(np.stack([target, target]), anchor, boxes.HEAD_WEIGHTS)
    assert batched.shape == (2, 3, 4)


def test_decode_clips_the_size_delta_and_clip_bounds_boxes():
    anchor = np.array([[0, 0, 16, 16]], np.float32)
    huge = boxes.decode(np.array([[0, 0, 50.0, 50.0]], np.float32), anchor).numpy()
    np.testing.assert_allclose(huge[0, 2] - huge[0, 0], 1000.0, rtol=1e-4)  # exp(log(1000/16)) * 16
    clipped = boxes.clip(np.array([[-5, 3, 120, 90]], np.float32), 100, 80).numpy()
    np.testing.assert_array_equal(clipped, [[0, 3, 100, 80]])


def test_c4_anchors_are_the_papers_nine_per_location():
    a = anchors.generate(4, 5, anchors.C4_STRIDE).numpy()
    assert a.shape == (4 * 5 * 9, 4)
    first = a[:9]
    # Location (0, 0) centres at (8, 8); scale-major, ratio (h / w) minor: anchor 1 is 128 px, ratio 1.
    np.testing.assert_allclose(first[1], [8 - 64, 8 - 64, 8 + 64, 8 + 64])
    heights, widths = first[:, 2] - first[:, 0], first[:, 3] - first[:, 1]
    np.testing.assert_allclose(np.sqrt(heights * widths), np.repeat([128, 256, 512], 3), rtol=1e-5)
    np.testing.assert_allclose(heights / widths, np.tile([0.5, 1, 2], 3), rtol=1e-5)
    # Next location along x is 16 px to the right; row 1 starts 16 px down.
    np.testing.assert_allclose(a[9:18] - first, np.tile([0, 16, 0, 16], (9, 1)), atol=1e-4)
    np.testing.assert_allclose(a[45:54] - first, np.tile([16, 0, 16, 0], (9, 1)), atol=1e-4)
    assert anchors.feature_size(600, 16) == 38


def test_fpn_anchors_one_scale_per_level():
    sizes = {level: (anchors.feature_size(64, 2**level),) * 2 for level in anchors.FPN_LEVELS}
    per_level = anchors.generate_fpn(sizes)
    assert sorted(per_level) == [2, 3, 4, 5, 6]
    for level, a in per_level.items():
        a = a.numpy()
        assert a.shape == (sizes[level][0] ** 2 * 3, 4)
        side = np.sqrt((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))
        np.testing.assert_allclose(side, 8 * 2**level, rtol=1e-5)
        np.testing.assert_allclose(a[1, :2], [2**level / 2 - 4 * 2**level] * 2, rtol=1e-5)


def test_match_thresholds_ignore_band_and_force_match():
    # 5 anchors x 2 ground-truth boxes (+1 padding); image 2 has no boxes at all.
    iou = np.array(
        [
            [[0.8, 0.1, 0.0], [0.5, 0.2, 0.0], [0.1, 0.35, 0.0], [0.0, 0.0, 0.0], [0.2, 0.6, 0.0]],
            [[0.0, 0.0, 0.0]] * 5,
        ],
        np.float32,
    )
    valid = np.array([[True, True, False], [False, False, False]])
    matched, labels = anchors.match(iou, valid, 0.7, 0.3)
    np.testing.assert_array_equal(labels[0], [1, -1, -1, 0, -1])
    np.testing.assert_array_equal(matched[0], [0, 0, 1, 0, 1])
    np.testing.assert_array_equal(labels[1], [0] * 5)  # no boxes: everything is background
    # Force match: anchor 4 is the best for box 1 (0.6) and becomes positive; box 0's best is already.
    _, forced = anchors.match(iou, valid, 0.7, 0.3, force_match=True)
    np.testing.assert_array_equal(forced[0], [1, -1, -1, 0, 1])
    # The head's rule: fg >= 0.5, bg in [0.1, 0.5), below 0.1 ignored.
    _, head = anchors.match(iou, valid, 0.5, 0.5, negative_lower=0.1)
    np.testing.assert_array_equal(head[0], [1, 1, 0, -1, 1])


def test_balanced_sampling_limits_fraction_and_is_deterministic():
    rng = np.random.default_rng(1)
    labels = rng.choice([1, 0, -1], size=(2, 400), p=[0.1, 0.7, 0.2]).astype(np.int32)
    labels[1, :] = np.where(labels[1] == 1, 0, labels[1])  # image 2: no positives
    seed = tf.constant([3, 4])
    pos, neg = anchors.sample_balanced(labels, 64, 0.25, seed)
    pos, neg = pos.numpy(), neg.numpy()
    assert pos[0].sum() == 16 and neg[0].sum() == 48  # 40 positives available, capped at 16
    assert pos[1].sum() == 0 and neg[1].sum() == 64  # negatives fill the batch
    assert not (pos & neg).any() and (labels[pos] == 1).all() and (labels[neg] == 0).all()
    again = anchors.sample_balanced(labels, 64, 0.25, seed)
    np.testing.assert_array_equal(again[0], pos)
    np.testing.assert_array_equal(again[1], neg)
    other = anchors.sample_balanced(labels, 64, 0.25, tf.constant([5, 6]))
    assert not np.array_equal(other[1].numpy(), neg)
    # Few candidates: everything eligible is taken.
    few = np.array([[1, 0, 0, -1, -1, -1]], np.int32)
    p, n = anchors.sample_balanced(few, 4, 0.5, seed)
    np.testing.assert_array_equal(p[0], [1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(n[0], [0, 1, 1, 0, 0, 0])
    index, sampled = anchors.sample_indices(few, 4, 0.5, seed)
    np.testing.assert_array_equal(sampled[0], [1, 0, 0, -1])
    assert index.numpy()[0, 0] == 0 and sorted(index.numpy()[0, 1:3]) == [1, 2]


def test_nms_class_agnostic_and_per_class():
    b = np.array([[[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 9, 10]]], np.float32)
    s = np.array([[0.9, 0.8, 0.7, 0.95]], np.float32)
    kept, scores, valid = anchors.nms(b, s, max_output_size=3, iou_threshold=0.5)
    assert valid.numpy().tolist() == [2]
    np.testing.assert_allclose(scores[0], [0.95, 0.7, 0.0])
    np.testing.assert_allclose(kept[0, :2], [[0, 0, 9, 10], [20, 20, 30, 30]])
    np.testing.assert_array_equal(kept[0, 2], [0, 0, 0, 0])
    # Two classes: overlapping boxes of different classes both survive.
    per_class = np.array([[[0.9, 0.0], [0.0, 0.8], [0.1, 0.0], [0.85, 0.0]]], np.float32)
    out_b, out_s, out_c, n = anchors.multiclass_nms(b[:, :, None, :], per_class, 10, 5, 0.5, 0.05)
    assert n.numpy().tolist() == [3]
    np.testing.assert_allclose(out_s[0, :3], [0.9, 0.8, 0.1])
    np.testing.assert_array_equal(out_c[0, :3], [0, 1, 0])


def _detectron_roi_align(feature, box, stride, size, ratio):
    """Detectron2's RoIAlign (aligned=True) for one [H, W] map and one box, straight from its C++ loops."""
    h, w = feature.shape

    def bilinear(y, x):
        if y < -1.0 or y > h or x < -1.0 or x > w:
            return 0.0
        y, x = max(y, 0.0), max(x, 0.0)
        y0, x0 = int(y), int(x)
        if y0 >= h - 1:
            y0 = y1 = h - 1
            y = float(y0)
        else:
            y1 = y0 + 1
        if x0 >= w - 1:
            x0 = x1 = w - 1
            x = float(x0)
        else:
            x1 = x0 + 1
        ly, lx = y - y0, x - x0
        return (
            (1 - ly) * (1 - lx) * feature[y0, x0]
            + (1 - ly) * lx * feature[y0, x1]
            + ly * (1 - lx) * feature[y1, x0]
            + ly * lx * feature[y1, x1]
        )

    y1, x1, y2, x2 = (c / stride - 0.5 for c in box)
    bh, bw = (y2 - y1) / size, (x2 - x1) / size
    out = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            samples = [
                bilinear(y1 + i * bh + (a + 0.5) * bh / ratio, x1 + j * bw + (b + 0.5) * bw / ratio)
                for a in range(ratio)
                for b in range(ratio)
            ]
            out[i, j] = np.mean(samples)
    return out


def test_roi_align_matches_crop_and_resize_and_detectron():
    rng = np.random.default_rng(2)
    feature = rng.normal(size=(1, 6, 8, 2)).astype(np.float32)  # stride 16: a 96 x 128 input
    known = np.array([[[16, 16, 64, 96], [0, 0, 96, 128], [-20, 100, 40, 150], [33, 7, 50, 30]]], np.float32)
    got = roi_align.roi_align(feature, known, stride=16, output_size=4, sampling_ratio=2).numpy()
    assert got.shape == (1, 4, 4, 4, 2)
    for r in range(4):
        for c in range(2):
            want = _detectron_roi_align(feature[0, :, :, c], known[0, r], 16, 4, 2)
            np.testing.assert_allclose(got[0, r, :, :, c], want, atol=1e-5)
    # With one sample per bin, the bins of a box inside the map are crop_and_resize's grid points:
    # bin centres at cell coordinates box / stride - 0.5 + (i + 0.5) * bin, normalised by (size - 1).
    box = known[0, 0] / 16 - 0.5
    step = (box[2:] - box[:2]) / 4
    first, last = box[:2] + 0.5 * step, box[:2] + 3.5 * step
    norm = np.concatenate([first, last]) / np.array([5, 7, 5, 7], np.float32)
    want = tf.image.crop_and_resize(feature, norm[None], [0], (4, 4)).numpy()
    one = roi_align.roi_align(feature, known[:, :1], stride=16, output_size=4, sampling_ratio=1).numpy()
    np.testing.assert_allclose(one[0, 0], want[0], atol=1e-5)
    # Under mixed_bfloat16 (the precision a CPU with AVX512-BF16 picks) C4 is bfloat16; crop_and_resize
    # takes no bfloat16, so RoIAlign samples in float32 and hands back bfloat16.
    half = roi_align.roi_align(tf.cast(feature, tf.bfloat16), known, stride=16, output_size=4, sampling_ratio=2)
    assert half.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(half, tf.float32).numpy(), got, atol=0.05)


def test_roi_align_of_a_linear_map_is_the_value_at_bin_centres():
    # f(y, x) = 2y + 3x in cell coordinates: bilinear sampling and averaging are exact.
    y, x = np.meshgrid(np.arange(10.0), np.arange(12.0), indexing="ij")
    feature = (2 * y + 3 * x).astype(np.float32)[None, :, :, None]
    box = np.array([[[8, 16, 72, 88]]], np.float32)  # stride 8, aligned: cells [0.5, 1.5, 8.5, 10.5]
    got = roi_align.roi_align(feature, box, stride=8, output_size=2, sampling_ratio=2).numpy()[0, 0, :, :, 0]
    centres_y, centres_x = np.array([0.5 + 2, 0.5 + 6]), np.array([1.5 + 2.25, 1.5 + 6.75])
    np.testing.assert_allclose(got, 2 * centres_y[:, None] + 3 * centres_x[None, :], atol=1e-4)


def test_fpn_levels_and_multilevel_roi_align():
    def square(side):
        return [0, 0, side, side]

    sides = [224, 112, 448, 1000, 10, 223]
    levels = roi_align.assign_levels(np.array([square(s) for s in sides], np.float32)).numpy()
    np.testing.assert_array_equal(levels, [4, 3, 5, 5, 2, 3])
    assert math.floor(4 + math.log2(223 / 224)) == 3
    rng = np.random.default_rng(3)
    features = {
        level: rng.normal(size=(2, 64 // 2**level, 64 // 2**level, 3)).astype(np.float32) for level in (2, 3, 4, 5)
    }
    rois = np.array(
        [[square(8), [4, 4, 60, 50], [0, 0, 64, 64]], [[10, 10, 20, 30], square(40), square(16)]], np.float32
    )
    got = roi_align.multilevel_roi_align(features, rois, output_size=3).numpy()
    assigned = roi_align.assign_levels(rois, 2, 5).numpy()
    for b in range(2):
        for r in range(3):
            level = assigned[b, r]
            want = roi_align.roi_align(features[level][b : b + 1], rois[b : b + 1, r : r + 1], 2**level, 3).numpy()
            np.testing.assert_allclose(got[b, r], want[0, 0], atol=1e-6)
