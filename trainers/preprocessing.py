"""The one definition of how pixels become network inputs, shared by training, evaluation and export.

Images enter as float32 RGB 0..255 (decoded and cropped by `trainers.data.augment`); the network sees
them minus the run's mean (the paper's per-pixel mean image for CIFAR, per-channel RGB means for
ImageNet). keras_resnet.preprocess_input is keras.applications' caffe convention (BGR, its own means):
use it for weights converted from keras.applications, not for models this trainer trained.
"""

import numpy as np

IMAGENET_MEAN = np.array([123.68, 116.78, 103.94], np.float32)  # Model Garden's RGB means


def normalize(images, mean, std=1.0):
    """(images - mean) / std; mean is a scalar, [3] or an [h, w, 3] mean image."""
    if np.all(np.asarray(std) == 1.0):
        return images - mean
    return (images - mean) / std
