"""The layer factory: a `ResNetSpec` in, a plain functional `keras.Model` out."""

import dataclasses
import sys

import keras
from keras import layers

from keras_resnet import nn
from keras_resnet.blocks import BLOCKS, VARIANTS
from keras_resnet.shortcuts import OPTIONS
from keras_resnet.stems import STEMS

DATA_FORMATS = ("channels_last", "channels_first")
POOLINGS = (None, "avg", "max")


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
    """Everything that tells one network of the paper from another."""

    name: str
    stem: str
    block: str
    stackwise_num_blocks: tuple
    stackwise_num_filters: tuple
    stackwise_strides: tuple
    shortcut: str = "B"
    variant: str = "v1"
    residual: bool = True
    default_size: int = 224
    default_classes: int = 1000

    @property
    def depth(self):
        per_block = 2 if self.block == "basic" else 3
        return per_block * sum(self.stackwise_num_blocks) + 2

    @property
    def min_size(self):
        """The smallest input side that still leaves >= 1 pixel after every stride."""
        stride = STEMS[self.stem][1]
        for s in self.stackwise_strides:
            stride *= s
        return stride

    def validate(self):
        _choice("stem", self.stem, STEMS)
        _choice("block", self.block, BLOCKS)
        _choice("shortcut", self.shortcut, OPTIONS)
        _choice("variant", self.variant, VARIANTS)
        lengths = {len(self.stackwise_num_blocks), len(self.stackwise_num_filters)}
        if len(lengths | {len(self.stackwise_strides)}) != 1:
            raise ValueError(
                "stackwise_num_blocks, stackwise_num_filters and stackwise_strides must have "
                f"one entry per stage; got {self.stackwise_num_blocks}, "
                f"{self.stackwise_num_filters}, {self.stackwise_strides}."
            )


def _choice(what, value, valid):
    if value not in valid:
        raise ValueError(f"Unknown {what} {value!r}. Valid choices: {', '.join(map(repr, valid))}.")


def resolve_input_shape(spec, input_shape, include_top, data_format, channels=None):
    """keras.applications' rules: a fixed default size with the top, any size without it."""
    if input_shape is None:
        side = spec.default_size if include_top else None
        input_shape = (side, side, 3) if data_format == "channels_last" else (3, side, side)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(
            f"input_shape must be (height, width, channels) for channels_last or "
            f"(channels, height, width) for channels_first; got {input_shape}."
        )
    spatial = input_shape[:2] if data_format == "channels_last" else input_shape[1:]
    depth = input_shape[2] if data_format == "channels_last" else input_shape[0]
    for side in spatial:
        if side is not None and side < spec.min_size:
            raise ValueError(
                f"Input size {spatial} is too small for {spec.name}: its stem and stages "
                f"downsample by {spec.min_size}, so each side must be at least {spec.min_size} "
                f"(the default is {spec.default_size}x{spec.default_size})."
            )
    if channels is not None and depth != channels:
        raise ValueError(f"input_shape {input_shape} must have {channels} channels for these weights.")
    return input_shape


def build_model(
    spec,
    include_top=True,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=None,
    classifier_activation="softmax",
    name=None,
    zero_init_residual=False,
    data_format=None,
):
    """Compose stem, stages of blocks and head from `spec` into a functional model."""
    spec.validate()
    data_format = data_format or keras.config.image_data_format()
    _choice("data_format", data_format, DATA_FORMATS)
    _choice("pooling", pooling, POOLINGS)
    if zero_init_residual and spec.variant == "v2":
        raise ValueError(
            "zero_init_residual starts each block's last BN gamma at 0, but v2 (pre-activation) "
            "blocks end in a conv with no BN. Use variant='v1' or 'v1.5', or drop zero_init_residual."
        )
    classes = spec.default_classes if classes is None else int(classes)
    ctx = nn.Context(data_format=data_format, zero_init_residual=zero_init_residual)

    if input_tensor is None:
        shape = resolve_input_shape(spec, input_shape, include_top, data_format)
        inputs = layers.Input(shape=shape, name="images")
        x = inputs
    else:
        if not keras.backend.is_keras_tensor(input_tensor):
            raise ValueError(
                "input_tensor must be a symbolic Keras tensor (keras.Input(...) or a layer's output); got "
                f"{type(input_tensor).__name__} of shape {getattr(input_tensor, 'shape', '?')}. To run the "
                "model on data, build it first and call model(x)."
            )
        x = input_tensor
        inputs = keras.utils.get_source_inputs(input_tensor)
        resolve_input_shape(spec, x.shape[1:], include_top, data_format)

    preact = spec.variant == "v2"
    stem, _ = STEMS[spec.stem]
    x = stem(x, ctx, preact=preact)
    block = BLOCKS[spec.block]
    stages = zip(spec.stackwise_num_blocks, spec.stackwise_num_filters, spec.stackwise_strides, strict=True)
    for stage, (num_blocks, filters, stride) in enumerate(stages, start=2):
        for i in range(1, num_blocks + 1):
            x = block(
                x,
                filters,
                stride if i == 1 else 1,
                f"conv{stage}_block{i}",
                ctx,
                option=spec.shortcut,
                variant=spec.variant,
                residual=spec.residual,
            )
    if preact:
        x = nn.bn_relu(x, "post", ctx)

    if include_top:
        x = layers.GlobalAveragePooling2D(data_format=data_format, name="avg_pool")(x)
        x = layers.Dense(classes, activation=classifier_activation, kernel_initializer="he_normal", name="predictions")(
            x
        )
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(data_format=data_format, name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(data_format=data_format, name="max_pool")(x)
    # Keras walks the graph recursively; ResNet-1202 has ~4,000 layers.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
    return keras.Model(inputs, x, name=name or spec.name)
