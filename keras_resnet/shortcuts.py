"""The paper's three shortcut options (Sec. 3.3), chosen per block.

A: identity; where dimensions grow, subsample + zero-pad (no parameters).
B: identity; a 1x1 projection conv + BN only where dimensions change.
C: a projection on every block.
"""

from keras_resnet import nn
from keras_resnet.layers import SubsampleZeroPad

OPTIONS = ("A", "B", "C")


def shortcut(x, filters, stride, option, name, ctx, projection_input=None):
    """Return the shortcut branch of block `name` mapping `x` to `filters` channels.

    `projection_input` is what a projection reads (the pre-activated input in v2).
    """
    changes = stride != 1 or nn.channels(x, ctx) != filters
    if option == "C" or (option == "B" and changes):
        src = x if projection_input is None else projection_input
        if projection_input is not None:  # v2: no BN after the projection
            return nn.conv(src, filters, 1, stride, f"{name}_0", ctx)
        return nn.conv_bn(src, filters, 1, stride, f"{name}_0", ctx)
    if option == "A" and changes:
        return SubsampleZeroPad(filters, stride, ctx.data_format, name=f"{name}_0_pad")(x)
    return x
