"""The shared tf.data pipeline: one epoch of undecoded elements in, batches of (images, labels) out.

Every source only says how to list and parse its elements (a Stream); skipping bad images, counting them,
seeding augmentation, batching and prefetching happen here, the same way for all of them.
"""

import dataclasses
import logging
import zlib
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from trainers.data import augment as aug
from trainers.data.validity import looks_decodable

AUTOTUNE = tf.data.AUTOTUNE
NAMES_PER_GAP = 10  # at most this many names resolved for images lost to decode errors in one window
WINDOWS_IN_FLIGHT = 2  # windows decoded at once: the next one starts while the last images of one decode


@dataclasses.dataclass(frozen=True)
class Stream:
    """One epoch of one input pipeline, before decoding.

    elements: already sharded and, when training, shuffled; nothing expensive has happened yet, so
        skipping elements here is cheap.
    parse: element -> dict with "name" (string), "label" (int, 0-based), "bbox" ([n, 4] float) and either
        "data" (encoded image bytes) or "image" (uint8 HWC).
    name_of: position in `elements` -> readable name, for images lost to errors the cheap checks missed.
    check_length: optional (n, ended) -> None, raising DataError when the source's record count is wrong:
        called with the elements seen so far (n = last position + 1) after each window, and once more with
        ended=True when the elements run out.
    """

    elements: tf.data.Dataset
    parse: Callable
    name_of: Callable[[int], str]
    check_length: Callable[[int, bool], None] | None = None


def derive_seed(*parts):
    """A 32-bit seed from ints and strings, stable across processes (unlike hash())."""
    words = [p % 2**32 if isinstance(p, int) else zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def _empty_batch(spec):
    return {k: tf.zeros([0, *s.shape[1:]], s.dtype) for k, s in spec.items()}


def build(
    stream,
    *,
    bad_images,
    batch_size,
    image_size,
    augment,
    training,
    aug_seed,
    erasing=0.0,
    skip,
    num_classes,
    label_hint,
    batches_per_step=1,
    service=None,
):
    """Batches of (float32 [<=b, s, s, 3] in 0..255, int32 [<=b]) from `stream`.

    Batch k is always made of the stream elements [skip + k*b, skip + (k+1)*b), the window cut before
    anything is decoded, minus its bad images; so a bad image never shifts a later batch, and skipping
    k*b elements resumes exactly at batch k. A window of bad images only is left out (no empty batches);
    training also leaves out the last, partial window, and batches left over after the last complete
    group of `batches_per_step` (the replicas this pipeline feeds), so no replica ever gets an empty batch.

    Bad images are caught twice: the cheap byte checks route them around the decoder (and name them);
    anything that still fails is dropped by ignore_errors and noticed as a position missing from its window.

    service (trainers.data_service.Service): decode and augment on tf.data service workers instead, see
    `_served`; what this process does there is the bookkeeping and cutting whole batches.
    """
    size = image_size

    def load(index, raw):
        example = stream.parse(raw)
        ok = looks_decodable(example["data"]) if "data" in example else tf.constant(True)
        name = tf.convert_to_tensor(example["name"])
        unnamed = tf.strings.join([f"{bad_images.source} element #", tf.strings.as_string(index)])
        name = tf.where(tf.equal(name, ""), unnamed, name)
        # Seeded by the image, not its position in this pipeline: the same crops with 1 or N replicas.
        seed = tf.stack([tf.constant(aug_seed, tf.int64), tf.strings.to_hash_bucket_fast(name, 2**62)])

        def pixels():
            if training:
                return aug.train_image(example, augment, size, seed, erasing)
            return aug.eval_image(example, augment, size)

        image = tf.cond(ok, pixels, lambda: tf.zeros([size, size, 3], tf.float32))
        image = tf.ensure_shape(image, [size, size, 3])
        return {"index": index, "image": image, "label": tf.cast(example["label"], tf.int64), "name": name, "ok": ok}

    def decode_window(positions, raw):
        """One window of undecoded elements -> exactly one (its positions, batch of what decoded)."""
        raw = raw if isinstance(raw, tf.data.Dataset) else tf.data.Dataset.zip(raw)
        decoded = tf.data.Dataset.zip(positions, raw).map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
        survivors = decoded.ignore_errors().batch(batch_size)
        empty = tf.data.Dataset.from_tensors(_empty_batch(survivors.element_spec))
        return tf.data.Dataset.zip(positions.batch(batch_size), survivors.concatenate(empty).take(1))

    def report(positions, found, names, ok):
        """Records the window's bad images, named in stream order; returns how many there were."""
        found, ok = found.numpy(), ok.numpy()
        lost = np.setdiff1d(positions.numpy(), found)
        named = {int(i): stream.name_of(int(i)) for i in lost[:NAMES_PER_GAP]}
        named.update(
            (int(i), n.decode("utf-8", "replace")) for i, n in zip(found[~ok], names.numpy()[~ok], strict=True)
        )
        count = len(lost) + int(np.sum(~ok))
        bad_images.record([named[i] for i in sorted(named)], count)
        return count

    seen = {"end": skip}  # elements of the stream so far, as far as the windows accounted for tell

    def note(good, end):
        seen["end"] = int(end)
        stream.check_length(seen["end"], False)
        return bad_images.note_good(good)

    def finish(_):
        end, seen["end"] = seen["end"], skip  # ready for the next pass over this dataset
        stream.check_length(end, True)
        return 0

    def account(positions, batch):
        """Counts the window's good and bad images; runs one window at a time, so names come in order."""
        ok = batch["ok"]
        fine = tf.equal(tf.size(positions), tf.size(ok)) & tf.reduce_all(ok)
        args = [positions, batch["index"], batch["name"], ok]
        reported = tf.cond(fine, lambda: 0, lambda: tf.py_function(report, args, Tout=tf.int32))
        good = tf.reduce_sum(tf.cast(ok, tf.int32))
        if stream.check_length is None:
            counted = tf.py_function(bad_images.note_good, [good], Tout=tf.int32)
        else:  # the same one Python call per window, checking the count too
            counted = tf.py_function(note, [good, tf.reduce_max(positions) + 1], Tout=tf.int32)
        with tf.control_dependencies([reported, counted]):
            return tf.size(positions), tf.identity(ok), batch["image"], batch["label"]

    def select(window, ok, images, labels):
        """The good images of a window, and its size (training drops a partial last window)."""
        images, labels = tf.cond(
            tf.reduce_all(ok),
            lambda: (images, labels),
            lambda: (tf.boolean_mask(images, ok), tf.boolean_mask(labels, ok)),
        )
        checks = [
            tf.debugging.assert_non_negative(labels, message=f"label below 0; {label_hint}"),
            tf.debugging.assert_less(
                labels,
                tf.constant(num_classes, tf.int64),
                message=f"label not below num_classes={num_classes}; {label_hint}",
            ),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(images), tf.cast(labels, tf.int32), window

    def wanted(images, labels, window):
        nonempty = tf.size(labels) > 0
        return nonempty & tf.equal(window, batch_size) if training else nonempty

    if service is not None:
        ds = _served(stream, service, load, bad_images, batch_size, skip, training, select)
    else:
        ds = stream.elements.enumerate()
        if skip:
            ds = ds.skip(skip)
        ds = ds.window(batch_size).interleave(
            decode_window,
            cycle_length=WINDOWS_IN_FLIGHT,
            block_length=1,
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
        # Every window is counted, the last partial one too even when training drops it, so the bad fraction
        # stays exact; windows are dropped only after.
        ds = ds.map(account).map(select, num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.filter(wanted).map(lambda images, labels, window: (images, labels))
        if stream.check_length is not None:
            # After the last window: too few elements for the count. Yields nothing: batches are unchanged.
            ds = _then(ds, finish, size)
    if training and batches_per_step > 1:
        ds = ds.window(batches_per_step, drop_remainder=True).flat_map(tf.data.Dataset.zip)
    return ds.prefetch(AUTOTUNE)


def _served(stream, service, load, bad_images, batch_size, skip, training, select):
    """Batches decoded and augmented by tf.data service workers (dynamic sharding: each element of the epoch
    goes to exactly one of them), cut here into whole batches of `batch_size`.

    The workers cannot run this process's Python (the bad-image bookkeeping), so they send each image's
    name and whether it passed the cheap checks; this side counts and names those, and counts images the
    decoder dropped as the epoch's elements that never arrived. Batches are not the windows of the local
    pipeline (workers race), and a resumed epoch starts over (see below).
    """
    if skip:
        # Each worker would skip `skip` of its own share (the pipeline runs per worker, on its splits); the
        # elements already read cannot be left out without listing the rest here, which for TFRecords
        # means reading them. A resume is rare: read the epoch again, for the steps it has left.
        logging.getLogger("trainers.data").warning(
            "--data-service: the resumed epoch cannot skip the %d examples it already read; it reads the epoch "
            "from its start for the steps it has left.",
            skip,
        )
        skip = 0
    remote = stream.elements
    unknown = tf.constant(-1, tf.int64)  # positions mean nothing across workers; names come from the source
    remote = remote.map(lambda raw: load(unknown, raw), num_parallel_calls=AUTOTUNE).ignore_errors()
    ds = service.distribute(remote.batch(batch_size))
    expected = int(stream.elements.cardinality())
    expected = expected if expected >= 0 else None
    arrived = {"n": 0}

    def note(names, ok, size):
        ok = ok.numpy()
        if not ok.all():
            bad_images.record([n.decode("utf-8", "replace") for n in names.numpy()[~ok]], int((~ok).sum()))
        arrived["n"] += int(size)
        return bad_images.note_good(int(ok.sum()))

    def account(batch):
        ok = batch["ok"]
        counted = tf.py_function(note, [batch["name"], ok, tf.size(ok)], Tout=tf.int32)
        with tf.control_dependencies([counted]):
            images, labels, _ = select(tf.size(ok), tf.identity(ok), batch["image"], batch["label"])
        return images, labels

    def finish(_):
        lost, arrived["n"] = (expected - arrived["n"] if expected is not None else 0), 0
        if lost > 0:
            bad_images.record([], lost)
        return 0

    ds = ds.map(account).unbatch().batch(batch_size, drop_remainder=training)
    return _then(ds, finish, int(ds.element_spec[0].shape[1]))


def _then(ds, finish, size):
    """`ds`, then finish(0) called once (a tf.py_function) after its last element; adds no element."""
    end = tf.data.Dataset.from_tensors(0).map(lambda x: tf.py_function(finish, [x], Tout=tf.int32))
    nothing = (tf.zeros([0, size, size, 3], tf.float32), tf.zeros([0], tf.int32))
    return ds.concatenate(end.filter(lambda _: False).map(lambda _: nothing))
