"""SavedModel export for TF Serving: float32 graph, preprocessing inside, three signatures.

Layout is TF Serving's: `<export_root>/<name>/<version>/` with integer versions. A version is
written under a hidden temporary name and renamed into place, so a server polling the folder
never loads a half-written model (TF Serving ignores non-integer folders).

Signatures (all return `probabilities`, `top_5`, `top_5_probabilities`, and `top_5_names`
when class names are given):

    serving_default    images       float32 [batch, H, W, 3], RGB pixels 0..255, any H, W
    serve_uint8        images       uint8   [batch, H, W, 3]
    serve_image_bytes  image_bytes  string  [batch], encoded JPEG / PNG / GIF / BMP

The served network is NHWC whatever the trained one was: a channels_first model is exported as
its channels_last twin with the same weights, which every CPU and GPU runs.
"""

import collections
import inspect
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
    """The same network with float32 compute everywhere, channels_last, carrying `model`'s weights.

    Mixed-precision training keeps float32 variables but computes in bf16/fp16; serving wants
    float32 in, float32 math, float32 out. A channels_first network comes back channels_last
    (see `_channels_last`): TensorFlow's CPU Conv2D has no NCHW kernel without oneDNN, and serving
    clients send NHWC anyway. A fresh copy also detaches the export from the training model (its
    optimizer, distribution strategy, compiled state).
    """
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


# Layers that take a data_format and compute the same thing in either layout with the same weights
# (Keras keeps conv kernels [h, w, in, out] whatever the layout; channels_first Flatten flattens in
# (h, w, c) order). Exact types: a subclass may do its own thing with the layout.
_LAYOUT_LAYERS = (
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
_AXIS_LAYERS = (keras.layers.BatchNormalization, keras.layers.Concatenate, keras.layers.Softmax)
_NHWC_AXIS = {0: 0, 1: -1, 2: 1, 3: 2}  # NCHW axis -> the same axis of NHWC
# Layers that work element by element (or pass tensors through): the layout does not matter.
_ELEMENTWISE_LAYERS = (
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


def _layers(model):
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
        if kind in _LAYOUT_LAYERS and layer.get("data_format") == "channels_first":
            layer["data_format"] = "channels_last"
        elif kind in _AXIS_LAYERS and ranks == {4} and type(layer.get("axis")) is int:
            layer["axis"] = _NHWC_AXIS[layer["axis"] % 4]
        elif kind in _ELEMENTWISE_LAYERS and ranks == {4}:
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

        def decode(element):
            encoded, index = element
            # decode_image's own error for bytes in no image format does not say which element.
            message = tf.strings.format(
                "image_bytes[{}] is not a JPEG, PNG, GIF or BMP image (its first bytes match no image format)",
                index,
            )
            with tf.control_dependencies([tf.debugging.Assert(_looks_like_an_image(encoded), [message])]):
                image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
            return self._resize(tf.cast(image, tf.float32)[tf.newaxis])[0]

        indices = tf.range(tf.shape(image_bytes)[0])
        images = tf.map_fn(decode, (image_bytes, indices), fn_output_signature=tf.TensorSpec([h, w, 3], tf.float32))
        return self._predict(images)


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
    head = tf.strings.join([tf.strings.substr(encoded, 0, 12), b"\0" * 12])  # never shorter than 12 bytes
    return tf.reduce_any(
        tf.stack([tf.equal(tf.strings.substr(head, pos, len(sig)), sig) for pos, sig in _IMAGE_SIGNATURES])
    )


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


def export_model_dir(model_dir, export_dir=None, checkpoint=None, name=None):
    """Rebuild the network a trainer left in `model_dir`, restore its last checkpoint, export it."""
    from trainers.data.augment import CENTRAL_CROP_EVAL
    from trainers.run_dir import RunDir

    run_dir = RunDir(model_dir)
    config = run_dir.read_config()
    norm = run_dir.read_normalization()
    checkpoint = checkpoint or run_dir.latest_checkpoint()
    if checkpoint is None:
        raise ValueError(f"{model_dir}/checkpoints holds no checkpoint yet: train first, then export.")
    keras.mixed_precision.set_global_policy("float32")
    model = run_dir.rebuild_model(config)
    _restore(model, checkpoint, model_dir, config)
    return export_saved_model(
        model,
        export_dir or config.export_dir,
        name or config.export_name or config.model,
        image_size=config.image_size,
        mean=norm["mean"],
        logits=True,
        class_names=norm["class_names"],
        resize="central_crop" if config.augment in CENTRAL_CROP_EVAL else "stretch",
    )


def _restore(model, checkpoint, model_dir, config):
    """Restore `model` from `checkpoint`, insisting that every one of its variables is found there.

    Only the model's part is read: the optimizer, step and counters the trainer checkpoints too are
    not needed (`expect_partial`). A checkpoint of another network would otherwise restore
    nothing, or part of it, and the export would serve random weights.
    """
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
