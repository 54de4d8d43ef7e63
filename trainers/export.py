"""SavedModel export for TF Serving: float32 graph, preprocessing inside, three signatures.

Layout is TF Serving's: `<export_root>/<name>/<version>/` with integer versions. A version is
written under a hidden temporary name and renamed into place, so a server polling the folder
never loads a half-written model (TF Serving ignores non-integer folders).

Signatures (all return `probabilities`, `top_5`, `top_5_probabilities`, and `top_5_names`
when class names are given):

    serving_default    images       float32 [batch, H, W, 3], RGB pixels 0..255, any H, W
    serve_uint8        images       uint8   [batch, H, W, 3]
    serve_image_bytes  image_bytes  string  [batch], encoded JPEG / PNG / GIF / BMP
"""

import os
import shutil
import uuid

import keras
import numpy as np
import tensorflow as tf

import keras_resnet  # noqa: F401  (registers SubsampleZeroPad for deserialization)

RESIZE_MODES = ("stretch", "central_crop")
_LOW_PRECISION = ("float16", "bfloat16")


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
    """The same network with float32 compute everywhere, carrying `model`'s weights.

    Mixed-precision training keeps float32 variables but computes in bf16/fp16; serving wants
    float32 in, float32 math, float32 out. A fresh copy also detaches the export from the
    training model (its optimizer, distribution strategy, compiled state).
    """
    config = _to_float32(keras.saving.serialize_keras_object(model))
    copy = keras.saving.deserialize_keras_object(config)
    source, target = model.weights, copy.weights
    if [tuple(v.shape) for v in source] != [tuple(v.shape) for v in target]:
        raise ValueError(f"The float32 copy of {model.name!r} does not have the original's variables.")
    copy.set_weights(model.get_weights())
    return copy


def next_version_dir(export_root, name):
    """`<export_root>/<name>/<1 + largest integer subfolder>` (1 if none); non-integer folders are ignored."""
    base = os.path.join(export_root, name)
    entries = os.listdir(base) if os.path.isdir(base) else []
    versions = [int(e) for e in entries if e.isdigit() and os.path.isdir(os.path.join(base, e))]
    return os.path.join(base, str(max(versions, default=0) + 1))


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


class _ServingModule(tf.Module):
    """Preprocessing + float32 network + top-k, as tf.functions with fixed signatures."""

    def __init__(self, model, image_size, mean, std, logits, class_names, resize):
        super().__init__(name="serving")
        self.model = model
        # Track the variables explicitly so the SavedModel owns them however Keras wraps them.
        self.model_variables = [getattr(v, "value", v) for v in model.weights]
        self._size = image_size
        self._mean = tf.constant(mean, name="mean")
        self._std = tf.constant(std, name="std")
        self._logits = logits
        self._resize_mode = resize
        self._k = min(5, int(model.output_shape[-1]))
        # Serving clients send NHWC; a channels_first network gets the batch transposed in-graph.
        shape = tuple(model.inputs[0].shape)
        self._channels_first = shape[1] == 3 and shape[-1] != 3
        self._class_names = None if class_names is None else tf.constant(list(class_names), tf.string)

    def _resize(self, images):
        """[b, H, W, 3] float32 -> [b, h, w, 3]; exact pass-through when already h x w."""
        h, w = self._size
        shape = tf.shape(images)
        if self._resize_mode == "stretch":
            resized = tf.cond(
                tf.logical_and(tf.equal(shape[1], h), tf.equal(shape[2], w)),
                lambda: images,
                lambda: tf.image.resize(images, (h, w), method="bilinear"),
            )
        else:
            # ImageNet evaluation: shorter side to round(size * 256 / 224), then the central crop.
            target = round(min(h, w) * 256 / 224)
            in_h = tf.cast(shape[1], tf.float32)
            in_w = tf.cast(shape[2], tf.float32)
            scale = target / tf.minimum(in_h, in_w)
            new_h = tf.maximum(tf.cast(tf.round(in_h * scale), tf.int32), h)
            new_w = tf.maximum(tf.cast(tf.round(in_w * scale), tf.int32), w)
            resized = tf.image.resize(images, tf.stack([new_h, new_w]), method="bilinear")
            top = (new_h - h) // 2
            left = (new_w - w) // 2
            resized = resized[:, top : top + h, left : left + w, :]
        return tf.ensure_shape(resized, [None, h, w, 3])

    def _predict(self, images):
        """Normalized [b, h, w, 3] float32 -> the output dict."""
        x = (images - self._mean) / self._std
        if self._channels_first:
            x = tf.transpose(x, [0, 3, 1, 2])
        y = tf.cast(self.model(x, training=False), tf.float32)
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
        return self._predict(self._resize(images))

    def serve_uint8(self, images):
        return self._predict(self._resize(tf.cast(images, tf.float32)))

    def serve_image_bytes(self, image_bytes):
        h, w = self._size

        def decode(encoded):
            image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
            return self._resize(tf.cast(image, tf.float32)[tf.newaxis])[0]

        images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec([h, w, 3], tf.float32))
        return self._predict(images)


def export_saved_model(
    model,
    export_root,
    name,
    *,
    image_size,
    mean,
    std=1.0,
    logits=True,
    class_names=None,
    resize="stretch",
):
    """Write `model` as a TF Serving SavedModel at `<export_root>/<name>/<next version>`; return that path.

    `model` returns logits (`logits=True`) or probabilities; it may be mixed precision, the
    export is always a float32 copy. `mean` (scalar, [3] or [image_size, image_size, 3]) and
    `std` (scalar or [3]) apply to 0..255 RGB pixels after resizing; `resize` is "stretch"
    (any H, W to image_size, CIFAR-style) or "central_crop" (ImageNet evaluation).
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}.")
    size = _image_size(image_size)
    mean, std = _normalization(mean, std, size)
    serving_model = float32_copy(model)
    classes = int(serving_model.output_shape[-1])
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != classes:
            raise ValueError(f"{len(class_names)} class_names for a model with {classes} classes.")

    module = _ServingModule(serving_model, size, mean, std, bool(logits), class_names, resize)
    images_f32 = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")
    images_u8 = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
    image_bytes = tf.TensorSpec([None], tf.string, name="image_bytes")
    signatures = {
        "serving_default": tf.function(module.serve_float32, input_signature=[images_f32]),
        "serve_uint8": tf.function(module.serve_uint8, input_signature=[images_u8]),
        "serve_image_bytes": tf.function(module.serve_image_bytes, input_signature=[image_bytes]),
    }
    for key, function in signatures.items():
        setattr(module, key, function)

    path = next_version_dir(export_root, name)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".tmp-{os.path.basename(path)}-{uuid.uuid4().hex[:8]}")
    try:
        tf.saved_model.save(module, staging, signatures=signatures)
        os.rename(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def export_model_dir(model_dir, export_dir=None, checkpoint=None):
    """Rebuild the network a trainer left in `model_dir`, restore its last checkpoint, export it."""
    from trainers import config as config_lib
    from trainers.data.augment import CENTRAL_CROP_EVAL
    from trainers.engine import build_model

    config_path = os.path.join(model_dir, "config.json")
    if not os.path.exists(config_path):
        raise ValueError(
            f"{model_dir} has no config.json: it is not a trainer's --model-dir "
            "(expected config.json, normalization.npz and checkpoints/ from python -m trainers.cifar10/imagenet)."
        )
    config = config_lib.read(config_path)
    norm = np.load(os.path.join(model_dir, "normalization.npz"))
    checkpoint = checkpoint or tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if checkpoint is None:
        raise ValueError(f"{model_dir}/checkpoints holds no checkpoint yet: train first, then export.")
    keras.mixed_precision.set_global_policy("float32")
    model = build_model(config, config.num_classes)
    tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial()
    return export_saved_model(
        model,
        export_dir or config.export_dir,
        config.model,
        image_size=config.image_size,
        mean=norm["mean"],
        logits=True,
        class_names=[str(c) for c in norm["class_names"]],
        resize="central_crop" if config.augment in CENTRAL_CROP_EVAL else "stretch",
    )


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m trainers.export",
        description="Export a trained --model-dir as a TF Serving SavedModel (<export-dir>/<model>/<next version>).",
    )
    parser.add_argument("--model-dir", required=True, help="the trainer's --model-dir")
    parser.add_argument("--export-dir", default=None, help="SavedModel root (default: the run's --export-dir)")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint prefix (default: the latest)")
    args = parser.parse_args(argv)
    try:
        path = export_model_dir(args.model_dir, args.export_dir, args.checkpoint)
    except ValueError as error:
        print(f"error: {error}")
        return 2
    print(f"SavedModel: {path}\nCheck it:   saved_model_cli show --dir {path} --all")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
