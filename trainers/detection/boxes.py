"""Box formats, IoU, Faster R-CNN box encoding and clipping.

Conversion, IoU and the delta encoding come from `keras.utils.bounding_boxes` (Keras >= 3.8 ships them;
keras-hub's detection layers are built on the same functions). What is added here is only what Faster
R-CNN needs on top: its delta weights, the clip on the decoded width/height, and clipping to the image.

Deltas are in the order (dy, dx, dh, dw) -- `center_yxhw`, matching the yxyx boxes -- and are the
Faster R-CNN ones multiplied by `weights`:
    dy = wy * (y - ya) / ha,  dx = wx * (x - xa) / wa,  dh = wh * log(h / ha),  dw = ww * log(w / wa)
with (y, x, h, w) the box centre and size and (ya, xa, ha, wa) the anchor's. The RPN uses weights
(1, 1, 1, 1), the box head (10, 10, 5, 5) as in Detectron.
"""

import math

import numpy as np
import tensorflow as tf
from keras.utils import bounding_boxes as kbb

RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
HEAD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# Detectron's bound on dh, dw before exp(): a box at most 1000/16 times its anchor.
DELTA_SIZE_CLIP = math.log(1000.0 / 16)


def convert(boxes, source, target, height=None, width=None):
    """Converts between formats: "yxyx", "xyxy", "xywh" (COCO), "center_yxhw", and "rel_yxyx" (normalised).

    `height`/`width` (the image's, in pixels) are needed when exactly one side is normalised ("rel_").
    """
    return kbb.convert_format(boxes, source=source, target=target, height=height, width=width)


def normalized_to_absolute(boxes, height, width):
    """yxyx in [0, 1] -> yxyx in pixels of an image `height` x `width` (tensors or numbers)."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scale = tf.cast(tf.stack([height, width, height, width]), boxes.dtype)
    return boxes * scale


def absolute_to_normalized(boxes, height, width):
    """yxyx in pixels -> yxyx in [0, 1]."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scale = tf.cast(tf.stack([height, width, height, width]), boxes.dtype)
    return boxes / scale


def to_coco_xywh(boxes, height, width):
    """Normalised yxyx (numpy, [..., 4]) -> COCO's absolute [x, y, width, height] (numpy float64)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4) * np.array([height, width, height, width], np.float64)
    return np.stack([b[:, 1], b[:, 0], b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]], axis=-1)


def iou(boxes1, boxes2):
    """Pairwise IoU of yxyx boxes: [N, 4] x [M, 4] -> [N, M], or batched [B, N, 4] x [B, M, 4] -> [B, N, M].

    Use pixel coordinates: the union has 1e-7 added (Keras's epsilon), negligible against a pixel but not
    against a box of 1e-4 x 1e-4 in normalised units. Zero-size boxes (padding) have IoU 0 with everything.
    """
    return kbb.compute_iou(boxes1, boxes2, bounding_box_format="yxyx")


def area(boxes):
    """Area of yxyx boxes [..., 4] -> [...]; negative extents count as 0."""
    boxes = tf.convert_to_tensor(boxes)
    return tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0) * tf.maximum(boxes[..., 3] - boxes[..., 1], 0.0)


def encode(boxes, anchors, weights=RPN_WEIGHTS):
    """Deltas (dy, dx, dh, dw) that move each anchor onto its box; both yxyx in the same units, same shape.

    `anchors` may be [N, 4] with `boxes` [B, N, 4] (Keras broadcasts the unbatched side).
    """
    variance = [1.0 / w for w in weights]
    return kbb.encode_box_to_deltas(
        anchors, boxes, anchor_format="yxyx", box_format="yxyx", encoding_format="center_yxhw", variance=variance
    )


def decode(deltas, anchors, weights=RPN_WEIGHTS, size_clip=DELTA_SIZE_CLIP):
    """The boxes (yxyx) that `deltas` describe relative to `anchors`; inverse of `encode`.

    dh and dw are clipped to `size_clip` (after dividing by the weights) before exp(), as Detectron does,
    so an untrained head cannot produce inf-sized boxes.
    """
    deltas = tf.convert_to_tensor(deltas, tf.float32)
    w = tf.constant(weights, deltas.dtype)
    bound = tf.constant([np.inf, np.inf, size_clip, size_clip], deltas.dtype) * w
    deltas = tf.minimum(deltas, bound)
    variance = [1.0 / x for x in weights]
    return kbb.decode_deltas_to_boxes(
        anchors, deltas, anchor_format="yxyx", box_format="yxyx", encoded_format="center_yxhw", variance=variance
    )


def clip(boxes, height, width):
    """Clips yxyx boxes to the image [0, height] x [0, width] (pixels; 1, 1 for normalised boxes)."""
    boxes = tf.convert_to_tensor(boxes)
    height = tf.cast(height, boxes.dtype)
    width = tf.cast(width, boxes.dtype)
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    return tf.stack(
        [
            tf.clip_by_value(y1, 0.0, height),
            tf.clip_by_value(x1, 0.0, width),
            tf.clip_by_value(y2, 0.0, height),
            tf.clip_by_value(x2, 0.0, width),
        ],
        axis=-1,
    )


def flip_left_right(boxes):
    """Normalised yxyx boxes of the mirrored image (for a horizontal-flip augmentation)."""
    boxes = tf.convert_to_tensor(boxes)
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    return tf.stack([y1, 1.0 - x2, y2, 1.0 - x1], axis=-1)
