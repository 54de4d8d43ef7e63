"""Residual blocks. A plain network is the same block with `residual=False`.

Each block class carries `expansion` (output channels = filters * expansion), as in timm.
Layer names follow keras.applications: `conv3_block1_1_conv`, `..._0_conv` (projection),
`..._add`, `..._out`.
"""

from keras import layers

from keras_resnet import nn
from keras_resnet.shortcuts import shortcut

VARIANTS = ("v1", "v1.5", "v2")


class Block:
    """Shared skeleton: shortcut, residual branch, merge. Subclasses define `branch`."""

    expansion = 1

    def __call__(self, x, filters, stride, name, ctx, option="B", variant="v1", residual=True):
        out_filters = filters * self.expansion
        if variant == "v2":
            # He et al. 2016: BN-ReLU first; a projection reads the activated input.
            pre = nn.bn_relu(x, f"{name}_preact", ctx)
            y = self.branch(pre, filters, stride, name, ctx, variant)
            if not residual:
                return layers.Identity(name=f"{name}_out")(y)
            short = shortcut(x, out_filters, stride, option, name, ctx, projection_input=pre)
            return layers.Add(name=f"{name}_out")([short, y])
        y = self.branch(x, filters, stride, name, ctx, variant)
        if residual:
            short = shortcut(x, out_filters, stride, option, name, ctx)
            y = layers.Add(name=f"{name}_add")([short, y])
        return nn.relu(y, f"{name}_out")

    @staticmethod
    def _last(y, filters, kernel_size, name, ctx, variant):
        """The branch's last conv: BN (zero-init if asked) in v1, bare conv in v2."""
        if variant == "v2":
            return nn.conv(y, filters, kernel_size, 1, name, ctx)
        return nn.conv_bn(y, filters, kernel_size, 1, name, ctx, ctx.zero_init_residual)

    @staticmethod
    def _inner(y, filters, kernel_size, stride, name, ctx, variant):
        """A conv followed by its activation: conv-BN-ReLU (v1) or conv then BN-ReLU (v2)."""
        if variant == "v2":
            return nn.bn_relu(nn.conv(y, filters, kernel_size, stride, name, ctx), name, ctx)
        return nn.conv_bn_relu(y, filters, kernel_size, stride, name, ctx)


class BasicBlock(Block):
    """Two 3x3 convs (ResNet-18/34 and the CIFAR nets); the stride sits on the first."""

    expansion = 1

    def branch(self, x, filters, stride, name, ctx, variant):
        y = self._inner(x, filters, 3, stride, f"{name}_1", ctx, variant)
        return self._last(y, filters, 3, f"{name}_2", ctx, variant)


class Bottleneck(Block):
    """1x1 reduce, 3x3, 1x1 expand x4 (ResNet-50/101/152).

    The paper (and keras.applications) put the stride on the first 1x1 conv; v1.5
    (torchvision, NVIDIA) moves it to the 3x3, which costs more FLOPs and gains ~0.5% top-1.
    """

    expansion = 4

    def branch(self, x, filters, stride, name, ctx, variant):
        s1, s3 = (1, stride) if variant in ("v1.5", "v2") else (stride, 1)
        y = self._inner(x, filters, 1, s1, f"{name}_1", ctx, variant)
        y = self._inner(y, filters, 3, s3, f"{name}_2", ctx, variant)
        return self._last(y, filters * self.expansion, 1, f"{name}_3", ctx, variant)


BLOCKS = {"basic": BasicBlock(), "bottleneck": Bottleneck()}
