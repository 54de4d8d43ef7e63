"""The one layer the paper needs that Keras lacks: the parameter-free option-A shortcut.

A real, registered layer (not a `Lambda`) so models save and load with `safe_mode=True`.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_resnet")
class SubsampleZeroPad(keras.layers.Layer):
    """Option-A shortcut: take every `stride`-th pixel, append zero channels up to `filters`.

    The paper (Sec. 3.3, option A) widens the identity with zero entries, so the
    shortcut adds no parameters. Sampling the top-left pixel of each stride window
    matches a 1x1 stride-2 convolution, i.e. the positions option B would read.
    """

    def __init__(self, filters, stride=1, data_format="channels_last", **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.stride = int(stride)
        self.data_format = data_format

    def _channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1

    def call(self, inputs):
        s = self.stride
        if self.data_format == "channels_last":
            x = inputs[:, ::s, ::s, :] if s > 1 else inputs
        else:
            x = inputs[:, :, ::s, ::s] if s > 1 else inputs
        extra = self.filters - x.shape[self._channel_axis()]
        if extra:
            pad = [[0, 0]] * 4
            pad[self._channel_axis()] = [0, extra]
            x = ops.pad(x, pad)
        return x

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        spatial = (1, 2) if self.data_format == "channels_last" else (2, 3)
        for axis in spatial:
            if shape[axis] is not None:
                shape[axis] = -(-shape[axis] // self.stride)
        shape[self._channel_axis()] = self.filters
        return tuple(shape)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, stride=self.stride, data_format=self.data_format)
        return config
