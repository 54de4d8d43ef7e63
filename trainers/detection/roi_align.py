"""RoIAlign on one feature level and over FPN levels, built on tf.image.crop_and_resize.

Detectron's RoIAlign (He et al., Mask R-CNN): each of the output_size x output_size bins of a box is
averaged over sampling_ratio x sampling_ratio bilinear samples, spaced evenly inside the bin. Those
samples form a regular grid of (output_size * sampling_ratio)**2 points over the box, exactly what
crop_and_resize samples when given the box of the outermost sample centres; an average pool of
sampling_ratio x sampling_ratio then forms the bins.

Edges as Detectron: a sample up to one feature cell outside the map reads the edge value, one farther
out reads 0. crop_and_resize reads 0 for any point outside [0, size - 1], so the map is first padded by
one edge-replicating cell on each side.

`aligned=True` (Detectron2's default) shifts box coordinates by half a feature cell so a box's pixel
centres map to feature-cell centres; `aligned=False` is the original Mask R-CNN behaviour (boxes at
least one cell in size).
"""

import math

import tensorflow as tf

CANONICAL_SIZE = 224.0  # FPN paper, eq. (1): a 224 x 224 box belongs on level 4
CANONICAL_LEVEL = 4


def _pair(size):
    return (size, size) if isinstance(size, int) else tuple(size)


def _crop(features, boxes, box_batch, stride, output_size, sampling_ratio, aligned):
    """RoIAlign of flat boxes [K, 4] (yxyx, input pixels) on `features` [B, H, W, C] -> [K, ph, pw, C]."""
    ph, pw = _pair(output_size)
    s = int(sampling_ratio)
    shape = tf.shape(features)
    padded = tf.pad(features, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    if padded.dtype == tf.bfloat16:  # crop_and_resize takes half, float, double, not bfloat16 (mixed_bfloat16)
        padded = tf.cast(padded, tf.float32)
    boxes = tf.cast(boxes, tf.float32) / float(stride)
    if aligned:
        boxes = boxes - 0.5
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    height, width = y2 - y1, x2 - x1
    if not aligned:
        height, width = tf.maximum(height, 1.0), tf.maximum(width, 1.0)
    step_y, step_x = height / (ph * s), width / (pw * s)
    # Outermost sample centres, in the padded map's cell coordinates, normalised as crop_and_resize wants.
    scale_y = tf.cast(shape[1] + 1, tf.float32)  # padded height - 1
    scale_x = tf.cast(shape[2] + 1, tf.float32)
    first_y, first_x = y1 + 0.5 * step_y + 1.0, x1 + 0.5 * step_x + 1.0
    last_y, last_x = first_y + (ph * s - 1) * step_y, first_x + (pw * s - 1) * step_x
    crop_boxes = tf.stack([first_y / scale_y, first_x / scale_x, last_y / scale_y, last_x / scale_x], axis=-1)
    crops = tf.image.crop_and_resize(
        padded,
        tf.stop_gradient(crop_boxes),
        tf.cast(box_batch, tf.int32),
        crop_size=(ph * s, pw * s),
        method="bilinear",
        extrapolation_value=0.0,
    )
    if s > 1:
        crops = tf.nn.avg_pool2d(crops, ksize=s, strides=s, padding="VALID")
    return tf.cast(crops, features.dtype)


def _flatten(boxes):
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    shape = tf.shape(boxes)
    batch_index = tf.repeat(tf.range(shape[0]), shape[1])
    return tf.reshape(boxes, [-1, 4]), batch_index, shape


def roi_align(features, boxes, stride, output_size=7, sampling_ratio=2, aligned=True):
    """RoIAlign on one level: features [B, H, W, C], boxes [B, R, 4] yxyx in input pixels -> [B, R, ph, pw, C].

    `stride`: input pixels per feature cell (16 on C4).
    """
    flat, batch_index, shape = _flatten(boxes)
    crops = _crop(features, flat, batch_index, stride, output_size, sampling_ratio, aligned)
    ph, pw = _pair(output_size)
    return tf.reshape(crops, tf.concat([shape[:2], [ph, pw, tf.shape(features)[-1]]], axis=0))


def assign_levels(boxes, min_level=2, max_level=5, canonical_size=CANONICAL_SIZE, canonical_level=CANONICAL_LEVEL):
    """FPN level of each box [..., 4] (yxyx pixels): floor(4 + log2(sqrt(w * h) / 224)), clipped -> int32."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    size = tf.sqrt(tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0) * tf.maximum(boxes[..., 3] - boxes[..., 1], 0.0))
    level = tf.floor(canonical_level + tf.math.log(size / canonical_size + 1e-8) / math.log(2.0))
    return tf.cast(tf.clip_by_value(level, min_level, max_level), tf.int32)


def multilevel_roi_align(features, boxes, output_size=7, sampling_ratio=2, aligned=True):
    """RoIAlign over FPN levels: features {level: [B, H_l, W_l, C]} (stride 2**level), boxes [B, R, 4].

    Each box is cropped from the one level `assign_levels` gives it (among the levels present);
    returns [B, R, ph, pw, C] in the boxes' order.
    """
    levels = sorted(features)
    flat, batch_index, shape = _flatten(boxes)
    assigned = assign_levels(flat, levels[0], levels[-1])
    order, crops = [], []
    for level in levels:
        index = tf.reshape(tf.where(tf.equal(assigned, level)), [-1])
        order.append(tf.cast(index, tf.int32))
        crops.append(
            _crop(
                features[level],
                tf.gather(flat, index),
                tf.gather(batch_index, index),
                2**level,
                output_size,
                sampling_ratio,
                aligned,
            )
        )
    # Every box went to exactly one level: undo the grouping with the inverse permutation.
    crops = tf.gather(tf.concat(crops, axis=0), tf.math.invert_permutation(tf.concat(order, axis=0)))
    ph, pw = _pair(output_size)
    channels = tf.shape(features[levels[0]])[-1]
    return tf.reshape(crops, tf.concat([shape[:2], [ph, pw, channels]], axis=0))
