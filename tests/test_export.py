"""SavedModel export: the served graph reproduces the Keras model, in float32, with TF Serving's layout."""

import dataclasses
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_resnet
from trainers import config as config_lib
from trainers.export import (
    export_model_dir,
    export_saved_model,
    find_export,
    float32_copy,
    main,
    next_version_dir,
    serving_name,
)

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


def small_convnet(data_format, head="gap"):
    """The layers a channels_first export converts, in either layout, on a non-square 8 x 6 input."""
    first = data_format == "channels_first"
    axis = 1 if first else -1
    inputs = keras.Input((3, 8, 6) if first else (8, 6, 3), name="images")
    x = keras.layers.Conv2D(4, 3, padding="same", data_format=data_format, name="conv")(inputs)
    x = keras.layers.BatchNormalization(axis=axis, name="bn")(x)
    x = keras.layers.Activation("relu", name="relu")(x)
    # Asymmetric padding and a 1 x 3 kernel: a height/width mix-up changes the numbers.
    x = keras.layers.ZeroPadding2D(((1, 0), (0, 1)), data_format=data_format, name="pad")(x)  # 9 x 7
    x = keras.layers.MaxPooling2D(2, data_format=data_format, name="pool")(x)  # 4 x 3
    a = keras.layers.Conv2D(3, 1, data_format=data_format, name="branch_a")(x)
    b = keras.layers.Conv2D(5, (1, 3), padding="same", data_format=data_format, name="branch_b")(x)
    x = keras.layers.Concatenate(axis=axis, name="concat")([a, b])
    x = keras.layers.Add(name="add")([x, keras.layers.Conv2D(8, 1, data_format=data_format, name="proj")(x)])
    if head == "gap":
        x = keras.layers.GlobalAveragePooling2D(data_format=data_format, name="gap")(x)
    else:
        x = keras.layers.Flatten(data_format=data_format, name="flatten")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="predictions")(x), name=f"small_{head}")


@pytest.mark.parametrize("head", ["gap", "flatten"])
def test_channels_first_model_still_takes_nhwc(tmp_path, head):
    """Served as an NHWC copy: runs on CPUs without NCHW convolutions (TF_ENABLE_ONEDNN_OPTS=0).

    The expected values come from the same network built channels_last with the same weights, so
    the test itself never runs an NCHW convolution either.
    """
    keras.utils.set_random_seed(6)
    model = randomize_batch_norm(small_convnet("channels_first", head))
    twin = small_convnet("channels_last", head)
    twin.set_weights(model.get_weights())  # Keras keeps conv kernels [h, w, in, out] in both layouts

    copy = float32_copy(model)
    assert {getattr(layer, "data_format", "channels_last") for layer in copy.layers} == {"channels_last"}
    assert copy.get_layer("bn").axis == -1 and copy.get_layer("concat").axis == -1
    assert tuple(copy.inputs[0].shape) == (None, 8, 6, 3)

    path = export_saved_model(model, str(tmp_path), "cf", image_size=(8, 6), mean=MEAN, std=STD)
    images = np.random.default_rng(7).integers(0, 256, (2, 8, 6, 3)).astype(np.float32)
    expected = reference(twin, images)
    assert expected.max() < 0.99, "softmax saturated: the comparison would be trivial"
    out = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    check_outputs(out, expected, names=None)


def test_channels_first_resnet_is_served_channels_last():
    keras.utils.set_random_seed(9)
    model = keras_resnet.build("resnet20", classes=10, classifier_activation=None, data_format="channels_first")
    model = randomize_batch_norm(model)
    twin = keras_resnet.build("resnet20", classes=10, classifier_activation=None)
    twin.set_weights(model.get_weights())

    copy = float32_copy(model)
    assert tuple(copy.inputs[0].shape) == (None, 32, 32, 3)
    pads = [layer for layer in copy.layers if isinstance(layer, keras_resnet.SubsampleZeroPad)]
    assert pads and {layer.data_format for layer in pads} == {"channels_last"}
    images = np.random.default_rng(10).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(reference(copy, images), reference(twin, images), atol=1e-5)


def channels_first_with(kind):
    inputs = keras.Input((3, 8, 8), name="images")
    x = keras.layers.Conv2D(4, 3, data_format="channels_first", name="conv")(inputs)
    if kind == "flatten":  # flattens in (c, h, w) order: the Dense weights would need reordering
        x = keras.layers.Flatten(data_format="channels_last", name="flatten")(x)
    elif kind == "reshape":
        x = keras.layers.Reshape((-1,), name="reshape")(x)
    elif kind == "dense_on_feature_map":
        x = keras.layers.Flatten(data_format="channels_first")(keras.layers.Dense(2, name="dense")(x))
    elif kind == "softmax_over_width":
        x = keras.layers.GlobalAveragePooling2D(data_format="channels_first")(keras.layers.Activation("softmax")(x))
    elif kind == "channels_last_layer":
        x = keras.layers.GlobalAveragePooling2D(data_format="channels_last", name="pool")(x)
    elif kind == "feature_map_output":
        return keras.Model(inputs, x)
    if kind == "sequential":
        return keras.Sequential(
            [
                keras.Input((3, 8, 8)),
                keras.layers.Conv2D(4, 3, data_format="channels_first"),
                keras.layers.GlobalAveragePooling2D(data_format="channels_first"),
                keras.layers.Dense(3),
            ]
        )
    return keras.Model(inputs, keras.layers.Dense(3, name="predictions")(x))


@pytest.mark.parametrize(
    "kind",
    [
        "flatten",
        "reshape",
        "dense_on_feature_map",
        "softmax_over_width",
        "channels_last_layer",
        "feature_map_output",
        "sequential",
    ],
)
def test_channels_first_model_that_cannot_be_converted_is_refused(tmp_path, kind):
    model = channels_first_with(kind)
    with pytest.raises(ValueError, match="channels_first.*channels_last"):
        export_saved_model(model, str(tmp_path), "cf", image_size=8, mean=0.0)
    assert not os.path.exists(os.path.join(str(tmp_path), "cf"))


def test_image_bytes_error_names_the_malformed_element(resnet20_export):
    """One bad element fails the whole request, and the error says which one, also when it only looks like an image."""
    _, _, loaded = resnet20_export
    serve = loaded.signatures["serve_image_bytes"]
    images = np.random.default_rng(11).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    good = png_batch(images).numpy().tolist()
    jpeg = tf.io.encode_jpeg(images[0]).numpy()
    for i, bad, says in (
        (1, b"not an image", "is not a"),
        (2, b"", "is not a"),
        (1, good[1][:40], "could not be decoded"),  # a truncated PNG: PNG magic, no image
        (2, jpeg[: len(jpeg) // 2], "could not be decoded"),  # a truncated JPEG
    ):
        batch = list(good)
        batch[i] = bad
        with pytest.raises(tf.errors.InvalidArgumentError, match=rf"image_bytes\[{i}\] {says}"):
            serve(image_bytes=tf.constant(batch))


def test_serving_edges(resnet20_export):
    """A scalar image_bytes is a batch of one, a matrix is refused by name, 0..1 float pixels are refused."""
    model, _, loaded = resnet20_export
    images = np.random.default_rng(14).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    encoded = png_batch(images).numpy()
    expected = reference(model, images)
    check_outputs(loaded.signatures["serve_image_bytes"](image_bytes=tf.constant(encoded[0])), expected[:1])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes must be a \[batch\] vector.*rank 2"):
        loaded.signatures["serve_image_bytes"](image_bytes=tf.constant([list(encoded)]))
    empty = loaded.signatures["serve_image_bytes"](image_bytes=tf.constant([], tf.string))
    assert empty["probabilities"].shape == (0, 10)

    serve = loaded.signatures["serving_default"]
    scaled = images.astype(np.float32)
    scaled[1] /= 255.0
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images\[1\]: pixels look scaled to 0..1"):
        serve(images=tf.constant(scaled))
    black = serve(images=tf.zeros([1, 32, 32, 3]))  # an all-black image is an image
    check_outputs(black, reference(model, np.zeros([1, 32, 32, 3])))


def test_class_names_and_keras_model_beside_the_saved_model(resnet20_export):
    model, path, loaded = resnet20_export
    names = loaded.signatures["class_names"]()["class_names"].numpy().tolist()
    assert names == [n.encode() for n in NAMES]
    with open(os.path.join(path, "assets", "class_names.txt"), encoding="utf-8") as f:
        assert f.read().splitlines() == NAMES
    info = json.load(open(os.path.join(path, "assets.extra", "export_info.json"), encoding="utf-8"))
    assert info["preprocessing"] == "mean" and info["resize"] == "stretch" and info["classes"] == 10

    restored = keras.models.load_model(os.path.join(path, "assets.extra", "model.keras"))  # safe_mode
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in restored.layers)
    images = np.random.default_rng(15).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(restored(images), reference(model, images), atol=1e-5)


def trainer_dir(path, saved):
    """A trainer's --model-dir by hand: resnet20's config.json, normalization.npz, one checkpoint of `saved`."""
    config = config_lib.Config(model="resnet20", num_classes=10, image_size=32)
    os.makedirs(path)
    config_lib.save(config, os.path.join(path, "config.json"))
    mean = np.zeros((32, 32, 3), np.float32)
    np.savez(os.path.join(path, "normalization.npz"), mean=mean, class_names=np.array(NAMES))
    # As the trainer does: the optimizer and step ride along, and the export does not need them.
    checkpoint = tf.train.Checkpoint(optimizer=keras.optimizers.SGD(0.1), step=tf.Variable(7, dtype=tf.int64), **saved)
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(path, "checkpoints"), max_to_keep=1)
    return config, manager.save()


def test_export_model_dir_restores_the_checkpoint_once(tmp_path, capsys):
    """Named after the run directory; the same checkpoint again is no new version; another one would be."""
    from trainers.tasks.classification import build_model

    keras.utils.set_random_seed(12)
    config = config_lib.Config(model="resnet20", num_classes=10, image_size=32)
    model = randomize_batch_norm(build_model(config, 10))
    images = np.random.default_rng(13).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    expected = reference(model, images, mean=0.0, std=1.0)
    model_dir = str(tmp_path / "cifar10-resnet20-tfds cifar10-1a2b")
    _, first_checkpoint = trainer_dir(model_dir, {"model": model})
    exported = str(tmp_path / "exported")
    path = export_model_dir(model_dir, exported)
    assert path == os.path.join(exported, "cifar10-resnet20-tfds_cifar10-1a2b", "1") and not path.reused
    check_outputs(tf.saved_model.load(path).signatures["serve_uint8"](images=tf.constant(images)), expected)
    info = json.load(open(os.path.join(path, "assets.extra", "export_info.json"), encoding="utf-8"))
    assert info["source"]["checkpoint"] == os.path.abspath(first_checkpoint)
    assert len(info["source"]["checkpoint_sha256"]) == 64 and info["source"]["config"]["model"] == "resnet20"

    assert main(["--model-dir", model_dir, "--export-dir", exported]) == 0  # rerun: same weights
    assert "Already exported" in capsys.readouterr().out
    assert export_model_dir(model_dir, exported).reused
    assert os.listdir(os.path.dirname(path)) == ["1"]

    # Another checkpoint (the run trained on) is not what version 1 holds: it would be exported as version 2.
    model.get_layer("predictions").bias.assign(tf.ones([10]))
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), os.path.join(model_dir, "checkpoints"), 2)
    manager.save(checkpoint_number=9)
    assert find_export(model_dir, exported) is None
    assert find_export(model_dir, exported, first_checkpoint) == path
    assert next_version_dir(exported, os.path.basename(os.path.dirname(path))).endswith(os.sep + "2")


def test_export_names():
    assert serving_name("cifar10-resnet20-tfds_cifar10-1a2b3c4d") == "cifar10-resnet20-tfds_cifar10-1a2b3c4d"
    assert serving_name("my run: v2/ä") == "my_run_v2"
    assert serving_name("..") == "model"
    with pytest.raises(ValueError, match="'a_b'"):
        export_saved_model(tiny_model(8), "unused", "a/b", image_size=8, mean=0.0)


def test_export_name_from_the_run(tmp_path):
    from trainers.export import _export_target

    model_dir = str(tmp_path / "run-1")
    trainer_dir(model_dir, {})
    assert _export_target(model_dir)[3] == "run-1"
    assert _export_target(model_dir, name="given name")[3] == "given_name"
    config = config_lib.read(os.path.join(model_dir, "config.json"))
    config_lib.save(dataclasses.replace(config, export_name="served"), os.path.join(model_dir, "config.json"))
    assert _export_target(model_dir)[2:4] == ("saved_models", "served")


@pytest.mark.parametrize(
    "saved, detail",
    [
        ("resnet32", r"conv\w+/kernel"),  # config.json edited, or another run's --checkpoint
        ("100_classes", r"predictions/kernel \(64, 10\) here, \(64, 100\) in the checkpoint"),
        ("no_model", "holds no model variables"),
    ],
)
def test_export_refuses_a_checkpoint_that_does_not_fit(tmp_path, saved, detail):
    from trainers.tasks.classification import build_model

    model_dir = str(tmp_path / "run")
    resnet20 = config_lib.Config(model="resnet20", num_classes=10, image_size=32)
    models = {
        "resnet32": lambda: {"model": build_model(dataclasses.replace(resnet20, model="resnet32"), 10)},
        "100_classes": lambda: {"model": build_model(resnet20, 100)},
        "no_model": dict,
    }
    _, checkpoint = trainer_dir(model_dir, models[saved]())
    with pytest.raises(ValueError, match=detail) as raised:
        export_model_dir(model_dir, str(tmp_path / "exported"))
    message = str(raised.value)
    for part in (model_dir, checkpoint, "config.json", "--checkpoint"):
        assert part in message
    assert not os.path.exists(tmp_path / "exported")


def test_export_cli_reports_a_checkpoint_that_does_not_fit(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    trainer_dir(model_dir, {})
    assert main(["--model-dir", model_dir, "--export-dir", str(tmp_path / "exported")]) == 2
    out = capsys.readouterr().out
    assert out.startswith("error: ") and model_dir in out and "holds no model variables" in out
    assert main(["--model-dir", model_dir, "--checkpoint", os.path.join(model_dir, "nowhere-3")]) == 2
    assert "error: " in capsys.readouterr().out
