"""The one definition of how pixels become network inputs, shared by training, evaluation and export.

    bytes --decode--> uint8 RGB --eval_pixels(mode, size)--> float32 RGB 0..255 --network_input--> network

`decode` and `eval_pixels` are what the evaluation pipeline (`trainers.data.augment.eval_image`) runs on
each image and what every signature of an exported SavedModel runs on each request (`trainers.export`), so
serving cannot drift from training. The functions take one image [H, W, 3] or a batch [b, H, W, 3].

Resize modes (`eval_pixels`), chosen from the training augmentation by `resize_mode(augment)`:

    stretch        any H, W resized to size x size (no interpolation when it already is): CIFAR-style
    central_crop   shorter side to round(size * 256 / 224), then the central size x size: ImageNet-style
                   evaluation of "scale" and "inception" augmentation (He et al. 2015, 224 of 256)
    center_square  shorter side to size, then the central square (AlexNet's 256 x 256 10-crop image)

Detection (`detection_pixels`): the shorter side to --image-size, the longer at most 5/3 of it (Faster
R-CNN's 600/1000), padded at the bottom/right to a fixed square canvas so batches keep one shape; boxes
stay normalised to the image's content.

Conventions (`network_input`):

    mean   (pixels - mean) / std on RGB 0..255: what this trainer trains with. mean is the run's
           normalization.npz mean: the per-pixel mean image for CIFAR (--mean per_pixel), per-channel RGB
           means IMAGENET_MEAN (--mean rgb) or 0 (--mean none); std is 1.
    caffe  RGB -> BGR, minus CAFFE_MEAN_BGR, no scaling: keras.applications' ResNet50/101/152 "caffe"
           convention, i.e. `keras_resnet.preprocess_input` (= keras.applications.resnet.preprocess_input).
           Weights converted from keras.applications (keras_resnet.build(..., weights="imagenet"),
           keras_resnet.convert_keras_applications) expect it: export them with
           export_saved_model(..., preprocessing="caffe") and evaluate them on network_input(x, "caffe").
           Never use it for a model this trainer trained, nor the "mean" convention for converted weights.
"""

import numpy as np
import tensorflow as tf

IMAGENET_MEAN = np.array([123.68, 116.78, 103.94], np.float32)  # Model Garden's RGB means
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)  # keras.applications' "caffe" means, BGR
EVAL_RATIO = 256 / 224
RESIZE_MODES = ("stretch", "central_crop", "center_square")
CONVENTIONS = ("mean", "caffe")
CENTRAL_CROP_AUGMENTS = ("scale", "inception")  # evaluated on a central crop of a shorter-side resize
DETECTION_MAX_RATIO = 1000 / 600  # Faster R-CNN's longest side for a given shorter side


def resize_mode(augment):
    """The evaluation resize mode of a training augmentation (config.augment)."""
    if augment in CENTRAL_CROP_AUGMENTS:
        return "central_crop"
    if augment == "center_square":
        return "center_square"
    return "stretch"


def eval_short_side(image_size):
    """Shorter side before the central crop: 256 for 224, scaled for other sizes."""
    return round(image_size * EVAL_RATIO)


def _hw(size):
    """An int or (h, w) -> (h, w) ints."""
    h, w = (size, size) if np.ndim(size) == 0 else tuple(size)
    return int(h), int(w)


def _static_shape(image, h, w):
    return [*image.shape[:-3], h, w, 3]


def decode(data):
    """Any of JPEG, PNG, GIF, BMP to uint8 RGB [H, W, 3]; grayscale and CMYK are converted."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize(image, size):
    """Resize to size x size (or (h, w)) float32, skipping interpolation when the image already has that size."""
    h, w = _hw(size)
    shape = tf.shape(image)
    same = tf.equal(shape[-3], h) & tf.equal(shape[-2], w)
    image = tf.cond(same, lambda: tf.cast(image, tf.float32), lambda: tf.image.resize(image, [h, w]))
    return tf.ensure_shape(image, _static_shape(image, h, w))


def resize_shorter(image, side, at_least=None):
    """Resize float32 so the shorter side is `side`, keeping the aspect ratio (and each side >= `at_least`)."""
    shape = tf.shape(image)
    hw = tf.cast(shape[-3:-1], tf.float32)
    side_f = tf.cast(side, tf.float32)
    new_hw = tf.maximum(tf.cast(tf.round(hw * side_f / tf.reduce_min(hw)), tf.int32), side)
    if at_least is not None:
        new_hw = tf.maximum(new_hw, _hw(at_least))
    same = tf.reduce_all(tf.equal(new_hw, shape[-3:-1]))
    return tf.cond(same, lambda: tf.cast(image, tf.float32), lambda: tf.image.resize(image, new_hw))


def center_crop(image, size):
    """The central size x size (or (h, w)) window."""
    h, w = _hw(size)
    shape = tf.shape(image)
    top, left = (shape[-3] - h) // 2, (shape[-2] - w) // 2
    return tf.ensure_shape(image[..., top : top + h, left : left + w, :], _static_shape(image, h, w))


def eval_pixels(image, mode, size):
    """Evaluation / serving resize of uint8 or float RGB 0..255 -> float32 [..., h, w, 3] RGB 0..255."""
    if mode == "stretch":
        return resize(image, size)
    if mode == "central_crop":
        return center_crop(resize_shorter(image, eval_short_side(min(_hw(size))), at_least=size), size)
    if mode == "center_square":
        return center_crop(resize_shorter(image, min(_hw(size)), at_least=size), size)
    raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}.")


def detection_canvas(side):
    """The square every detection input is padded to: the longest side `fit_detection` allows (Detectron's
    1000 for a 600 shorter side: 5/3), rounded up to a multiple of 32 so every FPN level divides it."""
    return -(-detection_longest(side) // 32) * 32


def detection_longest(side):
    return int(round(side * DETECTION_MAX_RATIO))


def fit_detection(image, side, longest):
    """Detection's resize, one image [H, W, 3] -> float32: the shorter side to `side` (a float tensor may
    come from scale augmentation), unless the longer would then pass `longest`; the aspect ratio kept."""
    hw = tf.cast(tf.shape(image)[-3:-1], tf.float32)
    scale = tf.minimum(tf.cast(side, tf.float32) / tf.reduce_min(hw), float(longest) / tf.reduce_max(hw))
    new_hw = tf.minimum(tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), 1), longest)
    same = tf.reduce_all(tf.equal(new_hw, tf.shape(image)[-3:-1]))
    return tf.cond(same, lambda: tf.cast(image, tf.float32), lambda: tf.image.resize(image, new_hw))


def detection_pixels(image, side, longest, canvas, mean):
    """One image -> (float32 [canvas, canvas, 3] RGB 0..255, its content's (height, width) int32 [2]).

    Resized by `fit_detection` and padded at the bottom and right with `mean`, so the network input
    (pixels - mean) is 0 there. Training, evaluation and the exported detector all run this."""
    image = fit_detection(image, side, longest)
    hw = tf.shape(image)[:2]
    mean = tf.cast(mean, tf.float32)  # a scalar or per channel [3]
    padded = tf.pad(image - mean, [[0, canvas - hw[0]], [0, canvas - hw[1]], [0, 0]]) + mean
    return tf.ensure_shape(padded, [canvas, canvas, 3]), hw


def normalize(images, mean, std=1.0):
    """(images - mean) / std; mean is a scalar, [3] or an [h, w, 3] mean image."""
    if np.all(np.asarray(std) == 1.0):
        return images - mean
    return (images - mean) / std


def caffe(images):
    """keras.applications' "caffe" preprocessing of float RGB 0..255: BGR minus CAFFE_MEAN_BGR."""
    return tf.reverse(tf.cast(images, tf.float32), axis=[-1]) - CAFFE_MEAN_BGR


def network_input(pixels, convention="mean", mean=0.0, std=1.0):
    """Float32 RGB 0..255 pixels -> what the network takes, in `convention` (see the module docstring)."""
    if convention == "mean":
        return normalize(tf.cast(pixels, tf.float32), mean, std)
    if convention == "caffe":
        return caffe(pixels)
    raise ValueError(f"preprocessing must be one of {CONVENTIONS}, got {convention!r}.")
