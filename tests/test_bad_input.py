"""Every bad argument gets a ValueError that says what was wrong and what is valid."""

import numpy as np
import pytest

import keras_resnet


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: keras_resnet.build("resnet42"), r"Unknown model 'resnet42'.*resnet56.*6n\+2"),
        (lambda: keras_resnet.build("vgg16"), r"Unknown model 'vgg16'. Available: .*plain18"),
        (lambda: keras_resnet.ResNet50(shortcut="D"), r"Unknown shortcut 'D'. Valid choices: 'A', 'B', 'C'"),
        (lambda: keras_resnet.ResNet20(variant="v3"), r"Unknown variant 'v3'. Valid choices: 'v1', 'v1.5', 'v2'"),
        (lambda: keras_resnet.ResNet50(input_shape=(16, 16, 3)), r"too small for resnet50.*at least 32"),
        (lambda: keras_resnet.ResNet20(input_shape=(2, 2, 3)), r"too small for resnet20.*at least 4"),
        (lambda: keras_resnet.ResNet50(input_shape=(224, 224)), r"input_shape must be \(height, width, channels\)"),
        (lambda: keras_resnet.ResNet50(weights="imagenet", classes=10), r"need classes=1000.*include_top=False"),
        (lambda: keras_resnet.ResNet18(weights="imagenet"), r"resnet50, resnet101, resnet152.*got resnet18"),
        (lambda: keras_resnet.ResNet50(weights="imagenet", shortcut="C"), r"shortcut 'B'.*got resnet50 \(shortcut 'C'"),
        (lambda: keras_resnet.ResNet50(weights="/no/such.h5"), r"no such file"),
        (lambda: keras_resnet.ResNet50(weights=3), r"weights must be None, 'imagenet' or the path"),
        (lambda: keras_resnet.build("resnet20", data_format="NHWC"), r"Unknown data_format 'NHWC'.*'channels_last'"),
        (lambda: keras_resnet.ResNet20(pooling="mean", include_top=False), r"Unknown pooling 'mean'.*'avg', 'max'"),
        (lambda: keras_resnet.Plain20(shortcut="B"), r"plain network: it has no shortcuts"),
        (
            lambda: keras_resnet.ResNet20(input_tensor=np.zeros((1, 32, 32, 3))),
            r"input_tensor must be a symbolic Keras tensor .*ndarray of shape \(1, 32, 32, 3\)",
        ),
        (lambda: keras_resnet.ResNet20(variant="v2", zero_init_residual=True), r"v2 .*blocks end in a conv"),
    ],
)
def test_bad_input_names_the_valid_choices(call, message):
    with pytest.raises(ValueError, match=message):
        call()
