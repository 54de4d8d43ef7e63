"""keras_resnet: every network of He et al., "Deep Residual Learning for Image Recognition"
(2015), built by one layer factory on pure Keras 3 (TensorFlow, JAX or PyTorch backend).

    import keras_resnet
    model = keras_resnet.ResNet50(include_top=True)       # as keras.applications.ResNet50
    model = keras_resnet.build("resnet56", shortcut="B")  # any registered name

Preprocessing: `preprocess_input` is keras.applications.resnet's "caffe" convention (RGB -> BGR, minus the
BGR means [103.939, 116.779, 123.68], no scaling), what weights="imagenet" (converted from
keras.applications) expect: export those with trainers.export.export_saved_model(..., preprocessing="caffe").
Networks trained with `trainers` take RGB 0..255 minus the run's mean instead (trainers/preprocessing.py).
"""

from keras.applications.resnet import decode_predictions, preprocess_input

from keras_resnet.builder import ResNetSpec, build_model
from keras_resnet.features import stage_features
from keras_resnet.flops import flops
from keras_resnet.layers import SubsampleZeroPad
from keras_resnet.models import (
    SPECS,
    Plain18,
    Plain20,
    Plain32,
    Plain34,
    Plain44,
    Plain50,
    Plain56,
    Plain101,
    Plain110,
    Plain152,
    Plain1202,
    ResNet18,
    ResNet20,
    ResNet32,
    ResNet34,
    ResNet44,
    ResNet50,
    ResNet56,
    ResNet101,
    ResNet110,
    ResNet152,
    ResNet1202,
    available,
    build,
    get_spec,
)
from keras_resnet.weights import convert_keras_applications

__version__ = "0.1.0"

__all__ = [
    "SPECS",
    "Plain18",
    "Plain20",
    "Plain32",
    "Plain34",
    "Plain44",
    "Plain50",
    "Plain56",
    "Plain101",
    "Plain110",
    "Plain152",
    "Plain1202",
    "ResNet18",
    "ResNet20",
    "ResNet32",
    "ResNet34",
    "ResNet44",
    "ResNet50",
    "ResNet56",
    "ResNet101",
    "ResNet110",
    "ResNet152",
    "ResNet1202",
    "ResNetSpec",
    "SubsampleZeroPad",
    "available",
    "build",
    "build_model",
    "convert_keras_applications",
    "decode_predictions",
    "flops",
    "get_spec",
    "preprocess_input",
    "stage_features",
]
