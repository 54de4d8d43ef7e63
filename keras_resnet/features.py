"""Stage outputs C2-C5 as a dict: a ResNet as a detection backbone (the paper's Faster R-CNN)."""

import re

import keras

_BLOCK_OUT = re.compile(r"^conv(\d+)_block(\d+)_out$")


def stage_features(model):
    """Return a `keras.Model` with `model`'s input and a dict of stage outputs.

    Keys are "C2".."C5" for ImageNet nets (strides 4, 8, 16, 32), "C2".."C4" for the
    CIFAR nets (strides 1, 2, 4): the output of each stage's last block. For v2
    (pre-activation) nets the last stage is taken after the final BN-ReLU.
    """
    last = {}
    for layer in model.layers:
        match = _BLOCK_OUT.match(layer.name)
        if match:
            stage, block = map(int, match.groups())
            if block >= last.get(stage, (0, None))[0]:
                last[stage] = (block, layer.name)
    if not last:
        raise ValueError(
            f"{model.name} has no layers named 'convN_blockM_out': build it with keras_resnet "
            "(e.g. keras_resnet.ResNet50(include_top=False)) to take its stage features."
        )
    names = {f"C{stage}": name for stage, (_, name) in sorted(last.items())}
    if any(layer.name == "post_relu" for layer in model.layers):
        names[f"C{max(last)}"] = "post_relu"
    outputs = {key: model.get_layer(name).output for key, name in names.items()}
    return keras.Model(model.inputs, outputs, name=f"{model.name}_features")
