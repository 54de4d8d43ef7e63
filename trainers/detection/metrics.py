"""Detection metrics on the host: PASCAL VOC AP (the devkit's rules) and COCO AP through pycocotools.

`DetectionEvaluator` accumulates ground truth and detections image by image (numpy, normalised yxyx
boxes, 0-based class ids), then reports both:
- VOC: per-class AP at IoU > 0.5 and their mean, by default the VOC2007 11-point interpolation the
  paper's tables use (`use_07_metric=False`: the VOC2010+ area under the precision envelope). As the
  devkit's voc_eval: detections are taken by descending score; one whose best-overlapping box (same
  class, same image) is `difficult` counts neither as TP nor FP; a second detection of an already
  found box is a FP; difficult boxes are not in the recall's denominator. A class without any
  non-difficult box has no AP (NaN) and is left out of the mean.
- COCO: mAP@[.5:.95], @.5, @.75, small/medium/large and AR@1/10/100 from pycocotools' COCOeval,
  on absolute pixel boxes (the <size> of each image), not re-implemented here. Difficult boxes are
  given to it as `iscrowd` regions, pycocotools' only way to ignore a box: detections on them are
  neither TP nor FP, as in VOC.

IoU here is of continuous boxes, with no "+1": the VOC reader's [xmin - 1, xmax] edges already give the
devkit's integer-box IoU.
"""

import contextlib
import io

import numpy as np

from trainers.detection.boxes import to_coco_xywh

COCO_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def voc_ap(recall, precision, use_07_metric=True):
    """AP from a recall/precision curve (the devkit's voc_ap): 11-point (VOC2007) or area (VOC2010+)."""
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if use_07_metric:
        points = [precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in np.linspace(0, 1, 11)]
        return float(np.mean(points))
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the precision envelope
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def iou_matrix(a, b):
    """IoU of yxyx boxes [N, 4] x [M, 4] -> [N, M] (numpy float64; 0 where the union is empty)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    top, left = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    bottom, right = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(bottom - top, 0, None) * np.clip(right - left, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


class DetectionEvaluator:
    """Accumulates a validation pass (host side) and computes VOC and COCO numbers from it."""

    def __init__(self, class_names, iou_threshold=0.5, use_07_metric=True, difficult_as_crowd=True):
        self.class_names = tuple(class_names)
        self.iou_threshold = iou_threshold
        self.use_07_metric = use_07_metric
        self.difficult_as_crowd = difficult_as_crowd
        self.images = []  # (image_id, height, width)
        self.ground_truth = []  # per image: (boxes [n, 4], classes [n], difficult [n])
        self.detections = []  # per image: (boxes [k, 4], scores [k], classes [k])

    def __len__(self):
        return len(self.images)

    def add(self, image_id, height, width, gt_boxes, gt_classes, gt_difficult, boxes, scores, classes):
        """One image: its size in pixels, its boxes (normalised yxyx) and its detections (same format)."""
        gt_classes = np.asarray(gt_classes, np.int64).reshape(-1)
        difficult = np.zeros(len(gt_classes), bool) if gt_difficult is None else np.asarray(gt_difficult, bool)
        self.images.append((image_id, int(height), int(width)))
        self.ground_truth.append((np.asarray(gt_boxes, np.float64).reshape(-1, 4), gt_classes, difficult.reshape(-1)))
        self.detections.append(
            (
                np.asarray(boxes, np.float64).reshape(-1, 4),
                np.asarray(scores, np.float64).reshape(-1),
                np.asarray(classes, np.int64).reshape(-1),
            )
        )

    def add_batch(self, batch):
        """A padded batch as numpy, e.g. an eval step's outputs gathered to the host: keys image_id, height,
        width, boxes, classes, difficult, num_boxes (ground truth) and detection_boxes, detection_scores,
        detection_classes, num_detections (the export's names)."""
        for i in range(len(batch["num_boxes"])):
            n, k = int(batch["num_boxes"][i]), int(batch["num_detections"][i])
            image_id = batch["image_id"][i]
            self.add(
                image_id.decode() if isinstance(image_id, bytes) else image_id,
                batch["height"][i],
                batch["width"][i],
                batch["boxes"][i][:n],
                batch["classes"][i][:n],
                batch["difficult"][i][:n] if "difficult" in batch else None,
                batch["detection_boxes"][i][:k],
                batch["detection_scores"][i][:k],
                batch["detection_classes"][i][:k],
            )

    # -- VOC ------------------------------------------------------------------------------------------
    def class_ap(self, class_id):
        """(AP, number of non-difficult boxes) of one class; AP is NaN when that number is 0."""
        found, npos = {}, 0
        for index, (boxes, classes, difficult) in enumerate(self.ground_truth):
            mine = classes == class_id
            found[index] = (boxes[mine], difficult[mine], np.zeros(int(mine.sum()), bool))
            npos += int((~difficult[mine]).sum())
        dets = [
            (score, index, box)
            for index, (boxes, scores, classes) in enumerate(self.detections)
            for box, score, c in zip(boxes, scores, classes, strict=True)
            if c == class_id
        ]
        if npos == 0:
            return float("nan"), 0
        dets.sort(key=lambda d: -d[0])  # stable: ties keep the order they were added in
        tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
        for d, (_, index, box) in enumerate(dets):
            gt_boxes, difficult, taken = found[index]
            if len(gt_boxes):
                overlaps = iou_matrix(box[None], gt_boxes)[0]
                j = int(np.argmax(overlaps))
                if overlaps[j] > self.iou_threshold:
                    if difficult[j]:
                        continue  # neither TP nor FP
                    if not taken[j]:
                        tp[d], taken[j] = 1.0, True
                    else:
                        fp[d] = 1.0
                    continue
            fp[d] = 1.0
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / npos
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        return voc_ap(recall, precision, self.use_07_metric), npos

    def voc(self):
        """{"mAP@0.5": mean over classes with boxes, "AP@0.5": {class name: AP (NaN without boxes)}}."""
        per_class = {name: self.class_ap(c)[0] for c, name in enumerate(self.class_names)}
        scored = [ap for ap in per_class.values() if not np.isnan(ap)]
        key = f"{self.iou_threshold:g}"
        return {f"mAP@{key}": float(np.mean(scored)) if scored else float("nan"), f"AP@{key}": per_class}

    # -- COCO -----------------------------------------------------------------------------------------
    def coco_dicts(self):
        """(ground truth as a COCO dataset dict, detections as a COCO results list): absolute xywh pixels."""
        images, annotations, results = [], [], []
        for number, ((_, height, width), (gt_boxes, gt_classes, difficult), (boxes, scores, classes)) in enumerate(
            zip(self.images, self.ground_truth, self.detections, strict=True), start=1
        ):
            images.append({"id": number, "height": height, "width": width})
            for box, c, hard in zip(to_coco_xywh(gt_boxes, height, width), gt_classes, difficult, strict=True):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": number,
                        "category_id": int(c) + 1,
                        "bbox": [float(v) for v in box],
                        "area": float(box[2] * box[3]),
                        "iscrowd": int(bool(hard) and self.difficult_as_crowd),
                    }
                )
            for box, score, c in zip(to_coco_xywh(boxes, height, width), scores, classes, strict=True):
                results.append(
                    {
                        "image_id": number,
                        "category_id": int(c) + 1,
                        "bbox": [float(v) for v in box],
                        "score": float(score),
                    }
                )
        categories = [{"id": c + 1, "name": name} for c, name in enumerate(self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}, results

    def coco(self):
        """{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", ...: pycocotools' numbers (NaN where it has
        -1: no boxes of that size), "AP per class": {name: AP@[.5:.95]}, "summary": its printed table}."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        dataset, results = self.coco_dicts()
        if not results or not dataset["annotations"]:
            nothing = {name: 0.0 if dataset["annotations"] else float("nan") for name in COCO_NAMES}
            return {**nothing, "AP per class": {n: nothing["AP"] for n in self.class_names}, "summary": ""}
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # pycocotools prints its progress and its table
            truth = COCO()
            truth.dataset = dataset
            truth.createIndex()
            evaluation = COCOeval(truth, truth.loadRes(results), iouType="bbox")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        stats = [float("nan") if s < 0 else float(s) for s in evaluation.stats]
        # precision: [IoU thresholds, recall points, classes, area ranges, max dets]; -1 where undefined.
        precision = evaluation.eval["precision"][:, :, :, 0, -1]
        per_class = {}
        for c, name in enumerate(self.class_names):
            p = precision[:, :, c]
            per_class[name] = float(p[p > -1].mean()) if (p > -1).any() else float("nan")
        summary = "\n".join(line for line in printed.getvalue().splitlines() if line.lstrip().startswith("Average"))
        return {**dict(zip(COCO_NAMES, stats, strict=True)), "AP per class": per_class, "summary": summary}

    def result(self):
        """VOC and COCO numbers together, as one flat-ish dict for logs and TensorBoard."""
        return {**self.voc(), "coco": self.coco()}
