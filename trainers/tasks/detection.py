"""Object detection: Faster R-CNN (C4 or FPN) on a keras_resnet backbone, the second task on the loop.

Training is the loop's: per-image losses summed on each replica and divided by the global batch (so N
replicas give the loss of one), one sampling seed per image. Evaluation is not a sum the loop can add up:
the task runs the detector over the validation images on this host and scores the detections with
trainers.detection.metrics (VOC07 mAP@0.5 and pycocotools' COCO numbers).
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

from trainers import preprocessing
from trainers.detection import drawing, pipeline
from trainers.detection import model as detection_model
from trainers.detection.metrics import DetectionEvaluator
from trainers.detection.sources import open_source
from trainers.tasks.base import Task

MEAN = preprocessing.IMAGENET_MEAN
SAMPLES = 8  # validation images drawn with their detections into <model_dir>/detections.png
PAPER_SIDE = 600  # the shorter side the C4 anchor scales (128, 256, 512) were chosen for


def detector_config(config):
    """The detector's hyper-parameters at --image-size: the paper's anchors scaled with the image, and
    sample and proposal counts cut below the paper's image sizes (fewer, smaller objects per image).

    BatchNorm is frozen (the paper's and Detectron's choice) only when the backbone starts from trained
    weights, whose statistics mean something; a backbone trained from scratch learns them from its batches
    as in classification (--sync-bn makes that the same on any number of replicas)."""
    cls = detection_model.DETECTORS[config.detector][1]
    small = config.image_size < PAPER_SIDE
    changes = {"freeze_bn": bool(config.backbone_weights)}
    if config.detector == "frcnn-c4":
        scale = config.image_size / PAPER_SIDE
        changes["anchor_scales"] = tuple(round(s * scale, 1) for s in detection_model.C4Config.anchor_scales)
    if small:
        changes.update(
            rpn_pre_nms_train=2000, rpn_post_nms_train=512, rpn_pre_nms_test=1000, rpn_post_nms_test=300, roi_batch=128
        )
    return cls(**changes)


class DetectionTask(Task):
    """Faster R-CNN losses on the loop; VOC07 mAP@0.5 and COCO mAP from the host after each epoch."""

    metric_names = ("loss", "head_class", "head_box", "rpn_objectness", "rpn_box")
    eval_metric_names = ("mAP50", "AP", "AP50", "AP75")
    name = "detection"

    def __init__(self, config):
        super().__init__(config)
        self.source = None
        self.num_classes = config.num_classes
        self.last_evaluation = None  # the last evaluation's VOC and COCO details (per-class APs, COCO table)
        self._detect = None

    def open(self, replicas_in_multi_worker=False):
        config = self.config
        self.source = open_source(config.data, config.image_size, config.seed, config.data_dir, config.download)
        names = tuple(self.source.class_names)
        if config.num_classes and config.num_classes != len(names):
            raise ValueError(
                f"--num-classes {config.num_classes}: {config.data} has {len(names)} classes "
                f"({', '.join(names)}); leave --num-classes out."
            )
        self.num_classes = len(names)
        self.max_boxes = max(self.source.max_boxes("train"), self.source.max_boxes("validation"), 1)
        self.tables = {split: self.source.table(split, self.max_boxes) for split in ("train", "validation")}

    def examples(self, split):
        return len(self.tables[split]["boxes"])

    def effective_config(self):
        return dataclasses.replace(self.config, num_classes=self.num_classes)

    def save(self, run_dir):
        run_dir.write_normalization(MEAN, list(self.source.class_names))

    def describe(self):
        c = self.config
        lines = [f"{c.detector} on {c.model}: {self.num_classes} classes ({', '.join(self.source.class_names)})"]
        for split in ("train", "validation"):
            lines += self.source.describe(split)
        canvas = preprocessing.detection_canvas(c.image_size)
        low, high = pipeline.SCALE_RANGE
        training = {"flip_scale": f"training x{low:g}-{high:g}, flipped", "flip": "training flipped",
                    "none": "training not augmented"}[c.augment]  # fmt: skip
        lines.append(
            f"images: shorter side {c.image_size} ({training}), longer at most "
            f"{preprocessing.detection_longest(c.image_size)}, padded to {canvas} x {canvas}"
        )
        return lines

    def build_model(self, num_classes=None):
        import keras_resnet

        c = self.config
        backbone = keras_resnet.build(
            c.model,
            include_top=False,
            weights="imagenet" if c.backbone_weights == "imagenet" else None,
            input_shape=(None, None, 3),
            shortcut=c.shortcut,
            variant=c.variant,
            zero_init_residual=c.zero_init_residual,
        )
        if c.backbone_weights and c.backbone_weights != "imagenet":
            _copy_backbone(backbone, c.backbone_weights, c.model)
        detector = detection_model.DETECTORS[c.detector][0]
        model = detector(backbone, num_classes or self.num_classes, detector_config(c))
        model.detect(tf.zeros([1, 64, 64, 3]))  # creates the heads' variables before the optimizer is built
        return model

    # -- steps ------------------------------------------------------------------------------------------
    def dataset(self, split, *, epoch=0, skip_batches=0, input_context=None):
        return pipeline.dataset(
            self.tables[split],
            training=split == "train",
            batch_size=self.config.batch_size,
            image_size=self.config.image_size,
            mean=MEAN,
            seed=self.config.seed,
            epoch=epoch,
            skip_batches=skip_batches,
            input_context=input_context,
            augment=self.config.augment,
        )

    def train_loss(self, model, batch):
        losses = model.losses_for(
            preprocessing.normalize(batch["images"], MEAN), batch["gt_boxes"], batch["gt_classes"], batch["seeds"]
        )
        order = ("total", "head_class", "head_box", "rpn_objectness", "rpn_box")
        sums = [tf.reduce_sum(tf.cast(losses[k], tf.float64)) for k in order]
        count = tf.cast(tf.shape(batch["images"])[0], tf.float64)
        return tf.reduce_sum(losses["total"]), tf.stack([*sums, count])

    def evaluate(self, model):
        """Detections over the validation split on this host, scored; every worker computes the same."""
        if self._detect is None:
            self._detect = tf.function(
                lambda images, sizes: model.detect(preprocessing.normalize(images, MEAN), sizes),
                reduce_retracing=True,
            )
        evaluator = DetectionEvaluator(self.source.class_names)
        shown = []
        for batch in self.batches("validation"):
            self.check_stop()
            out = self._detect(batch["images"], batch["image_size"])
            both = {**{k: v.numpy() for k, v in batch.items()}, **{k: v.numpy() for k, v in out.items()}}
            evaluator.add_batch(both)
            for i in range(min(len(both["num_boxes"]), SAMPLES - len(shown))):
                h, w = both["image_size"][i]
                k, n = both["num_detections"][i], both["num_boxes"][i]
                detections = (both["detection_boxes"][i][:k], both["detection_scores"][i][:k],
                              both["detection_classes"][i][:k])  # fmt: skip
                content = np.clip(both["images"][i][:h, :w], 0, 255)
                shown.append(drawing.draw(content, detections, self.source.class_names, both["boxes"][i][:n]))
        self.picture = drawing.grid(shown) if shown else None
        if self.picture is not None and self.config.model_dir and os.path.isdir(self.config.model_dir):
            drawing.save_png(self.picture, os.path.join(self.config.model_dir, "detections.png"))
        voc, coco = evaluator.voc(), evaluator.coco()
        self.last_evaluation = {"voc": voc, "coco": coco}
        values = {
            "mAP50": voc["mAP@0.5"],
            "AP": coco["AP"],
            "AP50": coco["AP50"],
            "AP75": coco["AP75"],
            "examples": len(evaluator),
        }
        return {k: (0.0 if isinstance(v, float) and np.isnan(v) else v) for k, v in values.items()}

    def sample_images(self, batch):
        return batch["images"]

    def export(self, run_dir, export_dir, name=None):
        from trainers.detection.export import export_detector

        # The checkpoint holds the whole backbone: the copy builds without fetching its weights again.
        builder = type(self)(dataclasses.replace(self.config, backbone_weights=None))
        return export_detector(run_dir.path, export_dir, name=name, build=builder.build_model)


def _copy_backbone(backbone, path, model_name):
    """Backbone weights from a classification run of ours (`path`: its model dir or an export of it)."""
    from trainers import run_dir

    run_dir.copy_weights(path, backbone, model_name, "--backbone-weights")
