"""The two stems of the paper: ImageNet (Sec. 3.4, Table 1) and CIFAR-10 (Sec. 4.2)."""

from keras import layers

from keras_resnet import nn


def imagenet_stem(x, ctx, preact=False):
    """7x7/2 conv 64, BN, ReLU, 3x3/2 max-pool (keras.applications' layer names).

    With `preact` (v2) BN and ReLU move into the first block, as in He et al. 2016.
    """
    x = nn.conv(x, 64, 7, 2, "conv1", ctx)
    if not preact:
        x = nn.bn_relu(x, "conv1", ctx)
    x = layers.ZeroPadding2D(1, data_format=ctx.data_format, name="pool1_pad")(x)
    return layers.MaxPooling2D(3, strides=2, data_format=ctx.data_format, name="pool1_pool")(x)


def cifar_stem(x, ctx, preact=False):
    """3x3 conv 16, BN, ReLU on a 32x32 input."""
    x = nn.conv(x, 16, 3, 1, "conv1", ctx)
    if not preact:
        x = nn.bn_relu(x, "conv1", ctx)
    return x


STEMS = {"imagenet": (imagenet_stem, 4), "cifar": (cifar_stem, 1)}
"""name -> (function, output stride)."""
