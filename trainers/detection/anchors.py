"""Anchors, matching anchors/proposals to ground truth, balanced sampling, and NMS (TensorFlow ops).

Why not keras-hub's layers: `keras_hub.layers.AnchorGenerator` makes RetinaNet anchors (scales within one
octave, 2**(i / num_scales)), not the paper's octave scales 128/256/512 on the single C4 level; its
`BoxMatcher` is close to `match` below but has no ignore band below a lower IoU bound (Fast R-CNN's
background is [0, 0.5), some recipes [0.1, 0.5)) and reassigns force-matched rows, which Detectron does
not; its `NonMaxSuppression` re-implements in Keras ops what `tf.image.non_max_suppression_padded`
does natively. And installing keras-hub pulls tensorflow-text, which requires the full `tensorflow`
distribution on top of this project's `tensorflow-cpu` (see setup.py). So: TensorFlow ops, and only the
few lines no library has.

Anchor layout: per feature-map location (row-major over y, then x), `len(scales) * len(aspect_ratios)`
anchors, scale-major: anchor a = scale_index * len(aspect_ratios) + ratio_index. A head predicting
[H, W, A] (or [H, W, A * 4]) reshaped to [H * W * A] lines up with `generate`. Aspect ratio = height /
width (Detectron's); an anchor of scale s and ratio r is s * sqrt(r) high and s / sqrt(r) wide (area s**2).
Centres sit at ((i + 0.5) * stride, (j + 0.5) * stride): the centre of the stride-sized input cell.
"""

import math

import tensorflow as tf

# The paper's RPN (Ren et al., section 3.1.1) on the stride-16 C4 map: 3 scales x 3 aspect ratios.
C4_STRIDE = 16
C4_SCALES = (128.0, 256.0, 512.0)
ASPECT_RATIOS = (0.5, 1.0, 2.0)
# FPN (Lin et al.): one scale per level, 8 x stride, i.e. 32 px on P2 ... 512 px on P6.
FPN_LEVELS = (2, 3, 4, 5, 6)
FPN_SCALE_PER_STRIDE = 8.0


def feature_size(image_size, stride):
    """Size of a feature map of `stride` over an input side of `image_size` ('same' padding: ceil)."""
    return -(-int(image_size) // int(stride))


def generate(feature_height, feature_width, stride, scales=C4_SCALES, aspect_ratios=ASPECT_RATIOS):
    """Anchors of one level: [feature_height * feature_width * A, 4] yxyx in input-image pixels (float32).

    `feature_height`/`feature_width` may be tensors (a feature map's dynamic shape).
    """
    sizes = [(s * math.sqrt(r), s / math.sqrt(r)) for s in scales for r in aspect_ratios]
    half = tf.constant([[-h / 2, -w / 2, h / 2, w / 2] for h, w in sizes], tf.float32)  # [A, 4]
    cy = (tf.range(feature_height, dtype=tf.float32) + 0.5) * float(stride)
    cx = (tf.range(feature_width, dtype=tf.float32) + 0.5) * float(stride)
    cy, cx = tf.meshgrid(cy, cx, indexing="ij")
    centres = tf.reshape(tf.stack([cy, cx, cy, cx], axis=-1), [-1, 1, 4])  # [H * W, 1, 4]
    return tf.reshape(centres + half[tf.newaxis], [-1, 4])


def generate_fpn(feature_sizes, aspect_ratios=ASPECT_RATIOS, scale_per_stride=FPN_SCALE_PER_STRIDE, scales_per_level=1):
    """FPN anchors: {level: [H_l * W_l * A, 4]} for `feature_sizes` = {level: (H_l, W_l)}, stride 2**level.

    Each level gets `scales_per_level` octave-spaced scales starting at `scale_per_stride * 2**level`
    (1 as in the FPN paper: 32, 64, 128, 256, 512 px on P2-P6).
    """
    anchors = {}
    for level, (height, width) in sorted(feature_sizes.items()):
        stride = 2**level
        base = scale_per_stride * stride
        scales = [base * 2 ** (i / scales_per_level) for i in range(scales_per_level)]
        anchors[level] = generate(height, width, stride, scales, aspect_ratios)
    return anchors


def match(similarity, gt_valid, positive_threshold, negative_threshold, negative_lower=0.0, force_match=False):
    """Matches rows (anchors or proposals) to columns (ground-truth boxes) by IoU.

    similarity: [B, N, M] IoU of N anchors with M (padded) ground-truth boxes; gt_valid: [B, M] bool.
    Returns (matched [B, N] int32: the column of each row's highest IoU; labels [B, N] int32):
        1  positive: IoU >= positive_threshold, or (force_match) the row is the best for some valid box
        0  negative: negative_lower <= IoU < negative_threshold (also every row of an image without boxes)
        -1 ignored: the band between, and below negative_lower.
    RPN: (0.7, 0.3, force_match=True); Fast R-CNN head: (0.5, 0.5, negative_lower=0.0 or 0.1).
    Force matching follows Detectron: every row whose IoU with a box equals that box's best IoU (ties
    included, best > 0) becomes positive, still matched to its own highest-IoU box.
    """
    similarity = tf.convert_to_tensor(similarity, tf.float32)
    valid = tf.cast(gt_valid, tf.bool)[:, tf.newaxis, :]
    masked = tf.where(valid, similarity, 0.0)
    matched = tf.argmax(masked, axis=-1, output_type=tf.int32)
    best = tf.reduce_max(masked, axis=-1)
    positive = best >= positive_threshold
    negative = (best < negative_threshold) & (best >= negative_lower)
    no_boxes = ~tf.reduce_any(tf.cast(gt_valid, tf.bool), axis=-1, keepdims=True)
    negative = negative | no_boxes
    if force_match:
        best_per_gt = tf.reduce_max(masked, axis=1, keepdims=True)  # [B, 1, M]
        is_best = valid & (best_per_gt > 0.0) & (masked >= best_per_gt)
        positive = positive | tf.reduce_any(is_best, axis=-1)
    labels = tf.where(positive, 1, tf.where(negative, 0, -1))
    return matched, tf.cast(labels, tf.int32)


def _uniform(like, seed):
    """Uniform [0, 1) noise shaped like [B, N] `like`, from one seed [2] or one seed per row [B, 2]."""
    seed = tf.convert_to_tensor(seed)
    if seed.shape.rank == 2:
        row = tf.shape(like)[1:]
        return tf.map_fn(
            lambda s: tf.random.stateless_uniform(row, seed=s, dtype=tf.float32),
            seed,
            fn_output_signature=tf.float32,
        )
    return tf.random.stateless_uniform(tf.shape(like), seed=seed, dtype=tf.float32)


def _kth_largest(values, k_per_row, k_max):
    """The k-th largest value per row (k from 1; -inf where k is 0) of [B, N] `values`."""
    top = tf.math.top_k(values, k=k_max).values  # [B, k_max]
    top = tf.concat([tf.fill([tf.shape(top)[0], 1], float("inf")), top], axis=1)
    return tf.gather(top, tf.cast(k_per_row, tf.int32), batch_dims=1)


def sample_balanced(labels, num_samples, positive_fraction, seed):
    """Chooses at most `num_samples` rows per image, at most `positive_fraction` of them positive.

    labels: [B, N] from `match`; seed: an int tensor of shape [2], or [B, 2] for one seed per image (then
    an image's sample does not depend on which other images share its batch, or on the replica count).
    Stateless: the same seed, the same sample.
    Positives are drawn first (up to round(num_samples * positive_fraction)); negatives fill the rest.
    Returns (positive [B, N] bool, negative [B, N] bool), disjoint. RPN: 256 at 0.5; head: 512 at 0.25.
    """
    labels = tf.convert_to_tensor(labels, tf.int32)
    n = labels.shape[-1] if labels.shape[-1] is not None else tf.shape(labels)[-1]
    # Distinct random priorities in [0, 1); rows not eligible get -1 and are never chosen.
    noise = _uniform(labels, seed)
    max_pos = int(round(num_samples * positive_fraction))
    k_pos = min(max_pos, n) if isinstance(n, int) else max_pos
    k_all = min(num_samples, n) if isinstance(n, int) else num_samples

    pos_priority = tf.where(labels == 1, noise, -1.0)
    n_pos = tf.minimum(tf.reduce_sum(tf.cast(labels == 1, tf.int32), axis=-1), k_pos)
    positive = (labels == 1) & (pos_priority >= _kth_largest(pos_priority, n_pos, k_pos)[:, tf.newaxis])

    neg_priority = tf.where(labels == 0, noise, -1.0)
    n_neg = tf.minimum(tf.reduce_sum(tf.cast(labels == 0, tf.int32), axis=-1), num_samples - n_pos)
    n_neg = tf.minimum(n_neg, k_all)
    negative = (labels == 0) & (neg_priority >= _kth_largest(neg_priority, n_neg, k_all)[:, tf.newaxis])
    return positive, negative


def sample_indices(labels, num_samples, positive_fraction, seed):
    """`sample_balanced` as a fixed number of rows per image, for the box head's RoIs.

    Returns (indices [B, num_samples] int32, sampled_labels [B, num_samples] int32): positives first,
    then negatives; where an image had fewer candidates the tail is padding with label -1 (index 0).
    """
    positive, negative = sample_balanced(labels, num_samples, positive_fraction, seed)
    noise = _uniform(positive, tf.convert_to_tensor(seed) + 1)
    priority = tf.where(positive, 2.0 + noise, tf.where(negative, 1.0 + noise, -1.0))
    n = labels.shape[-1]
    k = min(num_samples, n) if n is not None else num_samples
    top = tf.math.top_k(priority, k=k)
    values, indices = top.values, top.indices
    if k < num_samples:  # fewer rows than samples: pad with nothing-sampled slots
        values = tf.pad(values, [[0, 0], [0, num_samples - k]], constant_values=-1.0)
        indices = tf.pad(indices, [[0, 0], [0, num_samples - k]])
    indices = tf.where(values >= 0.0, indices, 0)
    sampled = tf.where(values >= 2.0, 1, tf.where(values >= 1.0, 0, -1))
    return tf.cast(indices, tf.int32), tf.cast(sampled, tf.int32)


def nms(boxes, scores, max_output_size, iou_threshold, score_threshold=float("-inf"), xla=False):
    """Class-agnostic NMS per image (proposals) on [B, N, 4] boxes and [B, N] scores.

    Returns (boxes [B, K, 4], scores [B, K], valid [B] int32) with K = max_output_size, best first;
    slots past `valid` hold zero boxes and score 0. By default one NonMaxSuppressionV4 kernel per image
    (tf.map_fn): fast to trace and to run on a CPU. `xla=True` uses tf.image.non_max_suppression_padded's
    batched form instead, which XLA compiles but which takes seconds to trace.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scores = tf.convert_to_tensor(scores, tf.float32)
    if xla:
        indices, valid = tf.image.non_max_suppression_padded(
            boxes,
            scores,
            max_output_size,
            iou_threshold=iou_threshold,
            score_threshold=score_threshold,
            pad_to_max_output_size=True,
            canonicalized_coordinates=True,
        )
    else:

        def one(args):
            b, s = args
            index, count = tf.raw_ops.NonMaxSuppressionV4(
                boxes=b,
                scores=s,
                max_output_size=max_output_size,
                iou_threshold=iou_threshold,
                score_threshold=score_threshold,
                pad_to_max_output_size=True,
            )
            return index, count

        indices, valid = tf.map_fn(
            one,
            (boxes, scores),
            fn_output_signature=(tf.TensorSpec([max_output_size], tf.int32), tf.TensorSpec([], tf.int32)),
        )
    keep = tf.range(max_output_size)[tf.newaxis, :] < valid[:, tf.newaxis]
    out_boxes = tf.where(keep[..., tf.newaxis], tf.gather(boxes, indices, batch_dims=1), 0.0)
    out_scores = tf.where(keep, tf.gather(scores, indices, batch_dims=1), 0.0)
    return out_boxes, out_scores, tf.cast(valid, tf.int32)


def multiclass_nms(boxes, scores, max_per_class, max_total, iou_threshold, score_threshold):
    """Per-class NMS for final detections: tf.image.combined_non_max_suppression.

    boxes: [B, N, C, 4] (class-specific) or [B, N, 1, 4]; scores: [B, N, C] (background column removed).
    Returns (boxes [B, max_total, 4], scores, classes int32 (0-based), num_detections [B] int32),
    sorted by score; padded slots are zeros.
    """
    out = tf.image.combined_non_max_suppression(
        tf.convert_to_tensor(boxes, tf.float32),
        tf.convert_to_tensor(scores, tf.float32),
        max_output_size_per_class=max_per_class,
        max_total_size=max_total,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        pad_per_class=False,
        clip_boxes=False,
    )
    return out.nmsed_boxes, out.nmsed_scores, tf.cast(out.nmsed_classes, tf.int32), out.valid_detections
