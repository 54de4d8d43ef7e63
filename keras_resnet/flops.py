"""Multiply-add counts, as in the paper's Table 1 ("FLOPs" there are multiply-adds)."""

import math

import keras


def flops(model):
    """Multiply-adds of one forward pass of one image through `model`'s convs and dense layers.

    BN, ReLU, additions and pooling are left out, as in the paper. Needs a model
    built with a fixed input size (e.g. input_shape=(224, 224, 3)).
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            out = layer.output.shape
            spatial = out[1:3] if layer.data_format == "channels_last" else out[2:4]
            if None in spatial:
                raise ValueError(
                    f"{model.name} has no fixed input size, so its FLOPs depend on the image. "
                    "Build it with input_shape=(224, 224, 3) (or include_top=True) to count them."
                )
            kernel = layer.kernel.shape  # (kh, kw, in/groups, out)
            total += math.prod(spatial) * math.prod(kernel)
        elif isinstance(layer, keras.layers.Dense):
            total += math.prod(layer.kernel.shape)
    return total
