"""Detection data specs (`--data`) -> a source with class_names, examples(split), table(split), describe(split)."""

import os

from trainers.data.errors import DataError

FORMS = ("voc:DIR", "coco:DIR", "tfds:voc/2007", "tfds:coco/2017", "shapes[:N]")


class Splits:
    """The loop's "train"/"validation" -> a source's own split names."""

    def __init__(self, source, train, validation):
        self.source, self.names = source, {"train": train, "validation": validation}

    def __getattr__(self, name):
        return getattr(self.source, name)

    def examples(self, split):
        return self.source.examples(self.names[split])

    def max_boxes(self, split):
        return self.source.max_boxes(self.names[split])

    def table(self, split, max_boxes=None):
        return self.source.table(self.names[split], max_boxes)

    def describe(self, split):
        return self.source.describe(self.names[split])


def open_source(spec, image_size, seed=0, data_dir=None, download=False):
    """`voc:DIR` (trains on trainval and evaluates on test when DIR has a test split, else train and val),
    `coco:DIR` (its train* and val* splits), `tfds:NAME` (converted once to the COCO layout, see
    trainers.detection.tfds_source) or `shapes[:N]` (N generated images of `image_size` pixels)."""
    kind, _, rest = spec.partition(":")
    if kind == "shapes":
        from trainers.detection.shapes import DEFAULT_IMAGES, ShapesSource

        try:
            count = int(rest) if rest else DEFAULT_IMAGES
        except ValueError:
            count = 0
        if count < 1:
            raise DataError(f"--data {spec}: expected shapes or shapes:N with N a whole number of images >= 1.")
        source = ShapesSource(count, image_size, seed)
        return Splits(source, "train", "val")
    if kind == "voc":
        from trainers.detection.voc import VocSource

        if not rest:
            raise DataError(f"--data {spec}: name the folder, e.g. voc:/data/VOCdevkit/VOC2007.")
        if not os.path.isdir(rest):
            raise DataError(f"--data {spec}: {rest} is not a directory.")
        source = VocSource(rest)
        present = source.splits()
        if "test" in present and "trainval" in present:
            return Splits(source, "trainval", "test")
        return Splits(source, "train", "val")
    if kind == "tfds":
        from trainers.detection.coco import CocoSource
        from trainers.detection.tfds_source import open_tfds

        return Splits(CocoSource(open_tfds(rest, data_dir, download)), "train", "validation")
    if kind == "coco":
        from trainers.detection.coco import CocoSource

        if not rest or not os.path.isdir(rest):
            raise DataError(f"--data {spec}: name an existing folder, e.g. coco:/data/coco (annotations/ inside).")
        source = CocoSource(rest)
        present = source.splits()
        train = next((s for s in present if s.startswith("train")), None)
        validation = next((s for s in present if s.startswith("val")), None)
        if not train or not validation:
            raise DataError(
                f"--data {spec}: needs a train* and a val* split in annotations/ (found: {', '.join(present)})."
            )
        return Splits(source, train, validation)
    raise DataError(f"--data {spec}: detection reads {', '.join(FORMS)}.")
