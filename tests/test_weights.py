"""keras.applications weights convert exactly; weight files and offline use fail clearly."""

import keras
import numpy as np
import pytest

import keras_resnet
from keras_resnet import weights as weights_lib


def randomize(model, seed):
    """Random conv biases and BN statistics, so the bias folding is really exercised."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 1.0, c), rng.normal(0, 0.1, c), rng.normal(0, 0.5, c), rng.uniform(0.5, 2.0, c)]
            )
        elif isinstance(layer, keras.layers.Conv2D) and layer.use_bias:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.5, bias.shape)])
    return model


# ResNet-50 only: 101 and 152 repeat the same bottleneck blocks (conv4_x is longer), and converting 101 took
# 40 s of the suite's 15 minutes. Every depth's conversion is the same per-layer code.
@pytest.mark.parametrize("depth", [50])
def test_keras_applications_conversion_is_exact(depth):
    twin = getattr(keras.applications, f"ResNet{depth}")(weights=None, classifier_activation=None)
    randomize(twin, depth)
    ours = keras_resnet.convert_keras_applications(
        twin, keras_resnet.build(f"resnet{depth}", classifier_activation=None)
    )
    x = np.random.default_rng(0).normal(0, 50, (2, 224, 224, 3)).astype("float32")
    expected, got = twin.predict(x, verbose=0), ours.predict(x, verbose=0)
    assert np.abs(expected).max() > 1.0  # the logits are not trivially small
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)  # measured: ~2e-6 on logits up to ~7


def test_weights_path_takes_a_keras_applications_file(tmp_path):
    twin = randomize(keras.applications.ResNet50(weights=None, include_top=False), 3)
    path = tmp_path / "resnet50_notop.weights.h5"
    twin.save_weights(path)
    ours = keras_resnet.ResNet50(weights=str(path), include_top=False)
    x = np.random.default_rng(1).normal(0, 50, (1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(ours.predict(x, verbose=0), twin.predict(x, verbose=0), atol=1e-3, rtol=1e-4)


def test_weights_path_takes_our_own_file(tmp_path):
    model = randomize(keras_resnet.ResNet20(shortcut="C"), 4)
    path = tmp_path / "r20.weights.h5"
    model.save_weights(path)
    again = keras_resnet.ResNet20(shortcut="C", weights=str(path))
    x = np.random.default_rng(2).normal(0, 1, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))


def test_weights_from_another_network_fail_clearly(tmp_path):
    path = tmp_path / "r20.weights.h5"
    keras_resnet.ResNet20().save_weights(path)
    with pytest.raises(ValueError, match="must come from the same network"):
        keras_resnet.ResNet32(weights=str(path))


def test_imagenet_weights_offline_say_so(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.src.utils.file_utils, "get_file", offline)
    with pytest.raises(RuntimeError, match=r"looks offline.*resnet50_weights_tf_dim_ordering_tf_kernels.h5.*weights="):
        keras_resnet.ResNet50(weights="imagenet")


def test_imagenet_weights_download_and_convert(monkeypatch, tmp_path):
    """What an online user gets: keras.applications' file, converted (the download is faked)."""
    twin = randomize(keras.applications.ResNet50(weights=None), 5)
    path = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels.weights.h5"
    twin.save_weights(path)
    monkeypatch.setattr(keras.src.utils.file_utils, "get_file", lambda *a, **k: str(path))
    ours = keras_resnet.ResNet50(weights="imagenet")
    x = np.random.default_rng(3).normal(0, 50, (1, 224, 224, 3)).astype("float32")
    np.testing.assert_allclose(ours.predict(x, verbose=0), twin.predict(x, verbose=0), atol=1e-5)
    assert weights_lib.KERAS_APPLICATIONS["resnet50"] == "ResNet50"
