"""Decoding, training augmentation and evaluation preprocessing of single images.

All randomness is stateless and seeded per example, so a rerun (or a resumed epoch) sees the same crops
however many threads tf.data uses. Images come out float32 RGB in 0..255; the task normalises.
Decoding, resizing and the evaluation crops are `trainers.preprocessing`'s, the definition the exported
SavedModel serves with too.
"""

import numpy as np
import tensorflow as tf

from trainers import preprocessing
from trainers.preprocessing import center_crop, decode, eval_short_side, resize, resize_shorter  # noqa: F401

AUGMENTATIONS = ("cifar", "pad_crop", "scale", "inception", "none", "center_square")
# Evaluated on a central crop of a shorter-side resize (ImageNet style); the rest are resized whole.
CENTRAL_CROP_EVAL = preprocessing.CENTRAL_CROP_AUGMENTS
CIFAR_PAD = 4
EVAL_RATIO = preprocessing.EVAL_RATIO
SCALE_RANGE = (256, 480)  # shorter side at image_size 224, He et al. (2015) section 3.4
INCEPTION_AREA = (0.05, 1.0)
INCEPTION_ASPECT = (0.75, 1.33)
INCEPTION_MIN_COVERED = 0.1
INCEPTION_ATTEMPTS = 100
# Random erasing (Zhong et al. 2017, their CIFAR settings): a rectangle of 2-40 % of the image, aspect 0.3-3.3,
# filled with uniform random pixels. Their ResNet-20 on CIFAR-10: 7.21 % -> 6.73 % error at probability 0.5.
ERASING_AREA = (0.02, 0.4)
ERASING_ASPECT = (0.3, 1 / 0.3)


def _random_crop(image, size, seed):
    return tf.image.stateless_random_crop(image, [size, size, 3], seed=seed)


def _bbox_or_empty(bbox):
    """Boxes as [1, n, 4] (ymin, xmin, ymax, xmax) clipped into the image, the layout sample_* wants."""
    bbox = tf.clip_by_value(tf.reshape(tf.cast(bbox, tf.float32), [-1, 4]), 0.0, 1.0)
    low = tf.minimum(bbox[:, :2], bbox[:, 2:])
    high = tf.maximum(bbox[:, :2], bbox[:, 2:])
    return tf.concat([low, high], axis=1)[tf.newaxis]


def _inception_window(shape, bbox, seed):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=_bbox_or_empty(bbox),
        seed=seed,
        min_object_covered=INCEPTION_MIN_COVERED,
        aspect_ratio_range=INCEPTION_ASPECT,
        area_range=INCEPTION_AREA,
        max_attempts=INCEPTION_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    return begin, size


def _inception_crop(example, seed):
    """Random area/aspect crop; decodes only the crop window when the bytes are JPEG."""

    def crop_decoded(image):
        begin, size = _inception_window(tf.shape(image), example["bbox"], seed)
        return tf.slice(image, begin, size)

    if "image" in example:
        return crop_decoded(example["image"])
    data = example["data"]

    def fused():
        begin, size = _inception_window(tf.io.extract_jpeg_shape(data), example["bbox"], seed)
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        return tf.io.decode_and_crop_jpeg(data, window, channels=3)

    image = tf.cond(tf.io.is_jpeg(data), fused, lambda: crop_decoded(decode(data)))
    image.set_shape([None, None, 3])
    return image


def _pixels(example):
    return example["image"] if "image" in example else decode(example["data"])


def random_erasing(image, probability, seed):
    """`image` [h, w, 3] with, at `probability`, one random rectangle replaced by uniform noise in 0..255.

    A rectangle that would not fit (a high aspect at a large area) is cut at the image's border rather than
    drawn again, so it is never skipped; its area is then less than drawn."""
    if not probability:
        return image
    apply_seed, area_seed, aspect_seed, y_seed, x_seed, noise_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 6)
    )
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    area = tf.random.stateless_uniform([], area_seed, *ERASING_AREA) * tf.cast(h * w, tf.float32)
    log_aspect = tf.random.stateless_uniform([], aspect_seed, *[float(np.log(a)) for a in ERASING_ASPECT])
    eh = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area * tf.exp(log_aspect))), tf.int32), 1, h)
    ew = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area / tf.exp(log_aspect))), tf.int32), 1, w)
    y = tf.random.stateless_uniform([], y_seed, 0, h - eh + 1, dtype=tf.int32)
    x = tf.random.stateless_uniform([], x_seed, 0, w - ew + 1, dtype=tf.int32)
    rows, cols = tf.range(h), tf.range(w)
    inside = ((rows >= y) & (rows < y + eh))[:, None, None] & ((cols >= x) & (cols < x + ew))[None, :, None]
    erase = tf.random.stateless_uniform([], apply_seed) < probability
    noise = tf.random.stateless_uniform(shape, noise_seed, 0.0, 255.0)
    return tf.where(inside & erase, noise, tf.cast(image, tf.float32))


def train_image(example, mode, image_size, seed, erasing=0.0):
    """One augmented training image float32 [image_size, image_size, 3].

    `example` has "data" (encoded bytes) or "image" (uint8 HWC), and "bbox" ([n, 4], maybe empty).
    `erasing` is the probability of `random_erasing`, applied last, after any mode's crop and flip.
    """
    image = _augment(example, mode, image_size, seed)
    if not erasing:
        return image
    # Its own seed, folded from the image's: the crops and flips stay those of a run without erasing.
    return random_erasing(image, erasing, tf.random.experimental.stateless_fold_in(seed, 1))


def _augment(example, mode, image_size, seed):
    crop_seed, flip_seed, side_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    if mode == "inception":
        image = _inception_crop(example, crop_seed)
        return resize(tf.image.stateless_random_flip_left_right(image, flip_seed), image_size)
    image = _pixels(example)
    if mode in ("cifar", "pad_crop"):
        image = resize(image, image_size)
        image = tf.pad(image, [[CIFAR_PAD, CIFAR_PAD], [CIFAR_PAD, CIFAR_PAD], [0, 0]])
        image = _random_crop(image, image_size, crop_seed)
        if mode == "cifar":
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        return image
    if mode == "scale":
        low, high = (round(side * image_size / 224) for side in SCALE_RANGE)
        side = tf.random.stateless_uniform([], side_seed, low, high + 1, dtype=tf.int32)
        image = _random_crop(resize_shorter(image, side), image_size, crop_seed)
        return tf.image.stateless_random_flip_left_right(image, flip_seed)
    if mode == "none":
        return resize(image, image_size)
    if mode == "center_square":
        return center_crop(resize_shorter(image, image_size), image_size)
    raise ValueError(f"Unknown augment {mode!r}. Valid choices: {', '.join(map(repr, AUGMENTATIONS))}")


def eval_image(example, mode, image_size):
    """Deterministic evaluation preprocessing matching the training augmentation's scale.

    `preprocessing.eval_pixels` in the mode of augmentation `mode`: the same function every signature of
    the exported SavedModel applies, so served and evaluated images are the same tensors.
    """
    return preprocessing.eval_pixels(_pixels(example), preprocessing.resize_mode(mode), image_size)


def ten_crop(image, image_size):
    """Four corners and centre, and their mirror images: the paper's 10-crop testing, [10, s, s, 3].

    `image` is uint8 or float HWC of any size; it is first resized to the evaluation shorter side.
    """
    image = resize_shorter(image, eval_short_side(image_size))
    shape = tf.shape(image)
    bottom, right = shape[0] - image_size, shape[1] - image_size
    offsets = [(0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2)]
    crops = tf.stack([image[y : y + image_size, x : x + image_size] for y, x in offsets])
    crops = tf.ensure_shape(crops, [5, image_size, image_size, 3])
    return tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0)


def ten_crop_batch(images, image_size):
    """`ten_crop` for a batch of square test images [b, S, S, 3]: [10 * b, s, s, 3], crop-major."""
    side = tf.shape(images)[1]
    far, mid = side - image_size, (side - image_size) // 2
    offsets = [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
    crops = [images[:, y : y + image_size, x : x + image_size] for y, x in offsets]
    crops += [tf.reverse(crop, axis=[2]) for crop in crops]
    return tf.ensure_shape(tf.concat(crops, axis=0), [None, image_size, image_size, 3])
