"""SavedModel export: the served graph reproduces the Keras model, in float32, with TF Serving's layout."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_resnet
from trainers.export import export_saved_model, float32_copy, next_version_dir

MEAN = np.array([125.3, 123.0, 113.9], np.float32)
STD = np.array([63.0, 62.1, 66.7], np.float32)
NAMES = [f"class_{i}" for i in range(10)]
SIGNATURES = ("serving_default", "serve_uint8", "serve_image_bytes")
OUTPUTS = ("probabilities", "top_5", "top_5_probabilities", "top_5_names")


def randomize_batch_norm(model, seed=0):
    """Non-trivial BN statistics, and a small classifier so the softmax is not saturated."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0.0, 0.5, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(0.0, 0.2, n).astype("float32"))
        elif isinstance(layer, keras.layers.Dense):
            layer.kernel.assign(layer.kernel * 0.05)
    return model


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def reference(model, images, mean=MEAN, std=STD, logits=True):
    """What the served graph must return: the Keras model on (images - mean) / std, in Python."""
    y = np.asarray(model((np.asarray(images, np.float32) - mean) / std, training=False), np.float64)
    return softmax(y) if logits else y


def png_batch(images):
    return tf.constant([tf.io.encode_png(image).numpy() for image in images])


def tiny_model(size, classes=3, activation=None):
    inputs = keras.Input((size, size, 3), name="images")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(classes, activation=activation, name="predictions")(x)
    model = keras.Model(inputs, outputs, name="tiny")
    model.get_layer("predictions").kernel.assign(model.get_layer("predictions").kernel * 0.02)
    return model


@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="module")
def resnet20_export(tmp_path_factory):
    keras.utils.set_random_seed(1)
    model = randomize_batch_norm(keras_resnet.build("resnet20", classes=10, classifier_activation=None))
    root = tmp_path_factory.mktemp("saved_models")
    path = export_saved_model(model, str(root), "r20", image_size=32, mean=MEAN, std=STD, class_names=NAMES)
    return model, path, tf.saved_model.load(path)


def check_outputs(out, expected, names=NAMES):
    probabilities = out["probabilities"].numpy()
    assert out["probabilities"].dtype == tf.float32
    assert out["top_5"].dtype == tf.int32 and out["top_5_probabilities"].dtype == tf.float32
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    top = np.argsort(-probabilities, axis=-1, kind="stable")[:, :5]
    np.testing.assert_array_equal(out["top_5"].numpy(), top)
    np.testing.assert_array_equal(out["top_5"].numpy(), np.argsort(-expected, axis=-1)[:, :5])
    np.testing.assert_allclose(out["top_5_probabilities"].numpy(), np.take_along_axis(probabilities, top, -1))
    if names is not None:
        assert out["top_5_names"].numpy().tolist() == [[names[i].encode() for i in row] for row in top]


def test_signatures_match_keras(resnet20_export):
    model, path, loaded = resnet20_export
    assert os.path.basename(path) == "1"
    assert set(SIGNATURES) <= set(loaded.signatures)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    expected = reference(model, images)
    assert expected.max() < 0.99, "softmax saturated: the comparison would be trivial"

    check_outputs(loaded.signatures["serving_default"](images=tf.constant(images, tf.float32)), expected)
    check_outputs(loaded.signatures["serve_uint8"](images=tf.constant(images)), expected)
    check_outputs(loaded.signatures["serve_image_bytes"](image_bytes=png_batch(images)), expected)


def test_image_bytes_of_different_sizes_are_stretched(resnet20_export):
    _, _, loaded = resnet20_export
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((32, 32, 3), (40, 24, 3))]
    out = loaded.signatures["serve_image_bytes"](image_bytes=png_batch(images))
    assert out["probabilities"].shape == (2, 10)
    for i, image in enumerate(images):
        one = loaded.signatures["serve_uint8"](images=tf.constant(image[None]))
        np.testing.assert_allclose(out["probabilities"][i], one["probabilities"][0], atol=1e-6)


def test_mixed_precision_exports_float32(tmp_path, mixed_bfloat16):
    keras.utils.set_random_seed(2)
    model = randomize_batch_norm(keras_resnet.build("resnet20", classes=10, classifier_activation=None))
    assert model.get_layer("conv1_conv").dtype_policy.name == "mixed_bfloat16"
    assert model.outputs[0].dtype == "bfloat16"

    copy = float32_copy(model)  # the global policy is still mixed_bfloat16 here
    computing = [layer for layer in copy.layers if not isinstance(layer, keras.layers.InputLayer)]
    assert {layer.dtype_policy.name for layer in computing} == {"float32"}
    assert copy.outputs[0].dtype == "float32"
    assert any(isinstance(layer, keras_resnet.SubsampleZeroPad) for layer in copy.layers)
    path = export_saved_model(model, str(tmp_path), "mixed", image_size=32, mean=MEAN, std=STD)

    keras.mixed_precision.set_global_policy("float32")
    float32_model = keras_resnet.build("resnet20", classes=10, classifier_activation=None)
    float32_model.set_weights(model.get_weights())
    images = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    expected = reference(float32_model, images)
    np.testing.assert_allclose(reference(copy, images), expected, atol=1e-5)
    assert np.abs(reference(model, images) - expected).max() > 1e-4, "bf16 would pass too: test is blind"

    out = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    assert "top_5_names" not in out
    check_outputs(out, expected, names=None)


def test_versions(tmp_path):
    root = str(tmp_path)
    assert next_version_dir(root, "net") == os.path.join(root, "net", "1")
    for entry in ("latest", "3.bak", ".tmp-1-abc"):
        os.makedirs(os.path.join(root, "net", entry))
    open(os.path.join(root, "net", "9"), "w").close()  # a file, not a version
    assert next_version_dir(root, "net") == os.path.join(root, "net", "1")

    model = tiny_model(8)
    first = export_saved_model(model, root, "net", image_size=8, mean=0.0)
    second = export_saved_model(model, root, "net", image_size=8, mean=0.0)
    assert (first, second) == (os.path.join(root, "net", "1"), os.path.join(root, "net", "2"))
    assert tf.saved_model.contains_saved_model(second)
    assert sorted(os.listdir(os.path.join(root, "net"))) == [".tmp-1-abc", "1", "2", "3.bak", "9", "latest"]
    os.makedirs(os.path.join(root, "net", "10"))
    assert next_version_dir(root, "net") == os.path.join(root, "net", "11")


def saved_model_cli(*args):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([cli, *args], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_saved_model_cli(resnet20_export, tmp_path):
    _, path, _ = resnet20_export
    shown = saved_model_cli("show", "--dir", path, "--all")
    for name in SIGNATURES:
        assert f"signature_def['{name}']" in shown
    for name in ("inputs['images']", "inputs['image_bytes']", "DT_UINT8", "DT_STRING"):
        assert name in shown
    for name in OUTPUTS:
        assert f"outputs['{name}']" in shown
    assert "shape: (-1, -1, -1, 3)" in shown and "shape: (-1, 10)" in shown

    # This saved_model_cli only evaluates Python literals in --input_exprs, so feed np.zeros via --inputs.
    zeros = tmp_path / "zeros.npy"
    np.save(zeros, np.zeros((1, 32, 32, 3), np.float32))
    run_args = ["run", "--dir", path, "--tag_set", "serve", "--signature_def", "serving_default"]
    ran = saved_model_cli(*run_args, "--inputs", f"images={zeros}")
    assert "Result for output key probabilities" in ran and "top_5_names" in ran
    ran = saved_model_cli(*run_args, "--input_exprs", "images=[[[[0.0, 0.0, 0.0]]]]")
    assert "Result for output key probabilities" in ran


@pytest.mark.parametrize("resize", ["stretch", "central_crop"])
def test_per_pixel_mean_and_resize_non_square(tmp_path, resize):
    size = 8
    keras.utils.set_random_seed(4)
    model = tiny_model(size, classes=4, activation="softmax")
    rng = np.random.default_rng(5)
    mean = rng.uniform(100, 150, (size, size, 3)).astype(np.float32)
    std = np.array([60.0, 61.0, 62.0], np.float32)
    path = export_saved_model(
        model, str(tmp_path), "tiny", image_size=size, mean=mean, std=std, logits=False, resize=resize
    )
    images = rng.integers(0, 256, (2, 12, 20, 3), dtype=np.uint8)

    x = tf.constant(images, tf.float32)
    if resize == "stretch":
        x = tf.image.resize(x, (size, size))
    else:
        # Shorter side 12 -> round(8 * 256 / 224) = 9, so 12 x 20 -> 9 x 15; central 8 x 8 crop.
        x = tf.image.resize(x, (9, 15))[:, 0:8, 3:11, :]
    expected = reference(model, x.numpy(), mean=mean, std=std, logits=False)

    loaded = tf.saved_model.load(path)
    for out in (
        loaded.signatures["serving_default"](images=tf.constant(images, tf.float32)),
        loaded.signatures["serve_uint8"](images=tf.constant(images)),
        loaded.signatures["serve_image_bytes"](image_bytes=png_batch(images)),
    ):
        assert out["probabilities"].shape == (2, 4) and out["top_5"].shape == (2, 4)
        check_outputs(out, expected, names=None)


def test_rejects_bad_arguments(tmp_path):
    model = tiny_model(8)
    with pytest.raises(ValueError, match="resize"):
        export_saved_model(model, str(tmp_path), "m", image_size=8, mean=0.0, resize="crop")
    with pytest.raises(ValueError, match="mean"):
        export_saved_model(model, str(tmp_path), "m", image_size=8, mean=np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="class_names"):
        export_saved_model(model, str(tmp_path), "m", image_size=8, mean=0.0, class_names=["a", "b"])
    assert not os.path.exists(os.path.join(str(tmp_path), "m"))


def test_channels_first_model_still_takes_nhwc(tmp_path):
    keras.utils.set_random_seed(6)
    inputs = keras.Input((3, 8, 8), name="images")
    x = keras.layers.Conv2D(4, 3, data_format="channels_first", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(data_format="channels_first", name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="predictions")(x))
    path = export_saved_model(model, str(tmp_path), "cf", image_size=8, mean=MEAN, std=STD)
    images = np.random.default_rng(7).integers(0, 256, (2, 8, 8, 3)).astype(np.float32)
    expected = softmax(np.asarray(model(np.transpose((images - MEAN) / STD, (0, 3, 1, 2))), np.float64))
    out = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    check_outputs(out, expected, names=None)
