"""Faster R-CNN on any keras_resnet ImageNet-style backbone (residual or plain): the paper's C4 form and FPN.

C4, He et al. (2015), appendix A: the RPN and the RoI pooling sit on the stride-16 conv4_x output (C4); each
RoI is pooled to 14 x 14 (RoIAlign here, as Detectron), then the conv5_x stage (stride 2 -> 7 x 7) and
global average pooling are the box head, followed by a classifier over K + 1 classes and class-specific
box regressors. The conv5_x stage is the backbone's own, weights shared, taken out of the functional graph
with keras_resnet.stage_features: a classification checkpoint loaded into the backbone loads it.
FPN (Lin et al. 2017): see FasterRCNNFPN.

Losses are per image, and each is normalised by a constant of the recipe, not by a count over the
batch: the RPN's by `rpn_batch` (256 sampled anchors), the head's by `roi_batch` (sampled RoIs).
`losses` returns them as [B] vectors; the task sums them over the replica's images and the loop divides
by the global batch, so the result is the same on 1 or N replicas (keras-hub's RetinaNet sums and is N
times too large under MirroredStrategy). Sampling takes one seed per image for the same reason, and
BatchNorm runs on its moving statistics by default (`freeze_bn`, Detectron's frozen BN): batch
statistics over 1-2 images per replica would differ with the replica count.

Boxes inside the model are yxyx in input pixels; `detect` returns them normalised, with the TF Object
Detection API's names. Channels-last only.
"""

import dataclasses

import keras
import tensorflow as tf

import keras_resnet
from trainers.detection import anchors as anchor_ops
from trainers.detection import boxes as box_ops
from trainers.detection.roi_align import multilevel_roi_align, roi_align


@dataclasses.dataclass(frozen=True)
class C4Config:
    """Faster R-CNN C4 hyper-parameters; defaults are the paper's / Detectron's at 600-1000 px images."""

    anchor_scales: tuple = anchor_ops.C4_SCALES
    aspect_ratios: tuple = anchor_ops.ASPECT_RATIOS
    rpn_channels: int | None = None  # the RPN's 3x3 conv; None: as many as C4 has
    rpn_positive_iou: float = 0.7
    rpn_negative_iou: float = 0.3
    rpn_batch: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_train: int = 12000
    rpn_post_nms_train: int = 2000
    rpn_pre_nms_test: int = 6000
    rpn_post_nms_test: int = 300
    rpn_nms_iou: float = 0.7
    roi_batch: int = 512
    roi_positive_fraction: float = 0.25
    roi_positive_iou: float = 0.5
    roi_negative_lower: float = 0.0
    roi_size: int = 14
    sampling_ratio: int = 2
    rpn_smooth_l1_beta: float = 1.0 / 9
    head_smooth_l1_beta: float = 1.0
    score_threshold: float = 0.05
    nms_iou: float = 0.5
    max_per_class: int = 100
    max_detections: int = 100
    freeze_bn: bool = True


@dataclasses.dataclass(frozen=True)
class FPNConfig(C4Config):
    """Faster R-CNN with FPN (Lin et al. 2017; Detectron's defaults): one anchor scale per level, P2-P6 for
    the RPN, RoIAlign 7 x 7 from P2-P5 by box size, a two-layer MLP box head."""

    anchor_scales: tuple = (anchor_ops.FPN_SCALE_PER_STRIDE,)  # x the level's stride: 32 px on P2 .. 512 on P6
    fpn_channels: int = 256
    head_dim: int = 1024
    rpn_pre_nms_train: int = 2000  # over all levels together
    rpn_post_nms_train: int = 2000
    rpn_pre_nms_test: int = 1000
    rpn_post_nms_test: int = 1000
    roi_size: int = 7


def smooth_l1(x, beta):
    """Huber-like smooth L1 of Fast R-CNN, summed over the last axis (beta 0: plain L1)."""
    x = tf.abs(x)
    if beta <= 0:
        return tf.reduce_sum(x, axis=-1)
    return tf.reduce_sum(tf.where(x < beta, 0.5 * x * x / beta, x - 0.5 * beta), axis=-1)


def _normal(stddev):
    return keras.initializers.RandomNormal(stddev=stddev, seed=None)


def _backbone_stages(backbone, needed):
    features = keras_resnet.stage_features(backbone).output
    missing = [k for k in needed if k not in features]
    if missing:
        raise ValueError(
            f"{backbone.name} has no {', '.join(missing)} (stages {sorted(features)}): Faster R-CNN needs an "
            "ImageNet-style net (resnet18/34/50/101/152 or plain18/34/...), not a CIFAR one."
        )
    return features


class FasterRCNN(keras.Model):
    """What both forms share: proposals from the RPN, sampling, the losses, and detection.

    A form fills in `rpn(images, training)` -> (features, anchors [N, 4], objectness logits [B, N],
    deltas [B, N, 4]) and `box_head(features, rois, training)` -> (class logits [B, R, K + 1],
    deltas [B, R, K, 4]), all float32 but the features.
    """

    def __init__(self, num_classes, config, name, **kwargs):
        super().__init__(name=name, **kwargs)
        self.config = config
        self.num_classes = int(num_classes)

    def _bn_training(self, training):
        return bool(training) and not self.config.freeze_bn

    def _rpn_outputs(self, hidden, batch):
        logits = tf.reshape(tf.cast(self.rpn_objectness(hidden), tf.float32), [batch, -1])
        deltas = tf.reshape(tf.cast(self.rpn_deltas(hidden), tf.float32), [batch, -1, 4])
        return logits, deltas

    def _heads(self, width, anchors_per_place, hidden_layers):
        """The RPN's conv and 1x1 outputs, and the K + 1 classifier and class-specific regressors.

        Layers are attributes of their own, never held in a list: Keras trains the layers of a list, but
        TensorFlow's checkpoint does not save them (an FPN run lost its pyramid and box head that way)."""
        self.rpn_conv = keras.layers.Conv2D(
            width, 3, padding="same", activation="relu", kernel_initializer=_normal(0.01), name="rpn_conv"
        )
        self.rpn_objectness = keras.layers.Conv2D(
            anchors_per_place, 1, kernel_initializer=_normal(0.01), name="rpn_objectness"
        )
        self.rpn_deltas = keras.layers.Conv2D(
            4 * anchors_per_place, 1, kernel_initializer=_normal(0.01), name="rpn_deltas"
        )
        self.head_depth = len(hidden_layers)
        for i, layer in enumerate(hidden_layers):
            setattr(self, f"head_fc{i + 1}", layer)
        self.class_logits = keras.layers.Dense(
            self.num_classes + 1, kernel_initializer=_normal(0.01), name="class_logits"
        )
        self.box_deltas = keras.layers.Dense(4 * self.num_classes, kernel_initializer=_normal(0.001), name="box_deltas")

    def _predict(self, pooled, batch, count):
        logits = tf.cast(self.class_logits(pooled), tf.float32)
        deltas = tf.cast(self.box_deltas(pooled), tf.float32)
        return tf.reshape(logits, [batch, count, -1]), tf.reshape(deltas, [batch, count, self.num_classes, 4])

    def proposals(self, anchors, logits, deltas, image_size, training=False):
        """Top-scoring decoded anchors after NMS: (boxes [B, P, 4] pixels, valid [B, P] bool), no gradient."""
        c = self.config
        pre = c.rpn_pre_nms_train if training else c.rpn_pre_nms_test
        post = c.rpn_post_nms_train if training else c.rpn_post_nms_test
        k = tf.minimum(pre, tf.shape(logits)[1])
        top = tf.math.top_k(tf.stop_gradient(logits), k=k)
        chosen = box_ops.decode(
            tf.gather(tf.stop_gradient(deltas), top.indices, batch_dims=1), tf.gather(anchors, top.indices)
        )
        chosen = box_ops.clip(chosen, image_size[0], image_size[1])
        kept, _, count = anchor_ops.nms(chosen, tf.sigmoid(top.values), post, c.rpn_nms_iou)
        valid = tf.range(post)[tf.newaxis, :] < count[:, tf.newaxis]
        return tf.stop_gradient(kept), valid

    # -- training ---------------------------------------------------------------------------------------
    def losses_for(self, images, gt_boxes, gt_classes, seeds):
        """Per-image losses {rpn_objectness, rpn_box, head_class, head_box, total}: each [B] float32.

        images: [B, H, W, 3] as the backbone expects them (normalised); gt_boxes: [B, M, 4] yxyx pixels;
        gt_classes: [B, M] int, 0-based, -1 for padding; seeds: [B, 2] int, one sampling seed per image.
        """
        c = self.config
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        gt_classes = tf.cast(gt_classes, tf.int32)
        seeds = tf.cast(seeds, tf.int32)
        valid = gt_classes >= 0
        image_size = tf.shape(images)[1:3]
        features, anchors, logits, deltas = self.rpn(images, training=True)

        # RPN: anchors against the boxes, 256 per image, half positive at most.
        matched, labels = anchor_ops.match(
            box_ops.iou(anchors, gt_boxes), valid, c.rpn_positive_iou, c.rpn_negative_iou, force_match=True
        )
        positive, negative = anchor_ops.sample_balanced(labels, c.rpn_batch, c.rpn_positive_fraction, seeds)
        objectness = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(positive, tf.float32), logits=logits)
        rpn_objectness = tf.reduce_sum(tf.where(positive | negative, objectness, 0.0), axis=-1) / c.rpn_batch
        targets = box_ops.encode(tf.gather(gt_boxes, matched, batch_dims=1), anchors, box_ops.RPN_WEIGHTS)
        rpn_box_each = smooth_l1(deltas - tf.stop_gradient(targets), c.rpn_smooth_l1_beta)
        rpn_box = tf.reduce_sum(tf.where(positive, rpn_box_each, 0.0), axis=-1) / c.rpn_batch

        # Head: proposals plus the boxes themselves, matched at 0.5, roi_batch per image, 1/4 positive.
        proposals, proposal_valid = self.proposals(anchors, logits, deltas, image_size, training=True)
        candidates = tf.concat([proposals, gt_boxes], axis=1)
        candidate_valid = tf.concat([proposal_valid, valid], axis=1)
        matched, labels = anchor_ops.match(
            box_ops.iou(candidates, gt_boxes),
            valid,
            c.roi_positive_iou,
            c.roi_positive_iou,
            negative_lower=c.roi_negative_lower,
        )
        labels = tf.where(candidate_valid, labels, -1)
        index, sampled = anchor_ops.sample_indices(labels, c.roi_batch, c.roi_positive_fraction, seeds + 7919)
        rois = tf.gather(candidates, index, batch_dims=1)
        roi_gt = tf.gather(matched, index, batch_dims=1)
        roi_class = tf.maximum(tf.gather(gt_classes, roi_gt, batch_dims=1), 0)
        class_logits, class_deltas = self.box_head(features, rois, training=True)
        target_class = tf.where(sampled == 1, roi_class + 1, 0)
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target_class, logits=class_logits)
        head_class = tf.reduce_sum(tf.where(sampled >= 0, cross_entropy, 0.0), axis=-1) / c.roi_batch
        own = tf.gather(class_deltas, roi_class, batch_dims=2)  # [B, R, 4]: the regressor of the box's class
        targets = box_ops.encode(tf.gather(gt_boxes, roi_gt, batch_dims=1), rois, box_ops.HEAD_WEIGHTS)
        head_box_each = smooth_l1(own - tf.stop_gradient(targets), c.head_smooth_l1_beta)
        head_box = tf.reduce_sum(tf.where(sampled == 1, head_box_each, 0.0), axis=-1) / c.roi_batch

        total = rpn_objectness + rpn_box + head_class + head_box
        return {
            "rpn_objectness": rpn_objectness,
            "rpn_box": rpn_box,
            "head_class": head_class,
            "head_box": head_box,
            "total": total,
        }

    # -- inference --------------------------------------------------------------------------------------
    def detect(self, images, image_sizes=None):
        """Detections of a batch: {detection_boxes [B, K, 4] normalised yxyx, detection_scores [B, K],
        detection_classes [B, K] int32 0-based, num_detections [B] int32}, best first.

        image_sizes: [B, 2] (height, width) in pixels of each image's content when the batch is padded
        at the bottom/right; boxes are clipped to it and normalised by it. Default: the batch's size.
        """
        c = self.config
        shape = tf.shape(images)
        features, anchors, logits, deltas = self.rpn(images, training=False)
        proposals, valid = self.proposals(anchors, logits, deltas, shape[1:3], training=False)
        class_logits, class_deltas = self.box_head(features, proposals, training=False)
        scores = tf.nn.softmax(class_logits)[..., 1:] * tf.cast(valid, tf.float32)[..., tf.newaxis]
        per_class = tf.broadcast_to(proposals[:, :, tf.newaxis, :], tf.shape(class_deltas))
        decoded = tf.reshape(
            box_ops.decode(tf.reshape(class_deltas, [-1, 4]), tf.reshape(per_class, [-1, 4]), box_ops.HEAD_WEIGHTS),
            tf.shape(class_deltas),
        )
        if image_sizes is None:
            image_sizes = tf.tile(shape[tf.newaxis, 1:3], [shape[0], 1])
        sizes = tf.cast(image_sizes, tf.float32)
        scale = tf.concat([sizes, sizes], axis=-1)[:, tf.newaxis, tf.newaxis, :]  # [B, 1, 1, 4]
        normalised = tf.clip_by_value(decoded / scale, 0.0, 1.0)
        out_boxes, out_scores, out_classes, count = anchor_ops.multiclass_nms(
            normalised, scores, c.max_per_class, c.max_detections, c.nms_iou, c.score_threshold
        )
        return {
            "detection_boxes": out_boxes,
            "detection_scores": out_scores,
            "detection_classes": out_classes,
            "num_detections": count,
        }

    def call(self, images, training=False):
        return self.detect(images)


class FasterRCNNC4(FasterRCNN):
    """The paper's form. `backbone`: a keras_resnet model built with include_top=False (any input size)."""

    def __init__(self, backbone, num_classes, config=None, name="faster_rcnn_c4", **kwargs):
        super().__init__(num_classes, config or C4Config(), name, **kwargs)
        features = _backbone_stages(backbone, ("C4", "C5"))
        self.trunk = keras.Model(backbone.input, features["C4"], name="trunk")  # stem .. conv4_x
        self.conv5 = keras.Model(features["C4"], features["C5"], name="conv5_head")  # shared weights
        c = self.config
        width = c.rpn_channels or features["C4"].shape[-1]
        self._heads(width, len(c.anchor_scales) * len(c.aspect_ratios), [])
        self.pool = keras.layers.GlobalAveragePooling2D(name="head_pool")
        self.stride = anchor_ops.C4_STRIDE

    def rpn(self, images, training=False):
        """(C4 features, anchors [N, 4], objectness logits [B, N], deltas [B, N, 4]) in float32."""
        features = self.trunk(images, training=self._bn_training(training))
        shape = tf.shape(features)
        anchors = anchor_ops.generate(
            shape[1], shape[2], self.stride, self.config.anchor_scales, self.config.aspect_ratios
        )
        logits, deltas = self._rpn_outputs(self.rpn_conv(features), shape[0])
        return features, anchors, logits, deltas

    def box_head(self, features, rois, training=False):
        """RoIAlign 14 x 14 -> conv5_x -> pool -> (class logits [B, R, K + 1], deltas [B, R, K, 4]) float32."""
        c = self.config
        crops = roi_align(features, rois, self.stride, c.roi_size, c.sampling_ratio)
        shape = tf.shape(crops)
        flat = tf.reshape(crops, tf.concat([[-1], shape[2:]], axis=0))
        pooled = self.pool(self.conv5(flat, training=self._bn_training(training)))
        return self._predict(pooled, shape[0], shape[1])


class FasterRCNNFPN(FasterRCNN):
    """Faster R-CNN with a feature pyramid: P2-P5 from C2-C5 (1x1 laterals, nearest 2x top-down, 3x3 out
    convs), P6 by stride-2 subsampling of P5 (RPN only); one RPN head shared by the levels; each RoI pooled
    7 x 7 from the level its size picks, then two 1024-wide fully connected layers."""

    LEVELS = (2, 3, 4, 5)

    def __init__(self, backbone, num_classes, config=None, name="faster_rcnn_fpn", **kwargs):
        super().__init__(num_classes, config or FPNConfig(), name, **kwargs)
        c = self.config
        features = _backbone_stages(backbone, tuple(f"C{level}" for level in self.LEVELS))
        self.body = keras.Model(
            backbone.input, [features[f"C{level}"] for level in self.LEVELS], name="body"
        )  # stem .. conv5_x
        width = c.fpn_channels
        for level in self.LEVELS:
            lateral = keras.layers.Conv2D(width, 1, kernel_initializer="he_uniform", name=f"fpn_lateral{level}")
            setattr(self, f"fpn_lateral{level}", lateral)
        for level in self.LEVELS:
            output = keras.layers.Conv2D(
                width, 3, padding="same", kernel_initializer="he_uniform", name=f"fpn_output{level}"
            )
            setattr(self, f"fpn_output{level}", output)
        hidden = [
            keras.layers.Dense(c.head_dim, activation="relu", kernel_initializer="he_uniform", name="head_fc1"),
            keras.layers.Dense(c.head_dim, activation="relu", kernel_initializer="he_uniform", name="head_fc2"),
        ]
        self._heads(width, len(c.anchor_scales) * len(c.aspect_ratios), hidden)

    def pyramid(self, images, training=False):
        """{level: P_level} for levels 2-6, stride 2**level."""
        stages = self.body(images, training=self._bn_training(training))
        laterals = [
            getattr(self, f"fpn_lateral{level}")(stage) for level, stage in zip(self.LEVELS, stages, strict=True)
        ]
        merged = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            shape = tf.shape(lateral)
            up = tf.repeat(tf.repeat(merged[0], 2, axis=1), 2, axis=2)[:, : shape[1], : shape[2], :]  # nearest
            merged.insert(0, lateral + up)
        levels = {level: getattr(self, f"fpn_output{level}")(m) for level, m in zip(self.LEVELS, merged, strict=True)}
        levels[6] = levels[5][:, ::2, ::2, :]  # max-pool 1x1 stride 2 (Detectron's "subsample")
        return levels

    def rpn(self, images, training=False):
        """(pyramid, anchors [N, 4] over P2-P6, logits [B, N], deltas [B, N, 4]); level-major order."""
        c = self.config
        levels = self.pyramid(images, training)
        anchors, logits, deltas = [], [], []
        for level in sorted(levels):
            p = levels[level]
            shape = tf.shape(p)
            stride = 2**level
            scales = tuple(s * stride for s in c.anchor_scales)
            anchors.append(anchor_ops.generate(shape[1], shape[2], stride, scales, c.aspect_ratios))
            level_logits, level_deltas = self._rpn_outputs(self.rpn_conv(p), shape[0])
            logits.append(level_logits)
            deltas.append(level_deltas)
        return levels, tf.concat(anchors, 0), tf.concat(logits, 1), tf.concat(deltas, 1)

    def box_head(self, features, rois, training=False):
        """Multi-level RoIAlign 7 x 7 from P2-P5 -> 2 x fc1024 -> (class logits, deltas) float32."""
        c = self.config
        levels = {level: features[level] for level in self.LEVELS}
        crops = multilevel_roi_align(levels, rois, c.roi_size, c.sampling_ratio)
        shape = tf.shape(crops)
        hidden = tf.reshape(crops, [shape[0] * shape[1], c.roi_size * c.roi_size * c.fpn_channels])
        for i in range(self.head_depth):
            hidden = getattr(self, f"head_fc{i + 1}")(hidden)
        return self._predict(hidden, shape[0], shape[1])


DETECTORS = {"frcnn-c4": (FasterRCNNC4, C4Config), "frcnn-fpn": (FasterRCNNFPN, FPNConfig)}


def build(detector, model_name, num_classes, config=None, backbone_weights=None, **build_kwargs):
    """A detector (`frcnn-c4` or `frcnn-fpn`) on a registered keras_resnet name ("resnet50", "plain34", ...)."""
    if detector not in DETECTORS:
        raise ValueError(f"--detector {detector}: expected one of {', '.join(DETECTORS)}.")
    cls, _ = DETECTORS[detector]
    backbone = keras_resnet.build(
        model_name, include_top=False, weights=backbone_weights, input_shape=(None, None, 3), **build_kwargs
    )
    return cls(backbone, num_classes, config)


def build_c4(model_name, num_classes, config=None, backbone_weights=None, **build_kwargs):
    """Faster R-CNN C4 on a registered keras_resnet name ("resnet50", "plain34", ...)."""
    return build("frcnn-c4", model_name, num_classes, config, backbone_weights, **build_kwargs)
