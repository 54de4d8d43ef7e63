"""PASCAL VOC detection data (`--data voc:DIR`): the devkit's XML annotations, read once, checked, counted.

Layout (the devkit's; DIR may also be a folder holding exactly one VOC20xx/, as the tarballs unpack):
    DIR/Annotations/<id>.xml          one per image: <size>, and an <object> per box
    DIR/JPEGImages/<id>.jpg
    DIR/ImageSets/Main/<split>.txt    image ids, one a line; split is train, val, trainval or test

Each image yields its encoded JPEG, its boxes as normalised yxyx, 0-based class ids in VOC_CLASSES
order, the `difficult` flags (kept: VOC evaluation ignores those objects, training usually skips them)
and its id.

Coordinates: VOC boxes are 1-based inclusive pixel indices, so a box covers pixels xmin..xmax. As
continuous edges that is [xmin - 1, xmax] (Detectron2's reading); divided by the <size> width/height.
With these edges a plain IoU equals the devkit's "+1" IoU on integer boxes.

Bad annotations, and the rule for each:
- a box partly outside the image is clipped to it and kept (counted as clipped, not bad);
- a box entirely outside the image, with zero or negative width or height, with a class name not in
  the class list, or without four numeric coordinates is skipped: a bad object;
- an image whose XML is missing or malformed, whose <size> is missing or not positive, or whose JPEG
  file is missing is skipped whole: a bad image.
Bad ones are logged, counted and named; more than 1 % bad images (of the split's ids) or bad objects
(of its objects) stops with a DataError naming the first ones, like trainers.data.bad_images.
Images left with no objects are kept (a pure negative image is valid training and evaluation data).
"""

import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from trainers.data.bad_images import BAD_FRACTION, LOGGER_NAME, MAX_NAMES
from trainers.data.errors import DataError

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
SPLITS = ("train", "val", "trainval", "test")
LAYOUT = (
    "expected the PASCAL VOC layout: DIR/Annotations/<id>.xml, DIR/JPEGImages/<id>.jpg and "
    "DIR/ImageSets/Main/{train,val,trainval,test}.txt (image ids, one a line); "
    "DIR may also be the folder holding VOC2007/"
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".JPG", ".JPEG", ".png", ".PNG")

log = logging.getLogger(LOGGER_NAME)


@dataclass(frozen=True)
class Record:
    """One image's annotation. boxes: [n, 4] float32 normalised yxyx; classes: [n] int32; difficult: [n] bool."""

    image_id: str
    path: str
    height: int
    width: int
    boxes: np.ndarray
    classes: np.ndarray
    difficult: np.ndarray


@dataclass
class Report:
    """What reading one split found: counts, and the first bad ones by name with the reason."""

    source: str
    images: int = 0  # ids listed in the split file
    objects: int = 0  # <object> elements in the annotations read (kept + bad)
    bad_images: int = 0
    bad_objects: int = 0
    clipped: int = 0
    difficult: int = 0
    empty: int = 0  # images kept without any object
    names: list = field(default_factory=list)

    def bad(self, name, reason, whole_image):
        if whole_image:
            self.bad_images += 1
        else:
            self.bad_objects += 1
        if len(self.names) < MAX_NAMES:
            self.names.append(f"{name} ({reason})")
        kind = "image" if whole_image else "object"
        log.warning("%s: skipped %s %s: %s", self.source, kind, name, reason)

    def check(self, threshold=BAD_FRACTION):
        """Raises DataError when more than `threshold` of the images or of the objects were bad."""
        too_many_images = self.bad_images > threshold * self.images
        too_many_objects = self.bad_objects > threshold * max(self.objects, 1)
        if too_many_images or too_many_objects:
            raise DataError(
                f"{self.source}: {self.bad_images} of {self.images} images and {self.bad_objects} of "
                f"{self.objects} objects could not be used, more than the {threshold:.0%} allowed; first bad: "
                f"{'; '.join(self.names)}. Fix or remove those annotations (or image files), or list only "
                "good ids in the ImageSets file."
            )

    def lines(self):
        return [
            f"{self.source}: {self.images - self.bad_images} images, {self.objects - self.bad_objects} objects "
            f"({self.difficult} difficult), {self.empty} images without objects",
            f"{self.source}: skipped {self.bad_images} bad images and {self.bad_objects} bad objects, "
            f"clipped {self.clipped} boxes to their image",
        ]


def find_root(directory):
    """The folder holding Annotations/: DIR itself, or its single VOC20xx/ (or VOCdevkit/VOC20xx/) folder."""
    if not os.path.isdir(directory):
        raise DataError(f"voc:{directory}: no such directory; {LAYOUT}.")
    if os.path.isdir(os.path.join(directory, "Annotations")):
        return directory
    candidates = []
    for parent in (directory, os.path.join(directory, "VOCdevkit")):
        if os.path.isdir(parent):
            for name in sorted(os.listdir(parent)):
                if name.startswith("VOC") and os.path.isdir(os.path.join(parent, name, "Annotations")):
                    candidates.append(os.path.join(parent, name))
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise DataError(
            f"voc:{directory}: holds {len(candidates)} VOC folders ({', '.join(candidates)}); name one of them."
        )
    raise DataError(f"voc:{directory}: no Annotations/ directory; {LAYOUT}.")


def _number(element, tag):
    return float(element.find(tag).text.strip())


def parse(xml_text, class_names=VOC_CLASSES):
    """Parses one annotation. Returns (height, width, objects, problems, clipped).

    objects: list of (box normalised yxyx, class id, difficult); problems: (reason, whole_image) for each
    skipped object, or one whole-image problem. Raises nothing for bad content.
    """
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as e:
        return 0, 0, [], [(f"malformed XML: {e}", True)], 0
    try:
        size = root.find("size")
        width, height = int(float(size.find("width").text)), int(float(size.find("height").text))
    except (AttributeError, TypeError, ValueError):
        width = height = 0
    if width <= 0 or height <= 0:
        return 0, 0, [], [("no positive <size> width and height", True)], 0
    index = {name: i for i, name in enumerate(class_names)}
    objects, problems, clipped = [], [], 0
    for number, obj in enumerate(root.findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        where = f"object {number}"
        if name not in index:
            problems.append((f"{where}: unknown class {name!r}", False))
            continue
        try:
            box = obj.find("bndbox")
            x1, y1 = _number(box, "xmin") - 1.0, _number(box, "ymin") - 1.0
            x2, y2 = _number(box, "xmax"), _number(box, "ymax")
        except (AttributeError, TypeError, ValueError):
            problems.append((f"{where} ({name}): no numeric bndbox xmin/ymin/xmax/ymax", False))
            continue
        if not (x2 > x1 and y2 > y1):
            problems.append((f"{where} ({name}): zero or negative area", False))
            continue
        cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
        if not (cx2 > cx1 and cy2 > cy1):
            problems.append((f"{where} ({name}): box outside the {width}x{height} image", False))
            continue
        clipped += (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2)
        try:
            difficult = bool(int((obj.findtext("difficult") or "0").strip()))
        except ValueError:
            difficult = False
        objects.append(((cy1 / height, cx1 / width, cy2 / height, cx2 / width), index[name], difficult))
    return height, width, objects, problems, clipped


def table_of(records, max_boxes):
    """Records as numpy columns, one row per image, in order:

    path: the image file; boxes [n, max_boxes, 4] normalised yxyx, zero-padded; classes [n, max_boxes]
    int32, -1 padded; difficult [n, max_boxes] bool; num_boxes; height, width (of the annotation's size);
    image_id. Images with more objects keep the first max_boxes.
    """
    n = len(records)
    boxes = np.zeros((n, max_boxes, 4), np.float32)
    classes = np.full((n, max_boxes), -1, np.int32)
    difficult = np.zeros((n, max_boxes), bool)
    counts = np.zeros((n,), np.int32)
    for i, r in enumerate(records):
        k = min(len(r.classes), max_boxes)
        boxes[i, :k], classes[i, :k], difficult[i, :k], counts[i] = r.boxes[:k], r.classes[:k], r.difficult[:k], k
    return {
        "path": np.array([r.path for r in records]),
        "boxes": boxes,
        "classes": classes,
        "difficult": difficult,
        "num_boxes": counts,
        "height": np.array([r.height for r in records], np.int32),
        "width": np.array([r.width for r in records], np.int32),
        "image_id": np.array([r.image_id for r in records]),
    }


class AnnotatedSource:
    """What a source of annotation files shares: each split read once by `_read(split)` -> (records, report),
    checked against the 1 % rule, then served as counts, numpy columns and log lines."""

    threshold = BAD_FRACTION

    def __init__(self):
        self._records = {}
        self.reports = {}

    def records(self, split):
        """The usable images of `split`, in the annotation's order."""
        if split not in self._records:
            records, report = self._read(split)
            report.check(self.threshold)
            self._records[split], self.reports[split] = records, report
        return self._records[split]

    def examples(self, split):
        return len(self.records(split))

    def max_boxes(self, split):
        return max((len(r.classes) for r in self.records(split)), default=0)

    def table(self, split, max_boxes=None):
        """The split as numpy columns (see `table_of`); `max_boxes` defaults to the split's largest count."""
        return table_of(self.records(split), max_boxes or max(self.max_boxes(split), 1))

    def describe(self, split):
        self.records(split)
        return self.reports[split].lines()


class VocSource(AnnotatedSource):
    """The annotations of `voc:DIR`, split by split; `records(split)` reads and checks a split once."""

    def __init__(self, directory, class_names=VOC_CLASSES, threshold=BAD_FRACTION):
        super().__init__()
        self.root = find_root(directory)
        self.source = f"voc:{directory}"
        self.class_names = tuple(class_names)
        self.threshold = threshold
        for sub in ("JPEGImages", os.path.join("ImageSets", "Main")):
            if not os.path.isdir(os.path.join(self.root, sub)):
                raise DataError(f"{self.source}: no {sub}/ directory in {self.root}; {LAYOUT}.")

    def splits(self):
        """The split files present, in SPLITS order."""
        main = os.path.join(self.root, "ImageSets", "Main")
        return [s for s in SPLITS if os.path.isfile(os.path.join(main, f"{s}.txt"))]

    def _ids(self, split):
        path = os.path.join(self.root, "ImageSets", "Main", f"{split}.txt")
        if not os.path.isfile(path):
            present = ", ".join(f"{s}.txt" for s in self.splits()) or "none"
            raise DataError(
                f"{self.source}: no ImageSets/Main/{split}.txt for the {split!r} split (present: {present}); {LAYOUT}."
            )
        with open(path, encoding="utf-8") as f:
            # Main/<class>_<split>.txt files have "<id> <label>" lines; the plain split file has ids alone.
            ids = [line.split()[0] for line in f if line.strip()]
        if not ids:
            raise DataError(f"{self.source}: ImageSets/Main/{split}.txt lists no image ids.")
        return ids

    def _image_path(self, image_id, root):
        folder = os.path.join(self.root, "JPEGImages")
        for ext in IMAGE_EXTENSIONS:
            path = os.path.join(folder, image_id + ext)
            if os.path.isfile(path):
                return path
        named = (root.findtext("filename") or "").strip() if root is not None else ""
        if named and os.path.isfile(os.path.join(folder, named)):
            return os.path.join(folder, named)
        return None

    def _read(self, split):
        """(records, report) of `split` (train, val, trainval or test), in the split file's order."""
        report = Report(f"{self.source} {split}")
        records = []
        for image_id in self._ids(split):
            report.images += 1
            name = f"Annotations/{image_id}.xml"
            xml_path = os.path.join(self.root, "Annotations", f"{image_id}.xml")
            if not os.path.isfile(xml_path):
                report.bad(name, "no such file", True)
                continue
            with open(xml_path, "rb") as f:
                text = f.read()
            height, width, objects, problems, clipped = parse(text, self.class_names)
            whole = [reason for reason, whole_image in problems if whole_image]
            if whole:
                report.bad(name, whole[0], True)
                continue
            try:
                path = self._image_path(image_id, ET.fromstring(text))
            except ET.ParseError:
                path = None
            if path is None:
                report.bad(name, f"no image JPEGImages/{image_id}.jpg", True)
                continue
            report.objects += len(objects) + len(problems)
            for reason, _ in problems:
                report.bad(name, reason, False)
            report.clipped += clipped
            report.difficult += sum(d for _, _, d in objects)
            report.empty += not objects
            records.append(
                Record(
                    image_id=image_id,
                    path=path,
                    height=height,
                    width=width,
                    boxes=np.array([b for b, _, _ in objects], np.float32).reshape(-1, 4),
                    classes=np.array([c for _, c, _ in objects], np.int32),
                    difficult=np.array([d for _, _, d in objects], bool),
                )
            )
        return records, report

    def dataset(self, split, max_boxes=None):
        """tf.data of one dict per image, in split order: `table`'s columns, with the encoded file read into
        "image" (tf.string) in place of "path". Shuffle, decode and batch are the pipeline's."""

        def read(row):
            row = dict(row)
            row["image"] = tf.io.read_file(row.pop("path"))
            return row

        table = self.table(split, max_boxes)
        return tf.data.Dataset.from_tensor_slices(table).map(read, num_parallel_calls=tf.data.AUTOTUNE)
