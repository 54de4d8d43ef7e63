"""Tiny named-layer helpers shared by stems, blocks and shortcuts (torchvision's conv3x3/conv1x1).

Every layer gets an explicit name, so weights port by name between our models,
keras.applications and checkpoints. Paper defaults: no conv bias (BN follows),
He-normal init, BN after every conv.
"""

import dataclasses

from keras import layers

# keras.applications' ResNet epsilon: keeping it makes converted weights exact.
BN_EPSILON = 1.001e-5
BN_MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class Context:
    """What every helper needs besides its tensor: layout and init choices."""

    data_format: str = "channels_last"
    zero_init_residual: bool = False

    @property
    def channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1


def conv(x, filters, kernel_size, stride, name, ctx):
    """Conv without bias; k>1 with stride>1 pads explicitly (symmetric, as torchvision does)."""
    padding = "same"
    if stride > 1 and kernel_size > 1:
        x = layers.ZeroPadding2D(kernel_size // 2, data_format=ctx.data_format, name=f"{name}_pad")(x)
        padding = "valid"
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=stride,
        padding=padding,
        use_bias=False,
        kernel_initializer="he_normal",
        data_format=ctx.data_format,
        name=f"{name}_conv",
    )(x)


def bn(x, name, ctx, zero_gamma=False):
    return layers.BatchNormalization(
        axis=ctx.channel_axis,
        epsilon=BN_EPSILON,
        momentum=BN_MOMENTUM,
        gamma_initializer="zeros" if zero_gamma else "ones",
        name=f"{name}_bn",
    )(x)


def relu(x, name):
    return layers.Activation("relu", name=name)(x)


def conv_bn(x, filters, kernel_size, stride, name, ctx, zero_gamma=False):
    return bn(conv(x, filters, kernel_size, stride, name, ctx), name, ctx, zero_gamma)


def conv_bn_relu(x, filters, kernel_size, stride, name, ctx):
    return relu(conv_bn(x, filters, kernel_size, stride, name, ctx), f"{name}_relu")


def bn_relu(x, name, ctx):
    """BN then ReLU, named `<name>_bn` / `<name>_relu` (stems, and v2 pre-activation)."""
    return relu(bn(x, name, ctx), f"{name}_relu")


def channels(x, ctx):
    return x.shape[ctx.channel_axis]
