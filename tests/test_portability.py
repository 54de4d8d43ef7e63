"""Models save/load safely and run on other backends; the package never imports TensorFlow."""

import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_resnet

PACKAGE = pathlib.Path(keras_resnet.__file__).parent
# Deeper nets repeat the blocks of shallower ones of the same family (stem, block, residual or plain): the
# 101/152-layer nets are resnet50's and plain50's bottlenecks, 110/1202 resnet56's and plain56's basic blocks,
# more of them. Saving them repeats those at 15-120 s a model, so (as timm excludes its biggest models from
# its slow tests) they are left out here; test_models builds each and checks its parameter count.
SAVED_ELSEWHERE = {f"{kind}{depth}" for kind in ("resnet", "plain") for depth in (101, 152, 110, 1202)}


@pytest.mark.parametrize(
    "name",
    [n for n in keras_resnet.available() if n not in SAVED_ELSEWHERE],
)
def test_every_model_saves_and_loads_safely(name, tmp_path):
    model = keras_resnet.build(name)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    size = model.input_shape[1]
    x = np.random.default_rng(0).uniform(0, 1, (1, size, size, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    assert np.isfinite(expected).all()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x, training=False)), expected)


@pytest.mark.parametrize("kwargs", [dict(shortcut="A", variant="v2"), dict(variant="v1.5", zero_init_residual=True)])
def test_variants_save_and_load(kwargs, tmp_path):
    model = keras_resnet.ResNet20(**kwargs)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    x = np.random.default_rng(1).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_the_package_imports_no_tensorflow():
    for path in PACKAGE.rglob("*.py"):
        for line in path.read_text().splitlines():
            assert not line.strip().startswith(("import tensorflow", "from tensorflow")), f"{path}: {line}"


JAX_SCRIPT = """
import sys
import numpy as np
import dataclasses
import keras_resnet
import keras
from keras_resnet.builder import build_model
assert keras.backend.backend() == "jax"
# Option A's shortcut layer on a CIFAR net, and bottleneck blocks with projections and a stride: ResNet-50's
# spec cut to two stages of one block (every kind of layer; JAX builds and runs the ops one by one here).
bottleneck = dataclasses.replace(
    keras_resnet.get_spec("resnet50"), stackwise_num_blocks=(1, 1), stackwise_num_filters=(64, 128),
    stackwise_strides=(1, 2),
)
for name, size in (("resnet8", 32), ("resnet50", 64)):  # 64 px is enough for the bottleneck net
    spec = bottleneck if name == "resnet50" else keras_resnet.get_spec(name)
    model = build_model(spec, input_shape=(size, size, 3))
    out = model(np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32"))
    out = np.asarray(out)
    assert out.shape == (2, model.output_shape[-1]) and np.allclose(out.sum(-1), 1, atol=1e-4), out
    print(name, out.shape)
print("tensorflow imported:", "tensorflow" in sys.modules)
"""


@pytest.mark.slow
def test_forward_pass_on_jax_backend():
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", JAX_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resnet8 (2, 10)" in result.stdout and "resnet50 (2, 1000)" in result.stdout
    assert "tensorflow imported: False" in result.stdout
