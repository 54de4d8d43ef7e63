"""Detection batches from a source's table: shuffle, shard, decode, augment (moving the boxes), pad, batch.

Every random choice of an image (flip, scale, and the model's anchor and RoI sampling, through `seeds`)
is seeded by (run seed, epoch, the image's row), never by its position in a pipeline or a batch: the same
image gets the same augmentation and the same samples on 1 or N replicas, before or after a resume.
The order of an epoch is a permutation fixed by (seed, epoch), so batch k of an epoch is always the
same images and skipping k batches resumes exactly there.
"""

import numpy as np
import tensorflow as tf

from trainers import preprocessing
from trainers.config import DETECTION_AUGMENT
from trainers.data.pipeline import derive_seed
from trainers.detection import boxes as box_ops

SCALE_RANGE = (0.8, 1.2)  # training's shorter side: uniform in this range times --image-size


def _read(row):
    if "path" in row:
        return tf.io.read_file(row["path"])
    return row["image"]


def dataset(
    table,
    *,
    training,
    batch_size,
    image_size,
    mean,
    seed=0,
    epoch=0,
    skip_batches=0,
    input_context=None,
    augment="flip_scale",
    scale_range=SCALE_RANGE,
):
    """tf.data of batches of dicts. `batch_size` is the global batch; with `input_context` each pipeline
    yields its replicas' per-replica batches in turn (the loop's distribute_datasets_from_function).

    Keys: images float32 [b, C, C, 3] RGB 0..255 padded with `mean` (C = preprocessing.detection_canvas);
    image_size int32 [b, 2] (the content's height, width); gt_boxes float32 [b, M, 4] yxyx in pixels of the
    resized image; gt_classes int32 [b, M] (-1: padding, and difficult objects when training); seeds int32
    [b, 2]. Evaluation adds the annotation: boxes (normalised), classes, difficult, num_boxes, height,
    width, image_id. `augment` (training only): flip_scale (random flips, shorter side `scale_range` times
    `image_size`), flip, or none.
    """
    if augment not in DETECTION_AUGMENT:
        raise ValueError(f"augment {augment!r}: expected flip_scale, flip or none")
    n = len(table["boxes"])
    order = (
        np.random.default_rng(derive_seed(seed, "detection-order", epoch)).permutation(n) if training else np.arange(n)
    )
    columns = {k: v[order] for k, v in table.items()}
    columns["row"] = order.astype(np.int32)
    if "image" in columns:
        # As tf.string, not numpy's fixed-width bytes, which would drop an encoding's trailing NUL bytes.
        columns["image"] = tf.constant(list(columns["image"]), tf.string)
    ds = tf.data.Dataset.from_tensor_slices(columns)
    pipelines, pipeline_id, replicas = 1, 0, 1
    if input_context is not None:
        pipelines, pipeline_id = input_context.num_input_pipelines, input_context.input_pipeline_id
        replicas = input_context.num_replicas_in_sync // pipelines
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    if pipelines > 1:
        ds = ds.shard(pipelines, pipeline_id)
    if skip_batches:
        ds = ds.skip(skip_batches * batch_size * replicas)
    epoch_seed = derive_seed(seed, "detection-augment", epoch) % 2**31
    canvas = preprocessing.detection_canvas(image_size)
    longest = preprocessing.detection_longest(image_size)

    def load(row):
        image = preprocessing.decode(_read(row))
        seeds = tf.stack([tf.constant(epoch_seed, tf.int32), row["row"]])
        boxes, classes = row["boxes"], row["classes"]
        side = tf.constant(float(image_size))
        if training and augment != "none":
            flip = tf.random.stateless_uniform([], seed=seeds) < 0.5
            image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
            boxes = tf.where(flip, box_ops.flip_left_right(boxes), boxes)
        if training and augment == "flip_scale":
            low, high = scale_range
            side = side * tf.random.stateless_uniform([], seed=seeds + [0, 1], minval=low, maxval=high)
        if training:
            classes = tf.where(row["difficult"], -1, classes)  # Detectron trains without difficult objects
        pixels, hw = preprocessing.detection_pixels(image, side, longest, canvas, mean)
        scale = tf.cast(tf.concat([hw, hw], 0), tf.float32)
        element = {
            "images": pixels,
            "image_size": tf.cast(hw, tf.int32),
            "gt_boxes": boxes * scale,
            "gt_classes": classes,
            "seeds": seeds,
        }
        if not training:
            for key in ("boxes", "classes", "difficult", "num_boxes", "height", "width", "image_id"):
                element[key] = row[key]
        return element

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if training:
        # Whole steps only: every replica of a step gets a full batch.
        ds = ds.batch(batch_size * replicas, drop_remainder=True)
        if replicas > 1:
            ds = ds.rebatch(batch_size, drop_remainder=True)
    else:
        ds = ds.batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)
