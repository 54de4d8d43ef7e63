"""Weights: keras.applications' ResNet50/101/152 converted exactly into ours, or our own files.

keras.applications' convs carry a bias and are followed by BN, so the bias folds into
the BN's moving mean: BN(conv(x) + b) with mean m equals BN(conv(x)) with mean m - b.
"""

import os

import keras

# keras.applications publishes weights for these three only (shortcut B, stride on the 1x1).
KERAS_APPLICATIONS = {
    "resnet50": "ResNet50",
    "resnet101": "ResNet101",
    "resnet152": "ResNet152",
}
_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"


def check(spec, weights, include_top, classes):
    """Reject weight requests that cannot work before any layer is built."""
    if weights is None:
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"weights must be None, 'imagenet' or the path of a weights file; got {weights!r}.")
    if weights != "imagenet" and not os.path.exists(weights):
        raise ValueError(
            f"weights={str(weights)!r}: no such file. Pass None (random init), 'imagenet', "
            "or the path of an existing keras.applications .h5 or keras_resnet .weights.h5 file."
        )
    if weights == "imagenet":
        from_keras = spec.name in KERAS_APPLICATIONS and spec.shortcut == "B" and spec.variant == "v1"
        if not from_keras:
            raise ValueError(
                f"ImageNet weights come from keras.applications, which has them for "
                f"{', '.join(KERAS_APPLICATIONS)} with shortcut 'B' and variant 'v1' only; "
                f"got {spec.name} (shortcut {spec.shortcut!r}, variant {spec.variant!r}). "
                "Train it with `python -m trainers.imagenet` or pass weights=None."
            )
        if include_top and classes not in (None, 1000):
            raise ValueError(
                f"ImageNet weights with include_top=True need classes=1000; got classes={classes}. "
                "For another number of classes use include_top=False and add your own head."
            )


def load(model, spec, weights):
    """Fill `model` from `weights` ('imagenet' or a path); see `check` for what is accepted."""
    if weights != "imagenet":
        try:
            model.load_weights(weights)
            return model
        except Exception as error:  # not our file: try it as keras.applications' twin
            if spec.name not in KERAS_APPLICATIONS or spec.shortcut != "B" or spec.variant != "v1":
                raise ValueError(
                    f"Could not load {weights!r} into {model.name}: {error}. A weights file must come "
                    "from the same network (model.save_weights) or, for resnet50/101/152, from "
                    "keras.applications."
                ) from error
    source = keras_applications_model(spec.name, weights, include_top=_has_top(model))
    return convert_keras_applications(source, model)


def _has_top(model):
    return any(layer.name == "predictions" for layer in model.layers)


def keras_applications_model(model_name, weights="imagenet", include_top=True):
    """Build keras.applications' twin of `model_name`, with a clear error when offline."""
    constructor = getattr(keras.applications, KERAS_APPLICATIONS[model_name])
    try:
        return constructor(weights=weights, include_top=include_top)
    except Exception as error:  # keras.utils.get_file raises several types when offline
        if weights != "imagenet":
            raise ValueError(f"Could not read keras.applications weights from {weights!r}: {error}") from error
        suffix = "" if include_top else "_notop"
        url = f"{_URL}{model_name}_weights_tf_dim_ordering_tf_kernels{suffix}.h5"
        raise RuntimeError(
            f"Could not download the ImageNet weights of keras.applications.{constructor.__name__} "
            f"({type(error).__name__}: {error}). This machine looks offline. Fetch {url} on a "
            "machine with internet and pass weights='/path/to/that.h5'."
        ) from error


def convert_keras_applications(source, target):
    """Copy a keras.applications ResNet (any weights) into our model of the same depth.

    Layers match by name; every weighted layer of `target` must find its twin.
    Returns `target`.
    """
    for layer in target.layers:
        if not layer.weights:
            continue
        try:
            twin = source.get_layer(layer.name)
        except ValueError as error:
            raise ValueError(
                f"{source.name} has no layer {layer.name!r}: it is not the keras.applications twin "
                f"of {target.name} (same depth, shortcut B, variant v1)."
            ) from error
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = twin.get_weights()
            conv = source.get_layer(layer.name[: -len("_bn")] + "_conv")
            bias = conv.get_weights()[1] if conv.use_bias else 0.0
            layer.set_weights([gamma, beta, mean - bias, variance])
        elif isinstance(layer, keras.layers.Conv2D):
            layer.set_weights([twin.get_weights()[0]])
        else:
            layer.set_weights(twin.get_weights())
    return target
