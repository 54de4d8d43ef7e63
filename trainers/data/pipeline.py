"""The shared tf.data pipeline: one epoch of undecoded elements in, batches of (images, labels) out.

Every source only says how to list and parse its elements (a Stream); skipping bad images, counting them,
seeding augmentation, batching and prefetching happen here, the same way for all of them.
"""

import dataclasses
import zlib
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from trainers.data import augment as aug
from trainers.data.validity import looks_decodable

AUTOTUNE = tf.data.AUTOTUNE
NAMES_PER_GAP = 10  # at most this many names resolved for images lost to decode errors in one gap


@dataclasses.dataclass(frozen=True)
class Stream:
    """One epoch of one input pipeline, before decoding.

    elements: already sharded and, when training, shuffled; nothing expensive has happened yet, so
        skipping elements here is cheap.
    parse: element -> dict with "name" (string), "label" (int, 0-based), "bbox" ([n, 4] float) and either
        "data" (encoded image bytes) or "image" (uint8 HWC).
    name_of: position in `elements` -> readable name, for images lost to errors the cheap checks missed.
    """

    elements: tf.data.Dataset
    parse: Callable
    name_of: Callable[[int], str]


def derive_seed(*parts):
    """A 32-bit seed from ints and strings, stable across processes (unlike hash())."""
    words = [p % 2**32 if isinstance(p, int) else zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def _zeros_like_spec(spec):
    return tf.zeros([d or 0 for d in spec.shape], spec.dtype)


def _with_end_marker(elements):
    """Flags every element False and appends one True element, so losses at the very end are seen too."""
    dummy = tf.nest.map_structure(_zeros_like_spec, elements.element_spec)
    flagged = tf.data.Dataset.zip((tf.data.Dataset.from_tensors(False).repeat(), elements))
    return flagged.concatenate(tf.data.Dataset.from_tensors((True, dummy)))


def build(
    stream,
    *,
    bad_images,
    batch_size,
    image_size,
    augment,
    training,
    aug_seed,
    skip,
    num_classes,
    label_hint,
):
    """Batches of (float32 [b, s, s, 3] in 0..255, int32 [b]) from `stream`.

    Bad images are caught twice: the cheap byte checks route them around the decoder (and name them);
    anything that still fails is dropped by ignore_errors and noticed as a gap in the element positions.
    """
    size = image_size

    def load(index, item):
        is_end, raw = item

        def real():
            example = stream.parse(raw)
            ok = looks_decodable(example["data"]) if "data" in example else tf.constant(True)
            seed = tf.stack([tf.constant(aug_seed, tf.int64), index])

            def pixels():
                if training:
                    return aug.train_image(example, augment, size, seed)
                return aug.eval_image(example, augment, size)

            image = tf.cond(ok, pixels, lambda: tf.zeros([size, size, 3], tf.float32))
            name = tf.convert_to_tensor(example["name"])
            unnamed = tf.strings.join([f"{bad_images.source} element #", tf.strings.as_string(index)])
            name = tf.where(tf.equal(name, ""), unnamed, name)
            return image, tf.cast(example["label"], tf.int64), name, ok

        def end():
            return tf.zeros([size, size, 3]), tf.constant(-1, tf.int64), tf.constant(""), tf.constant(False)

        image, label, name, ok = tf.cond(is_end, end, real)
        image = tf.ensure_shape(image, [size, size, 3])
        return {"index": index, "image": image, "label": label, "name": name, "ok": ok, "end": is_end}

    def find_gaps(previous, element):
        lost = element["index"] - previous - 1
        return element["index"], dict(element, lost=lost, lost_from=previous + 1)

    def report(name, ok, is_end, lost_from, lost):
        lost_from, lost = int(lost_from), int(lost)
        names = [stream.name_of(i) for i in range(lost_from, lost_from + min(lost, NAMES_PER_GAP))]
        count = lost
        if not ok and not is_end:
            names.append(name.numpy().decode("utf-8", "replace"))
            count += 1
        if count:
            bad_images.record(names, count)
        return bool(ok)

    def keep(element):
        fine = element["ok"] & tf.equal(element["lost"], 0)
        args = [element[k] for k in ("name", "ok", "end", "lost_from", "lost")]
        return tf.cond(fine, lambda: tf.constant(True), lambda: tf.py_function(report, args, Tout=tf.bool))

    def account(images, labels):
        counted = tf.py_function(bad_images.note_good, [tf.shape(labels)[0]], Tout=tf.int32)
        checks = [
            tf.debugging.assert_non_negative(labels, message=f"label below 0; {label_hint}"),
            tf.debugging.assert_less(
                labels,
                tf.constant(num_classes, tf.int64),
                message=f"label not below num_classes={num_classes}; {label_hint}",
            ),
        ]
        with tf.control_dependencies([counted, *checks]):
            return tf.identity(images), tf.cast(labels, tf.int32)

    ds = _with_end_marker(stream.elements).enumerate()
    if skip:
        ds = ds.skip(skip)
    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors()
    ds = ds.scan(tf.constant(skip - 1, tf.int64), find_gaps)
    ds = ds.filter(keep)
    ds = ds.map(lambda e: (e["image"], e["label"]))
    # Count the last partial batch as seen even when training drops it, so the bad fraction stays exact.
    ds = ds.batch(batch_size)
    ds = ds.map(account, num_parallel_calls=AUTOTUNE, deterministic=True)
    if training:
        ds = ds.filter(lambda images, labels: tf.equal(tf.shape(labels)[0], batch_size))
        shape = [batch_size, size, size, 3]
        ds = ds.map(lambda images, labels: (tf.ensure_shape(images, shape), tf.ensure_shape(labels, shape[:1])))
    return ds.prefetch(AUTOTUNE)
