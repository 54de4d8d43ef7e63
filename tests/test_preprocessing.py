"""One preprocessing: what a served request feeds the network is what evaluation fed it, to the last bit."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_resnet
from trainers import preprocessing
from trainers.data import augment as aug
from trainers.export import export_saved_model

SIZE = 16


def probe(size=SIZE):
    """A 'network' whose output is its input, flattened: the export's probabilities are the network input."""
    inputs = keras.Input((size, size, 3), name="images")
    return keras.Model(inputs, keras.layers.Flatten(name="flatten")(inputs), name="probe")


def jpeg_file(path, shape, seed=0):
    """A smooth JPEG (a blurred random field: interpolation sees real gradients, JPEG keeps it close)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (1, 5, 7, 3)).astype(np.float32)
    image = tf.cast(tf.clip_by_value(tf.image.resize(coarse, shape[:2], "bicubic"), 0, 255), tf.uint8)[0]
    data = tf.io.encode_jpeg(image, quality=90).numpy()
    with open(path, "wb") as f:
        f.write(data)
    return data


@pytest.mark.parametrize(
    "augment, mean",
    [
        ("cifar", np.random.default_rng(1).uniform(90, 160, (SIZE, SIZE, 3)).astype(np.float32)),  # per-pixel
        ("scale", preprocessing.IMAGENET_MEAN),  # shorter side 18, central 16 x 16
    ],
)
def test_served_input_is_the_evaluated_input(tmp_path, augment, mean):
    path = str(tmp_path / "photo.jpg")
    jpeg_file(path, (37, 53, 3))
    with open(path, "rb") as f:
        data = f.read()

    # The evaluation pipeline: eval_image on the example, then the task's normalize.
    evaluated = preprocessing.normalize(aug.eval_image({"data": tf.constant(data)}, augment, SIZE), mean)

    resize = preprocessing.resize_mode(augment)
    assert resize == {"cifar": "stretch", "scale": "central_crop"}[augment]
    export = export_saved_model(
        probe(), str(tmp_path), "probe", image_size=SIZE, mean=mean, logits=False, resize=resize
    )
    loaded = tf.saved_model.load(export)
    served = loaded.signatures["serve_image_bytes"](image_bytes=tf.constant([data]))["probabilities"]
    np.testing.assert_allclose(np.reshape(served, (SIZE, SIZE, 3)), evaluated, rtol=0, atol=1e-5)

    # The pixel signatures resize the same way (here: the same decoded pixels, as uint8 and as float32).
    pixels = preprocessing.decode(data)[tf.newaxis]
    for signature, images in (("serve_uint8", pixels), ("serving_default", tf.cast(pixels, tf.float32))):
        served = loaded.signatures[signature](images=images)["probabilities"]
        np.testing.assert_allclose(np.reshape(served, (SIZE, SIZE, 3)), evaluated, rtol=0, atol=1e-5)


def test_eval_pixels_batch_is_per_image():
    images = tf.random.stateless_uniform([2, 21, 13, 3], [3, 4], 0, 255)
    for mode in preprocessing.RESIZE_MODES:
        batch = preprocessing.eval_pixels(images, mode, (8, 6))
        assert batch.shape == (2, 8, 6, 3)
        for i in range(2):
            np.testing.assert_array_equal(batch[i], preprocessing.eval_pixels(images[i], mode, (8, 6)))
    same = preprocessing.eval_pixels(tf.cast(images[:, :8, :8], tf.uint8), "stretch", 8)
    np.testing.assert_array_equal(same, tf.cast(tf.cast(images[:, :8, :8], tf.uint8), tf.float32))
    assert [preprocessing.resize_mode(a) for a in aug.AUGMENTATIONS] == [
        "stretch",
        "stretch",
        "central_crop",
        "central_crop",
        "stretch",
        "center_square",
    ]
    with pytest.raises(ValueError, match="resize mode"):
        preprocessing.eval_pixels(images, "crop", 8)


def tiny_classifier(size=8, classes=3):
    inputs = keras.Input((size, size, 3), name="images")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(classes, name="predictions")(x), name="tiny")
    model.get_layer("predictions").kernel.assign(model.get_layer("predictions").kernel * 0.01)
    return model


def test_caffe_convention_for_keras_applications_weights(tmp_path):
    """Converted keras.applications weights are served and evaluated on keras_resnet.preprocess_input's input."""
    images = np.random.default_rng(2).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    caffe = keras_resnet.preprocess_input(images.astype(np.float32))  # BGR minus keras.applications' means
    np.testing.assert_allclose(preprocessing.caffe(images), caffe, atol=1e-4)
    np.testing.assert_allclose(preprocessing.network_input(images, "caffe"), caffe, atol=1e-4)

    keras.utils.set_random_seed(3)
    model = tiny_classifier()
    expected = tf.nn.softmax(model(caffe)).numpy()
    trainer_style = tf.nn.softmax(model(images.astype(np.float32) - preprocessing.IMAGENET_MEAN)).numpy()
    assert np.abs(expected - trainer_style).max() > 1e-4, "the conventions agree here: the test would be blind"

    path = export_saved_model(model, str(tmp_path), "converted", image_size=8, preprocessing="caffe")
    out = tf.saved_model.load(path).signatures["serve_uint8"](images=tf.constant(images))
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
    restored = keras.models.load_model(os.path.join(path, "assets.extra", "model.keras"))
    np.testing.assert_allclose(restored(images.astype(np.float32)), expected, atol=1e-5)

    with pytest.raises(ValueError, match="caffe"):
        export_saved_model(model, str(tmp_path), "m", image_size=8, preprocessing="caffe", mean=0.0)
    with pytest.raises(ValueError, match="preprocessing must be one of"):
        export_saved_model(model, str(tmp_path), "m", image_size=8, preprocessing="torch", mean=0.0)
    with pytest.raises(ValueError, match="needs the mean"):
        export_saved_model(model, str(tmp_path), "m", image_size=8)
