"""Folders of class subfolders, the layout of ImageNet's train/ after extraction.

Files are listed once at open time; each epoch shuffles the list in NumPy, so a resumed epoch can skip file
names instead of decoded images, and a file that fails to decode can still be named.
"""

import logging
import os

import numpy as np
import tensorflow as tf

from trainers.data.bad_images import BAD_FRACTION, LOGGER_NAME, MAX_NAMES
from trainers.data.base import Source, class_names_for
from trainers.data.errors import DataError
from trainers.data.pipeline import Stream
from trainers.data.splits import SPLIT_SEED, epoch_order, holdout_count, split_indices
from trainers.data.validity import file_looks_decodable

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VALIDATION_DIRS = ("validation", "val", "test")  # the first one present is the validation split
SPLIT_DIRS = ("train", *VALIDATION_DIRS)
SCAN_SAMPLE = 2000  # files whose bytes are checked at open time, to refuse a mostly broken folder at once
LAYOUT = (
    "expected DIR/<class_name>/<image>.jpg (or .jpeg/.png), "
    "like ImageNet's train/n01440764/n01440764_10026.JPEG; "
    "optionally split as DIR/train/<class_name>/... and DIR/validation/<class_name>/... (or DIR/val/ or DIR/test/)"
)
SPLIT_NAMES = "train/ and one of validation/, val/ or test/"


def _subdirs(path):
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _images_in(path):
    return sorted(e.path for e in os.scandir(path) if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES))


def _list_classes(root, spec):
    """(class names, file paths, labels) of one split folder, with errors that show the layout."""
    classes = _subdirs(root)
    if not classes:
        loose = len(_images_in(root))
        found = f"{loose} images directly in it" if loose else "nothing usable in it"
        raise DataError(f"{spec}: {root} has no class subfolders ({found}); {LAYOUT}")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = _images_in(os.path.join(root, name))
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DataError(
            f"{spec}: no {'/'.join(IMAGE_SUFFIXES)} images in the {len(classes)} class subfolders of {root} "
            f"(first: {classes[0]!r}); {LAYOUT}"
        )
    return classes, paths, labels


def _split_folders(root, spec, validation_split):
    """(train dir, validation dir or None) when `root` is split into train/ and validation/ (or val/ or test/)
    folders of classes; None when its subfolders are the classes themselves."""
    subdirs = _subdirs(root)
    named = [d for d in subdirs if d in SPLIT_DIRS]
    if not any(_subdirs(os.path.join(root, d)) for d in named):
        return None  # no split folder holds class folders: the subfolders are classes (even one named test)
    classless = [d for d in named if not _subdirs(os.path.join(root, d))]
    if classless:
        loose = len(_images_in(os.path.join(root, classless[0])))
        raise DataError(
            f"{spec}: {root}/{classless[0]} has no class subfolders ({loose} images directly in it"
            f"{': an unlabelled test set?' if loose else ''}); in a split layout {SPLIT_NAMES} each hold "
            f"<class_name>/ folders. Sort its images into class folders, or move {classless[0]}/ out of {root} "
            "and hold out part of train/ with --validation-split."
        )
    others = [d for d in subdirs if d not in SPLIT_DIRS]
    if others:
        raise DataError(
            f"{spec}: {root} mixes split folders ({', '.join(d + '/' for d in named)}) with other folders "
            f"({', '.join(d + '/' for d in others[:5])}); only {SPLIT_NAMES} count as splits. Rename or move the "
            "others (classes belong inside train/ and the validation folder)."
        )
    if "train" not in named:
        raise DataError(
            f"{spec}: {root} has {', '.join(d + '/' for d in named)} but no train/; a split layout is "
            f"DIR/train/<class_name>/... with one of DIR/validation/, DIR/val/ or DIR/test/ for validation."
        )
    candidates = [d for d in VALIDATION_DIRS if d in named]
    if {"validation", "val"} <= set(candidates):
        raise DataError(
            f"{spec}: {root} has both validation/ and val/; which one validates is ambiguous. Keep one of them "
            "(test/ is read only when neither exists)."
        )
    if not candidates:
        return os.path.join(root, "train"), None
    chosen = candidates[0]
    notes = [f"{d}/ is not read" for d in candidates[1:]]
    if validation_split:
        notes.append(f"--validation-split {validation_split} is not used")
    logging.getLogger(LOGGER_NAME).info(
        "%s: training on train/, validating on %s/%s", spec, chosen, f" ({'; '.join(notes)})" if notes else ""
    )
    return os.path.join(root, "train"), os.path.join(root, chosen)


def _scan(paths, spec):
    """Refuses the folder now, not an epoch later, when a sample of its files is mostly unreadable."""
    if len(paths) > SCAN_SAMPLE:
        sample = np.sort(np.random.default_rng(SPLIT_SEED).choice(len(paths), SCAN_SAMPLE, replace=False))
        paths = [paths[i] for i in sample]
    bad = [p for p in paths if not file_looks_decodable(p)]
    if len(bad) > BAD_FRACTION * len(paths):
        raise DataError(
            f"{spec}: {len(bad)} of {len(paths)} checked images ({len(bad) / len(paths):.1%}) are empty, "
            f"truncated or not images, more than the {BAD_FRACTION:.0%} allowed; first bad: "
            f"{', '.join(bad[:MAX_NAMES])}"
        )
    if bad:
        logging.getLogger(LOGGER_NAME).warning("%s: %d unreadable images will be skipped: %s", spec, len(bad), bad)


class FolderSource(Source):
    """DIR/<class>/<image>; labels are the class folders' alphabetical positions.

    Split as DIR/train/ and DIR/validation/ (or val/, or test/), those are the splits. Without a validation
    folder, validation_split holds out a fixed random part (SPLIT_SEED, not the training seed), so every run
    validates on the same files.
    """

    label_hint = "labels come from the alphabetical order of the class folders"

    def __init__(self, root, *, validation_split=0, num_classes=None):
        spec = f"folder:{root}"
        if not os.path.exists(root):
            raise DataError(f"{spec}: {root} does not exist; {LAYOUT}")
        if not os.path.isdir(root):
            raise DataError(f"{spec}: {root} is not a directory; {LAYOUT}")
        split = _split_folders(root, spec, validation_split)
        train_dir, val_dir = split or (root, None)
        if val_dir:
            classes, train_paths, train_labels = _list_classes(train_dir, spec)
            val_classes, val_paths, val_labels = _list_classes(val_dir, spec)
            unknown = sorted(set(val_classes) - set(classes))
            if unknown:
                raise DataError(f"{spec}: {val_dir} has classes missing from {train_dir}: {unknown[:5]}; {LAYOUT}")
            index = {name: i for i, name in enumerate(classes)}
            val_labels = [index[val_classes[label]] for label in val_labels]
            self._files = {
                "train": (np.array(train_paths, dtype=object), np.array(train_labels, np.int64)),
                "validation": (np.array(val_paths, dtype=object), np.array(val_labels, np.int64)),
            }
        else:
            classes, paths, labels = _list_classes(train_dir, spec)
            paths, labels = np.array(paths, dtype=object), np.array(labels, np.int64)
            holdout = holdout_count(validation_split, len(paths), spec)
            train, validation = split_indices(len(paths), holdout)
            self._files = {split: (paths[i], labels[i]) for split, i in (("train", train), ("validation", validation))}
        super().__init__(spec, class_names_for(classes, num_classes, spec))
        _scan([p for files, _ in self._files.values() for p in files], spec)

    def _count(self, split):
        return len(self._files[split][0])

    def _stream(self, request):
        paths, labels = self._files[request.split]
        order = epoch_order(len(paths), request)
        paths, labels = paths[order], labels[order]

        def parse(item):
            path, label = item
            return {"data": tf.io.read_file(path), "label": label, "name": path, "bbox": tf.zeros([0, 4])}

        elements = tf.data.Dataset.from_tensor_slices((paths.astype(str), labels))
        return Stream(elements, parse, lambda i: str(paths[i]))
