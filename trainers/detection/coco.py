"""COCO detection data (`--data coco:DIR`): the instances JSON and its images, read once, checked, counted.

Layout (as the 2017 release unpacks):
    DIR/annotations/instances_<split>.json    split: train2017, val2017 (any name with its image folder)
    DIR/<split>/<file_name>                   the images the JSON lists

Classes are the JSON's categories in id order (80 for COCO, ids 1-90 with gaps), as 0-based ids.
COCO boxes are [x, y, width, height] in pixels of continuous edges; read as normalised yxyx.
`iscrowd` regions are kept as "difficult" boxes: not trained on, and ignored by the evaluation (what
pycocotools does with them). Bad annotations get VOC's rules (trainers.detection.voc): boxes partly outside
the image are clipped, boxes outside it, of zero area, with an unknown category or a malformed bbox are
bad objects; images without a positive size or whose file is missing are bad images; more than 1 % stops.
"""

import json
import os

import numpy as np

from trainers.data.bad_images import BAD_FRACTION
from trainers.data.errors import DataError
from trainers.detection.voc import AnnotatedSource, Record, Report

LAYOUT = (
    "expected the COCO layout: DIR/annotations/instances_<split>.json (e.g. instances_train2017.json) and "
    "the images in DIR/<split>/"
)


class CocoSource(AnnotatedSource):
    """The annotations of `coco:DIR`, split by split; the same interface as VocSource."""

    def __init__(self, directory, threshold=BAD_FRACTION):
        super().__init__()
        self.root = directory
        self.source = f"coco:{directory}"
        self.threshold = threshold
        if not os.path.isdir(os.path.join(directory, "annotations")):
            raise DataError(f"{self.source}: no annotations/ directory; {LAYOUT}.")
        self._json = {}
        present = self.splits()
        if not present:
            raise DataError(f"{self.source}: no annotations/instances_<split>.json; {LAYOUT}.")
        categories = sorted(self._load(present[0])["categories"], key=lambda c: c["id"])
        self.category_ids = [int(c["id"]) for c in categories]
        self.class_names = tuple(str(c["name"]) for c in categories)

    def splits(self):
        """Splits with an instances JSON, train first."""
        folder = os.path.join(self.root, "annotations")
        names = [f[len("instances_") : -len(".json")] for f in os.listdir(folder)]
        names = [n for n in names if f"instances_{n}.json" in os.listdir(folder)]
        return sorted(names, key=lambda n: (not n.startswith("train"), n))

    def _load(self, split):
        if split not in self._json:
            path = os.path.join(self.root, "annotations", f"instances_{split}.json")
            if not os.path.isfile(path):
                present = ", ".join(self.splits()) or "none"
                raise DataError(f"{self.source}: no annotations/instances_{split}.json (present: {present}); {LAYOUT}.")
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
            except ValueError as error:
                raise DataError(
                    f"{self.source}: annotations/instances_{split}.json is not valid JSON: {error}"
                ) from None
            missing = [k for k in ("images", "annotations", "categories") if k not in data]
            if missing:
                raise DataError(f"{self.source}: instances_{split}.json has no {', '.join(missing)} list; {LAYOUT}.")
            self._json[split] = data
        return self._json[split]

    def _read(self, split):
        data = self._load(split)
        index = {cid: i for i, cid in enumerate(self.category_ids)}
        by_image = {}
        for annotation in data["annotations"]:
            by_image.setdefault(annotation.get("image_id"), []).append(annotation)
        report = Report(f"{self.source} {split}")
        records = []
        for image in data["images"]:
            report.images += 1
            name = str(image.get("file_name", image.get("id")))
            height, width = int(image.get("height") or 0), int(image.get("width") or 0)
            if height <= 0 or width <= 0:
                report.bad(name, "no positive height and width", True)
                continue
            path = os.path.join(self.root, split, str(image.get("file_name", "")))
            if not os.path.isfile(path):
                report.bad(name, f"no image {split}/{image.get('file_name')}", True)
                continue
            boxes, classes, crowd = [], [], []
            for number, annotation in enumerate(by_image.get(image.get("id"), []), start=1):
                report.objects += 1
                where = f"annotation {annotation.get('id', number)}"
                category = annotation.get("category_id")
                if category not in index:
                    report.bad(name, f"{where}: unknown category {category!r}", False)
                    continue
                try:
                    x, y, w, h = (float(v) for v in annotation["bbox"])
                except (KeyError, TypeError, ValueError):
                    report.bad(name, f"{where}: no numeric bbox [x, y, width, height]", False)
                    continue
                if not (w > 0 and h > 0):
                    report.bad(name, f"{where}: zero or negative area", False)
                    continue
                x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
                if not (x2 > x1 and y2 > y1):
                    report.bad(name, f"{where}: box outside the {width}x{height} image", False)
                    continue
                report.clipped += (x1, y1, x2, y2) != (x, y, x + w, y + h)
                boxes.append((y1 / height, x1 / width, y2 / height, x2 / width))
                classes.append(index[category])
                crowd.append(bool(annotation.get("iscrowd", 0)))
            report.difficult += sum(crowd)
            report.empty += not boxes
            records.append(
                Record(
                    image_id=str(image.get("id")),
                    path=path,
                    height=height,
                    width=width,
                    boxes=np.array(boxes, np.float32).reshape(-1, 4),
                    classes=np.array(classes, np.int32),
                    difficult=np.array(crowd, bool),
                )
            )
        return records, report
