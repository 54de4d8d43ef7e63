"""SavedModel export for TF Serving: float32 graph, preprocessing inside, one model name per run.

Layout is TF Serving's: `<export_root>/<name>/<version>/` with integer versions. A version is
written under a hidden temporary name and renamed into place, so a server polling the folder
never loads a half-written model (TF Serving ignores non-integer folders).

Names and versions (`export_model_dir`, `python -m trainers.export --model-dir DIR`): the model name
is --name, else the run's --export-name, else the run directory's name (`cifar10-resnet20-tfds_cifar10-
1a2b3c4d`), reduced to TF Serving-safe characters [A-Za-z0-9._-]; so two runs never share a name. A
version records where it came from in `assets.extra/export_info.json` (the checkpoint, the sha256 of its
index file, the run's training settings and normalization); exporting the checkpoint the newest version
already holds writes nothing and returns that version (`ExportPath.reused`).

Signatures (the first three return `probabilities` [batch, classes], `top_5`, `top_5_probabilities`,
and `top_5_names` when class names are given):

    serving_default    images       float32 [batch, H, W, 3], RGB pixels 0..255, any H, W
    serve_uint8        images       uint8   [batch, H, W, 3]
    serve_image_bytes  image_bytes  string  [batch], encoded JPEG / PNG / GIF / BMP (a scalar: a batch of 1)
    class_names        (no input)   class_names string [classes], the full list (when class names are given)

Every signature runs `trainers.preprocessing`: resize (`eval_pixels`, the evaluation pipeline's own
function, in the run's resize mode) then `network_input` ("mean": minus the run's mean; "caffe":
keras.applications' BGR convention, for converted weights). Requests that would give nonsense fail
instead (INVALID_ARGUMENT): a float32 image whose pixels are all in 0..1 ("pixels look scaled to 0..1;
send RGB 0..255"; an all-black image is accepted), an image_bytes element that is no image or does not
decode (the message names its index), image_bytes of rank 2 or more.

Beside the graph, in the version folder:

    assets/class_names.txt         the class names, one a line, line i = class i (a SavedModel asset)
    assets.extra/export_info.json  what was exported: source checkpoint and fingerprint, preprocessing
    assets.extra/model.keras       the same network for `keras.models.load_model` (import keras_resnet
                                   first; safe_mode works): float32 RGB 0..255 [batch, h, w, 3] already
                                   resized/cropped to the image size -> probabilities. Normalisation is
                                   inside (a keras Normalization layer, or a fixed 1x1 Conv2D for "caffe");
                                   resizing is not, softmax is (a Softmax layer named "probabilities").

The served network is NHWC whatever the trained one was: a channels_first model is exported as
its channels_last twin with the same weights, which every CPU and GPU runs. TensorFlow and Keras are
imported when first needed, so `python -m trainers.export --help` answers at once.
"""

import collections
import functools
import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid

import numpy as np

log = logging.getLogger(__name__)

_LOW_PRECISION = ("float16", "bfloat16")
EXPORT_INFO = os.path.join("assets.extra", "export_info.json")
KERAS_MODEL = os.path.join("assets.extra", "model.keras")
CLASS_NAMES = os.path.join("assets", "class_names.txt")
EXPORT_FORMAT = 2  # bump when the served graph changes: the same checkpoint is then exported again
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class ExportPath(str):
    """The version folder an export wrote, or (`reused`) the newest one, which already held this checkpoint."""

    reused = False

    def __new__(cls, path, reused=False):
        self = super().__new__(cls, path)
        self.reused = reused
        return self


def serving_name(text):
    """`text` reduced to the characters a TF Serving model name (and a REST URL path part) may safely hold."""
    name = _SAFE_NAME.sub("_", str(text)).strip("._-")
    return name or "model"


def _to_float32(config):
    """Rewrite a serialized model so every layer policy is float32 (recursing into nested models).

    Layer policies become the explicit string "float32", so the rebuilt layers ignore the global
    policy; symbolic tensor records saying bfloat16/float16 are rewritten to match.
    """
    if isinstance(config, list):
        return [_to_float32(c) for c in config]
    if not isinstance(config, dict):
        return config
    out = {}
    for key, value in config.items():
        if key == "dtype" and isinstance(value, dict) and "DTypePolicy" in str(value.get("class_name")):
            out[key] = "float32"
        elif key == "dtype" and value in _LOW_PRECISION:
            out[key] = "float32"
        else:
            out[key] = _to_float32(value)
    return out


def float32_copy(model):
    """The same network with float32 compute everywhere, channels_last, carrying `model`'s weights.

    Mixed-precision training keeps float32 variables but computes in bf16/fp16; serving wants
    float32 in, float32 math, float32 out. A channels_first network comes back channels_last
    (see `_channels_last`): TensorFlow's CPU Conv2D has no NCHW kernel without oneDNN, and serving
    clients send NHWC anyway. A fresh copy also detaches the export from the training model (its
    optimizer, distribution strategy, compiled state).
    """
    import keras

    import keras_resnet  # noqa: F401  (registers SubsampleZeroPad for deserialization)

    config = _to_float32(keras.saving.serialize_keras_object(model))
    if _is_channels_first(model):
        config = _channels_last(model, config)
    copy = keras.saving.deserialize_keras_object(config)
    source, target = model.weights, copy.weights
    if [tuple(v.shape) for v in source] != [tuple(v.shape) for v in target]:
        raise ValueError(f"The float32 copy of {model.name!r} does not have the original's variables.")
    if [tuple(t.shape) for t in model.outputs] != [tuple(t.shape) for t in copy.outputs]:
        raise ValueError(f"The channels_last copy of {model.name!r} does not have the original's outputs.")
    copy.set_weights(model.get_weights())
    return copy


@functools.cache
def _layer_kinds():
    """(layout, axis, elementwise) layer types for the channels_first -> channels_last rewrite."""
    import keras

    import keras_resnet

    # Layers that take a data_format and compute the same thing in either layout with the same weights
    # (Keras keeps conv kernels [h, w, in, out] whatever the layout; channels_first Flatten flattens in
    # (h, w, c) order). Exact types: a subclass may do its own thing with the layout.
    layout = (
        keras.layers.Conv2D,
        keras.layers.Conv2DTranspose,
        keras.layers.DepthwiseConv2D,
        keras.layers.SeparableConv2D,
        keras.layers.ZeroPadding2D,
        keras.layers.Cropping2D,
        keras.layers.UpSampling2D,
        keras.layers.MaxPooling2D,
        keras.layers.AveragePooling2D,
        keras.layers.GlobalAveragePooling2D,
        keras.layers.GlobalMaxPooling2D,
        keras.layers.SpatialDropout2D,
        keras.layers.Flatten,
        keras_resnet.SubsampleZeroPad,
    )
    # Layers with an int `axis` into the feature map: it moves with the channels.
    axis = (keras.layers.BatchNormalization, keras.layers.Concatenate, keras.layers.Softmax)
    # Layers that work element by element (or pass tensors through): the layout does not matter.
    elementwise = (
        keras.layers.InputLayer,
        keras.layers.Activation,
        keras.layers.ReLU,
        keras.layers.LeakyReLU,
        keras.layers.ELU,
        keras.layers.Add,
        keras.layers.Subtract,
        keras.layers.Multiply,
        keras.layers.Average,
        keras.layers.Maximum,
        keras.layers.Minimum,
        keras.layers.Identity,
        keras.layers.Dropout,
        keras.layers.GaussianNoise,
        keras.layers.GaussianDropout,
        keras.layers.ActivityRegularization,
    )
    return layout, axis, elementwise


_NHWC_AXIS = {0: 0, 1: -1, 2: 1, 3: 2}  # NCHW axis -> the same axis of NHWC


def _layers(model):
    import keras

    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)


def _is_channels_first(model):
    return any(getattr(layer, "data_format", None) == "channels_first" for layer in _layers(model))


def _elementwise_activation(activation):
    """True for a built-in activation applied per element (softmax and the like reduce over an axis)."""
    if activation is None:
        return True
    if not isinstance(activation, str):
        return False  # a serialized custom function: unknown
    import keras

    try:
        return "axis" not in inspect.signature(keras.activations.get(activation)).parameters
    except (TypeError, ValueError):
        return False


def _nhwc_shape(shape):
    """[b, c, h, w] -> [b, h, w, c], through lists of shapes; other ranks unchanged."""
    if not isinstance(shape, (list, tuple)):
        return shape
    if len(shape) == 4 and all(d is None or isinstance(d, int) for d in shape):
        return [shape[0], shape[2], shape[3], shape[1]]
    if any(isinstance(d, (list, tuple)) for d in shape):
        return [_nhwc_shape(d) for d in shape]
    return shape


def _nhwc_tensor_records(value):
    """Transpose the shapes of the symbolic tensors recorded in a layer's inbound nodes."""
    if isinstance(value, list):
        return [_nhwc_tensor_records(v) for v in value]
    if not isinstance(value, dict):
        return value
    if value.get("class_name") == "__keras_tensor__":
        config = dict(value["config"], shape=_nhwc_shape(value["config"]["shape"]))
        return dict(value, config=config)
    return {k: _nhwc_tensor_records(v) for k, v in value.items()}


def _channels_last(model, config):
    """Rewrite a channels_first functional model's serialized `config` as the same network in NHWC.

    Every layer that touches a 4-D feature map must be one whose channels_last twin computes the
    same thing with the same weights: layout layers switch data_format, BN/Concatenate/Softmax
    move their axis with the channels, element-wise layers stay. Anything else (Reshape, Permute,
    channels_last Flatten or Dense on a feature map, Lambda, ops, nested models, shared layers, a
    feature map as output) would silently compute something else, so it is refused.
    """
    import keras

    layout_layers, axis_layers, elementwise_layers = _layer_kinds()
    problem = None
    if config.get("class_name") != "Functional":
        problem = f"only functional models can be converted, this is a {type(model).__name__}"
    elif any(len(t.shape) == 4 for t in model.outputs):
        problem = "it outputs a feature map, whose layout would change"
    if problem:
        raise ValueError(
            f"{model.name!r} is channels_first, and the export serves it as a channels_last copy, but {problem}. "
            "Build it with data_format='channels_last' to export it."
        )
    operations = {op.name: op for op in model.operations}
    refused = []
    for entry in config["config"]["layers"]:
        op = operations[entry["name"]]
        layer = entry["config"]
        ranks = {len(t.shape) for t in keras.tree.flatten(op.input) + keras.tree.flatten(op.output)}
        if 4 not in ranks:
            continue  # sees no feature maps (Dense after global pooling, say): the same in both layouts
        kind = type(op)
        if len(entry.get("inbound_nodes", [])) > 1:
            refused.append(f"{op.name} (called more than once)")
            continue
        if not _elementwise_activation(layer.get("activation")):
            refused.append(f"{op.name} ({kind.__name__} with activation {layer.get('activation')!r})")
            continue
        if kind in layout_layers and layer.get("data_format") == "channels_first":
            layer["data_format"] = "channels_last"
        elif kind in axis_layers and ranks == {4} and type(layer.get("axis")) is int:
            layer["axis"] = _NHWC_AXIS[layer["axis"] % 4]
        elif kind in elementwise_layers and ranks == {4}:
            pass
        else:
            data_format = layer.get("data_format")
            refused.append(f"{op.name} ({kind.__name__}{f', {data_format}' if data_format else ''})")
            continue
        if "batch_shape" in layer:
            layer["batch_shape"] = _nhwc_shape(layer["batch_shape"])
        if "build_config" in entry and "input_shape" in (entry["build_config"] or {}):
            entry["build_config"]["input_shape"] = _nhwc_shape(entry["build_config"]["input_shape"])
        entry["inbound_nodes"] = _nhwc_tensor_records(entry.get("inbound_nodes", []))
    if refused:
        more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
        raise ValueError(
            f"{model.name!r} is channels_first, and the export serves it as a channels_last copy (TensorFlow's "
            "CPU Conv2D has no NCHW kernel without oneDNN), but these layers cannot be converted to channels_last "
            f"safely: {', '.join(refused[:5])}{more}. Build the model with data_format='channels_last' "
            "(and retrain or convert its weights) to export it."
        )
    return config


def next_version_dir(export_root, name):
    """`<export_root>/<name>/<1 + largest integer subfolder>` (1 if none); non-integer folders are ignored."""
    versions = _versions(export_root, name)
    return os.path.join(export_root, name, str(max(versions, default=0) + 1))


def _versions(export_root, name):
    base = os.path.join(export_root, name)
    entries = os.listdir(base) if os.path.isdir(base) else []
    return [int(e) for e in entries if e.isdigit() and os.path.isdir(os.path.join(base, e))]


def newest_version_dir(export_root, name):
    """The highest integer version folder of `<export_root>/<name>`, or None."""
    versions = _versions(export_root, name)
    return os.path.join(export_root, name, str(max(versions))) if versions else None


def read_export_info(version_dir):
    """The export_info.json of a version folder as a dict ({} when it has none: an older export)."""
    try:
        with open(os.path.join(version_dir, EXPORT_INFO), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _image_size(image_size):
    size = tuple(int(s) for s in np.broadcast_to(np.asarray(image_size), (2,)))
    if min(size) <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}.")
    return size


def _normalization(mean, std, size):
    """Mean and std as float32 arrays that broadcast against a [batch, h, w, 3] image batch."""
    mean = np.asarray(mean, dtype=np.float32)
    if mean.shape not in ((), (3,), (*size, 3)):
        raise ValueError(f"mean must be a scalar, [3] or [{size[0]}, {size[1]}, 3]; got shape {mean.shape}.")
    std = np.asarray(std, dtype=np.float32)
    if std.shape not in ((), (3,)):
        raise ValueError(f"std must be a scalar or [3]; got shape {std.shape}.")
    if np.any(std == 0):
        raise ValueError("std must be non-zero.")
    return mean, std


# (offset, bytes) that start each format tf.io.decode_image reads: JPEG, PNG, GIF, BMP, WebP, JPEG XL
# (bare codestream, ISO box). Looser than the decoder: whatever passes it still gets the decoder's check.
_IMAGE_SIGNATURES = (
    (0, b"\xff\xd8\xff"),
    (0, b"\x89PNG"),
    (0, b"GIF8"),
    (0, b"BM"),
    (8, b"WEBP"),
    (0, b"\xff\x0a"),
    (4, b"JXL "),
)


def _looks_like_an_image(encoded):
    """Bool per element of a string tensor of any shape: its first bytes are an image format's."""
    import tensorflow as tf

    head = tf.strings.join([tf.strings.substr(encoded, 0, 12), b"\0" * 12])  # never shorter than 12 bytes
    return tf.reduce_any(
        tf.stack([tf.equal(tf.strings.substr(head, pos, len(sig)), sig) for pos, sig in _IMAGE_SIGNATURES]), axis=0
    )


def _first(indices, mask):
    """The first index where `mask` holds (int32 max if none), for error messages."""
    import tensorflow as tf

    return tf.reduce_min(tf.concat([tf.boolean_mask(indices, mask), [tf.int32.max]], 0))


class _Serving:
    """Preprocessing + float32 network + top-k: the bodies of the signatures (traced by tf.function)."""

    def __init__(self, model, image_size, resize, convention, mean, std, logits, class_names):
        import tensorflow as tf

        self.model = model
        self._size = image_size
        self._resize_mode = resize
        self._convention = convention
        self._mean, self._std = mean, std
        self._logits = logits
        self._k = min(5, int(model.output_shape[-1]))
        self._class_names = None if class_names is None else tf.constant(list(class_names), tf.string)

    def _pixels(self, images):
        """[b, H, W, 3] (or one [H, W, 3]) 0..255 -> float32 [b, h, w, 3]: the evaluation pipeline's resize."""
        from trainers import preprocessing

        return preprocessing.eval_pixels(images, self._resize_mode, self._size)

    def _predict(self, pixels):
        """Resized float32 RGB 0..255 [b, h, w, 3] -> the output dict."""
        import tensorflow as tf

        from trainers import preprocessing

        x = preprocessing.network_input(pixels, self._convention, self._mean, self._std)
        # oneDNN's convolution (TensorFlow's default on CPUs with AVX512-VNNI/BF16) returns its input's shape
        # for a batch of 0, and the next layer fails: an empty request skips the network.
        y = tf.cond(
            tf.shape(x)[0] > 0,
            lambda: tf.cast(self.model(x, training=False), tf.float32),
            lambda: tf.zeros([0, int(self.model.output_shape[-1])], tf.float32),
        )
        probabilities = tf.nn.softmax(y, axis=-1) if self._logits else y
        top_probabilities, top_ids = tf.math.top_k(probabilities, k=self._k)
        outputs = {
            "probabilities": tf.identity(probabilities, name="probabilities"),
            "top_5": tf.identity(top_ids, name="top_5"),
            "top_5_probabilities": tf.identity(top_probabilities, name="top_5_probabilities"),
        }
        if self._class_names is not None:
            outputs["top_5_names"] = tf.gather(self._class_names, top_ids, name="top_5_names")
        return outputs

    def serve_float32(self, images):
        import tensorflow as tf

        # 0..1 pixels (a client that divided by 255) would be served as near-black images: nonsense
        # probabilities, no error. An all-zero (black) image is legitimate and passes.
        largest = tf.reduce_max(images, axis=[1, 2, 3])
        first = _first(tf.range(tf.shape(images)[0]), (largest > 0.0) & (largest <= 1.0))
        message = tf.strings.format(
            "images[{}]: pixels look scaled to 0..1 (largest value {}); send RGB 0..255 (float32 0.0..255.0, "
            "or uint8 to serve_uint8)",
            (first, tf.reduce_max(tf.boolean_mask(largest, (largest > 0.0) & (largest <= 1.0)))),
        )
        check = tf.debugging.Assert(tf.equal(first, tf.int32.max), [message])
        with tf.control_dependencies([check]):
            return self._predict(self._pixels(tf.identity(images)))

    def serve_uint8(self, images):
        return self._predict(self._pixels(images))

    def serve_image_bytes(self, image_bytes):
        import tensorflow as tf

        h, w = self._size
        rank = tf.rank(image_bytes)  # the signature takes any rank, so a scalar does not fail unexplained
        rank_check = tf.debugging.Assert(
            rank <= 1,
            [
                tf.strings.format(
                    "image_bytes must be a [batch] vector of encoded images (one string per image), got rank {}",
                    rank,
                )
            ],
        )
        with tf.control_dependencies([rank_check]):
            image_bytes = tf.reshape(image_bytes, [-1])  # a scalar: a batch of one
        indices = tf.range(tf.size(image_bytes))
        first = _first(indices, tf.logical_not(_looks_like_an_image(image_bytes)))
        # decode_image's own error for bytes in no image format does not say which element.
        message = tf.strings.format(
            "image_bytes[{}] is not a JPEG, PNG, GIF or BMP image (its first bytes match no image format)", first
        )
        format_check = tf.debugging.Assert(tf.equal(first, tf.int32.max), [message])
        with tf.control_dependencies([format_check]):
            image_bytes = tf.identity(image_bytes)

        def decode(encoded, index):
            from trainers import preprocessing

            return index, self._pixels(preprocessing.decode(encoded))

        # Decoded one by one in a tf.data map (the evaluation pipeline's way): a truncated or corrupt image
        # is dropped by ignore_errors instead of failing without a name, and found missing below.
        decoded = (
            tf.data.Dataset.from_tensor_slices((image_bytes, indices))
            .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .ignore_errors()
            .batch(tf.cast(tf.maximum(tf.size(image_bytes), 1), tf.int64))
        )
        empty = tf.data.Dataset.from_tensors((tf.zeros([0], tf.int32), tf.zeros([0, h, w, 3], tf.float32)))
        found, images = decoded.concatenate(empty).take(1).get_single_element()
        lost = tf.logical_not(tf.reduce_any(tf.equal(indices[:, None], found[None, :]), axis=1))
        first = _first(indices, lost)
        message = tf.strings.format(
            "image_bytes[{}] could not be decoded: it starts like an image but is corrupt or truncated", first
        )
        decode_check = tf.debugging.Assert(tf.equal(first, tf.int32.max), [message])
        with tf.control_dependencies([decode_check]):
            return self._predict(tf.ensure_shape(tf.identity(images), [None, h, w, 3]))

    def class_names(self):
        import tensorflow as tf

        return {"class_names": tf.identity(self._class_names, name="class_names")}


def keras_model(serving_model, image_size, convention="mean", mean=0.0, std=1.0, logits=True, name="model"):
    """A Keras model of the served network: float32 RGB 0..255 [batch, h, w, 3] (resized) -> probabilities.

    Normalisation is a built-in layer (Normalization; for "caffe" a frozen 1x1 Conv2D that swaps R and B
    and adds -CAFFE_MEAN_BGR, exact in float32), never a Lambda, so `keras.models.load_model` reads it
    with safe_mode. `serving_model` must be float32 and channels_last (`float32_copy`).
    """
    import keras

    from trainers import preprocessing

    h, w = image_size
    inputs = keras.Input((h, w, 3), name="pixels", dtype="float32")
    if convention == "caffe":
        swap = np.eye(3, dtype=np.float32)[::-1].reshape(1, 1, 3, 3)
        layer = keras.layers.Conv2D(3, 1, name="caffe_bgr_minus_mean", dtype="float32", trainable=False)
        x = layer(inputs)
        layer.set_weights([swap, -preprocessing.CAFFE_MEAN_BGR])
    else:
        mean = np.broadcast_to(np.asarray(mean, np.float32), (h, w, 3))
        variance = np.broadcast_to(np.square(np.asarray(std, np.float32)), (h, w, 3))
        x = keras.layers.Normalization(
            axis=(1, 2, 3), mean=mean, variance=variance, name="normalization", dtype="float32"
        )(inputs)
    y = serving_model(x)
    if logits:
        y = keras.layers.Softmax(name="probabilities", dtype="float32")(y)
    return keras.Model(inputs, y, name=name)


def export_saved_model(
    model,
    export_root,
    name,
    *,
    image_size,
    mean=None,
    std=1.0,
    logits=True,
    class_names=None,
    resize="stretch",
    preprocessing="mean",
    info=None,
):
    """Write `model` as a TF Serving SavedModel at `<export_root>/<name>/<next version>`; return that path.

    `model` returns logits (`logits=True`) or probabilities; it may be mixed precision, the
    export is always a float32 copy. `resize` is `trainers.preprocessing`'s mode: "stretch" (any
    H, W to image_size, CIFAR-style), "central_crop" (ImageNet evaluation) or "center_square".
    `preprocessing` is the convention the weights expect: "mean" (this trainer's: `mean`, a scalar,
    [3] or [image_size, image_size, 3], and `std`, a scalar or [3], applied to 0..255 RGB pixels after
    resizing) or "caffe" (keras.applications' BGR convention, for converted weights; no mean or std).
    `info` (a JSON-able dict) is recorded as "source" in assets.extra/export_info.json.
    """
    import tensorflow as tf

    from trainers import preprocessing as prep

    if resize not in prep.RESIZE_MODES:
        raise ValueError(f"resize must be one of {prep.RESIZE_MODES}, got {resize!r}.")
    if preprocessing not in prep.CONVENTIONS:
        raise ValueError(f"preprocessing must be one of {prep.CONVENTIONS}, got {preprocessing!r}.")
    if preprocessing == "caffe" and (mean is not None or np.any(np.asarray(std) != 1.0)):
        raise ValueError('preprocessing="caffe" has its own means (BGR) and no std: pass no mean or std.')
    if preprocessing == "mean" and mean is None:
        raise ValueError('preprocessing="mean" needs the mean the model was trained with (mean=...; 0.0 for none).')
    if name != serving_name(name):
        raise ValueError(
            f"Export name {name!r} has characters TF Serving names should not; use {serving_name(name)!r}."
        )
    size = _image_size(image_size)
    mean, std = _normalization(0.0 if mean is None else mean, std, size)
    serving_model = float32_copy(model)
    classes = int(serving_model.output_shape[-1])
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != classes:
            raise ValueError(f"{len(class_names)} class_names for a model with {classes} classes.")
        if any("\n" in c or "\r" in c for c in class_names):
            raise ValueError("class names must not contain line breaks (class_names.txt holds one a line).")

    serving = _Serving(serving_model, size, resize, preprocessing, mean, std, bool(logits), class_names)
    root = tf.Module()
    root.model = serving_model
    # Track the variables explicitly so the SavedModel owns them however Keras wraps them.
    root.model_variables = [getattr(v, "value", v) for v in serving_model.weights]
    images_f32 = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")
    images_u8 = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
    image_bytes = tf.TensorSpec(None, tf.string, name="image_bytes")  # any rank: a scalar is served, not crashed
    signatures = {
        "serving_default": tf.function(serving.serve_float32, input_signature=[images_f32]),
        "serve_uint8": tf.function(serving.serve_uint8, input_signature=[images_u8]),
        "serve_image_bytes": tf.function(serving.serve_image_bytes, input_signature=[image_bytes]),
    }
    if class_names is not None:
        signatures["class_names"] = tf.function(serving.class_names, input_signature=[])
    for key, function in signatures.items():
        setattr(root, key, function)

    parent = os.path.join(export_root, name)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".tmp-{uuid.uuid4().hex[:8]}")
    scratch = tempfile.mkdtemp(prefix="export-")
    try:
        if class_names is not None:
            names_file = os.path.join(scratch, "class_names.txt")
            with open(names_file, "w", encoding="utf-8") as f:
                f.write("".join(f"{c}\n" for c in class_names))
            root.class_names_file = tf.saved_model.Asset(names_file)
        tf.saved_model.save(root, staging, signatures=signatures)
        os.makedirs(os.path.join(staging, "assets.extra"), exist_ok=True)
        keras_model(serving_model, size, preprocessing, mean, std, bool(logits), name=name).save(
            os.path.join(staging, KERAS_MODEL)
        )
        record = {
            "format": EXPORT_FORMAT,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "name": name,
            "image_size": list(size),
            "resize": resize,
            "preprocessing": preprocessing,
            "logits": bool(logits),
            "classes": classes,
            "keras_model": KERAS_MODEL,
            "class_names": CLASS_NAMES if class_names is not None else None,
            "source": info,
        }
        with open(os.path.join(staging, EXPORT_INFO), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, sort_keys=True, default=str)
        for _ in range(100):  # another process may take the same version number first
            path = next_version_dir(export_root, name)
            try:
                os.rename(staging, path)
                break
            except OSError:
                if not os.path.isdir(path):
                    raise
        else:
            raise OSError(f"Could not claim a new version folder under {parent}.")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return ExportPath(path)


def _sha256(path):
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    except OSError:
        return None


def _export_target(model_dir, export_dir=None, checkpoint=None, name=None):
    """(run_dir, config, export root, export name, checkpoint, source record) for exporting `model_dir`."""
    from trainers import config as config_lib
    from trainers.run_dir import RunDir

    run_dir = RunDir(model_dir)
    config = run_dir.read_config()
    checkpoint = checkpoint or run_dir.latest_checkpoint()
    if checkpoint is None:
        raise ValueError(f"{model_dir}/checkpoints holds no checkpoint yet: train first, then export.")
    name = serving_name(name or config.export_name or os.path.basename(os.path.abspath(model_dir)))
    source = {
        "model_dir": os.path.abspath(model_dir),
        "checkpoint": os.path.abspath(checkpoint),
        "checkpoint_sha256": _sha256(f"{checkpoint}.index"),
        "normalization_sha256": _sha256(run_dir.normalization_path),
        "config": config_lib.training_fields(config),
    }
    return run_dir, config, export_dir or config.export_dir, name, checkpoint, source


def _same_source(recorded, source):
    """Whether an export_info "source" holds the same weights, settings and normalization as `source`."""
    keys = ("checkpoint_sha256", "normalization_sha256", "config")
    if not recorded or source["checkpoint_sha256"] is None:
        return False
    config = json.loads(json.dumps(source["config"], default=str))  # as it reads back from JSON
    return all(recorded.get(k) == v for k, v in zip(keys, (source[keys[0]], source[keys[1]], config), strict=True))


def find_export(model_dir, export_dir=None, checkpoint=None, name=None):
    """The newest export version of `model_dir` if it holds `checkpoint` (default: the latest), else None."""
    _, _, root, name, _, source = _export_target(model_dir, export_dir, checkpoint, name)
    newest = newest_version_dir(root, name)
    if newest is None:
        return None
    info = read_export_info(newest)
    if info.get("format") == EXPORT_FORMAT and _same_source(info.get("source"), source):
        return newest
    return None


def export_model_dir(model_dir, export_dir=None, checkpoint=None, name=None):
    """Rebuild the network a trainer left in `model_dir`, restore its last checkpoint, export it.

    The export is named `name`, else the run's export_name, else the run directory's name (see
    `serving_name`), under `export_dir` (default: the run's). When the newest version of that name was
    exported from the same checkpoint (same index file sha256, training settings and normalization),
    nothing is written: that version comes back with `reused=True`.
    """
    import keras

    from trainers import preprocessing

    run_dir, config, root, name, checkpoint, source = _export_target(model_dir, export_dir, checkpoint, name)
    if config.task == "detection":
        from trainers.detection.export import export_detector

        return export_detector(model_dir, export_dir, checkpoint, name)
    existing = find_export(model_dir, export_dir, checkpoint, name)
    if existing is not None:
        log.info("%s already holds %s (the same checkpoint): no new version.", existing, checkpoint)
        return ExportPath(existing, reused=True)
    norm = run_dir.read_normalization()
    keras.mixed_precision.set_global_policy("float32")
    model = run_dir.rebuild_model(config)
    _restore(model, checkpoint, model_dir, config)
    return export_saved_model(
        model,
        root,
        name,
        image_size=config.image_size,
        mean=norm["mean"],
        logits=True,
        class_names=norm["class_names"],
        resize=preprocessing.resize_mode(config.augment),
        info=source,
    )


def _restore(model, checkpoint, model_dir, config):
    """Restore `model` from `checkpoint`, insisting that every one of its variables is found there.

    Only the model's part is read: the optimizer, step and counters the trainer checkpoints too are
    not needed (`expect_partial`). A checkpoint of another network would otherwise restore
    nothing, or part of it, and the export would serve random weights.
    """
    import tensorflow as tf

    try:
        status = tf.train.Checkpoint(model=model).restore(checkpoint)
        status.assert_existing_objects_matched()
    except tf.errors.NotFoundError as error:
        raise ValueError(
            f"No checkpoint at {checkpoint} (--checkpoint takes a prefix such as {model_dir}/checkpoints/ckpt-5)."
        ) from error
    except (AssertionError, ValueError) as error:
        # ValueError: a variable of another shape; AssertionError: variables the checkpoint lacks.
        found, differences = _checkpoint_differences(model, checkpoint)
        if found == 0:
            what = "holds no model variables (is it a trainer's checkpoint?)."
        elif found is None:
            what = f"does not fit the network {model_dir}/config.json describes: {str(error)[:300]}"
        else:
            listed = "".join(f"\n  {line}" for line in differences[:5]) or f"\n  {str(error)[:300]}"
            more = f"\n  ... and {len(differences) - 5} more" if len(differences) > 5 else ""
            what = (
                f"does not fit the network {model_dir}/config.json describes ({config.model}, "
                f"{config.num_classes} classes): its model has {found} variables, this one {len(model.weights)}, "
                f"and these do not match:{listed}{more}"
            )
        raise ValueError(
            f"Checkpoint {checkpoint} {what}\nExport a checkpoint with the config.json of the run that wrote it "
            f"(that run's --model-dir), or pass this run's own checkpoint with --checkpoint "
            f"({model_dir}/checkpoints/ckpt-N)."
        ) from error
    status.expect_partial()


def _checkpoint_differences(model, checkpoint):
    """(model variables in `checkpoint` or None, lines naming `model`'s variables it lacks or holds in another shape).

    Checkpoint keys are object paths from the root (`model/_operations/3/_kernel`), so walk the
    object graph breadth-first as tf.train.Checkpoint does to find each variable's key. Only
    describes the mismatch; whether a checkpoint fits is TensorFlow's restore's call.
    """
    import tensorflow as tf

    root = tf.train.Checkpoint(model=model)
    keys, queue, seen = {}, collections.deque([(root, "")]), {id(root)}
    while queue:
        parent, path = queue.popleft()
        for name, child in tf.train.TrackableView.children(parent).items():
            if id(child) not in seen:
                seen.add(id(child))
                keys[id(child)] = path + name.replace(".", "..").replace("/", ".S")
                queue.append((child, keys[id(child)] + "/"))
    try:
        saved = dict(tf.train.list_variables(checkpoint))
    except (tf.errors.OpError, ValueError):
        return None, []
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    found = sum(key.startswith("model/") and key.endswith(suffix) for key in saved)
    lines = []
    for variable in model.weights:
        shape = tuple(variable.shape)
        stored = saved.get(keys.get(id(variable), "?") + suffix)
        if stored is None:
            lines.append(f"{variable.path} {shape} is not in the checkpoint")
        elif tuple(stored) != shape:
            lines.append(f"{variable.path} {shape} here, {tuple(stored)} in the checkpoint")
    return found, lines


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m trainers.export",
        description="Export a trained --model-dir as a TF Serving SavedModel (<export-dir>/<name>/<next version>). "
        "Exporting the checkpoint the newest version already holds writes no new version.",
    )
    parser.add_argument("--model-dir", required=True, help="the trainer's --model-dir")
    parser.add_argument("--export-dir", default=None, help="SavedModel root (default: the run's --export-dir)")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint prefix (default: the latest)")
    parser.add_argument(
        "--name",
        default=None,
        help="TF Serving model name (default: the run's --export-name, else the run directory's name)",
    )
    args = parser.parse_args(argv)  # before TensorFlow is imported: --help and usage errors are instant
    try:
        path = export_model_dir(args.model_dir, args.export_dir, args.checkpoint, args.name)
    except ValueError as error:
        print(f"error: {error}")
        return 2
    if path.reused:
        info = read_export_info(path)
        print(f"Already exported: {path} holds {info['source']['checkpoint']} (the same weights): no new version.")
    else:
        print(f"SavedModel: {path}")
    if os.path.exists(os.path.join(path, KERAS_MODEL)):  # classification exports carry a .keras copy
        print(f"Keras:      {os.path.join(path, KERAS_MODEL)} (float32 0..255 pixels, resized, -> probabilities)")
    print(f"Check it:   saved_model_cli show --dir {path} --all")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
