"""The builders against the paper: parameter counts, shapes, FLOPs, variants, features."""

import keras
import numpy as np
import pytest

import keras_resnet

# docs/paper.md: trainable params (conv no bias, BN gamma+beta, classifier with bias).
PARAMS = {
    # depth: (A / plain, B, C)
    18: (11_515_688, 11_689_512, 12_043_816),
    34: (21_623_848, 21_797_672, 22_716_840),
    50: (22_780_456, 25_557_032, 40_128_552),
    101: (41_772_584, 44_549_160, 76_981_288),
    152: (57_416_232, 60_192_808, 107_335_720),
    20: (269_722, 272_474, 283_962),
    32: (464_154, 466_906, 489_594),
    44: (658_586, 661_338, 695_226),
    56: (853_018, 855_770, 900_858),
    110: (1_727_962, 1_730_714, 1_826_202),
    1202: (19_421_274, 19_424_026, 20_538_714),
}
# Paper, Table 1 / Sec. 4.1: multiply-adds at 224x224 (v1, stride on the 1x1).
PAPER_FLOPS = {18: 1.8e9, 34: 3.6e9, 50: 3.8e9, 101: 7.6e9, 152: 11.3e9}


def trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


COLUMNS = ((0, "resnet", "A"), (1, "resnet", "B"), (2, "resnet", "C"), (0, "plain", None))


def _param_cases():
    for depth, counts in PARAMS.items():
        if depth == 1202:
            continue  # test_resnet1202_counts: built on Keras' numpy backend, 3x faster than TensorFlow's
        for column, kind, shortcut in COLUMNS:
            yield pytest.param(f"{kind}{depth}", shortcut, counts[column], id=f"{kind}{depth}-{shortcut}")


def assert_parameter_counts(model, expected):

    assert trainable(model) == expected
    # Keras also counts BN moving mean/variance: 2 per BN channel, all non-trainable.
    bn_channels = sum(
        layer.gamma.shape[0] for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
    )
    assert model.count_params() == expected + 2 * bn_channels


@pytest.mark.parametrize("name, shortcut, expected", list(_param_cases()))
def test_trainable_parameter_counts_match_reference(name, shortcut, expected):
    assert_parameter_counts(keras_resnet.build(name, shortcut=shortcut), expected)


# Option A (the paper's for CIFAR) and plain at 1,202 layers; B's and C's projections are counted at every
# other depth, and 1,202 only repeats the same blocks (each 1202 build is ~12 s of the suite's 15 minutes).
COLUMNS_1202 = (COLUMNS[0], COLUMNS[3])


@pytest.mark.slow
def test_resnet1202_counts_match_reference():
    """The 1,202-layer nets take ~35 s each to build on TensorFlow; their counts are the same on Keras' numpy
    backend, which builds them 3x faster."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json, math, keras, keras_resnet\n"
        "def counts(m):\n"
        "    bn = sum(l.gamma.shape[0] for l in m.layers if isinstance(l, keras.layers.BatchNormalization))\n"
        "    return sum(math.prod(w.shape) for w in m.trainable_weights), m.count_params(), bn\n"
        f"nets = {[c[1:] for c in COLUMNS_1202]}\n"
        "print(json.dumps([counts(keras_resnet.build(k + '1202', shortcut=s)) for k, s in nets]))"
    )
    env = {**os.environ, "KERAS_BACKEND": "numpy"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    for (column, kind, shortcut), (trainable_count, total, bn_channels) in zip(COLUMNS_1202, found, strict=True):
        expected = PARAMS[1202][column]
        assert (trainable_count, total) == (expected, expected + 2 * bn_channels), f"{kind}1202-{shortcut}"


def test_any_6n_plus_2_depth_builds():
    """Sec. 4.2 defines the CIFAR family for every n: resnet8 (n = 1), plain14 (n = 2), ...; the counts grow by
    the same amount per block as between the paper's depths (20 -> 32 is n 3 -> 5)."""
    for depth, n in ((8, 1), (14, 2)):
        for column, kind, shortcut in COLUMNS:
            per_two_blocks = PARAMS[32][column] - PARAMS[20][column]
            expected = PARAMS[20][column] - (3 - n) * per_two_blocks // 2
            assert trainable(keras_resnet.build(f"{kind}{depth}", shortcut=shortcut)) == expected, (kind, depth)
    for name in ("resnet9", "resnet2", "plain7"):
        with pytest.raises(ValueError, match="any 6n\\+2"):
            keras_resnet.build(name)


def test_default_shortcuts_follow_the_paper():
    assert trainable(keras_resnet.ResNet34()) == PARAMS[34][1]  # ImageNet: B
    assert trainable(keras_resnet.ResNet56()) == PARAMS[56][0]  # CIFAR: A
    assert trainable(keras_resnet.Plain56()) == PARAMS[56][0]
    assert keras_resnet.ResNet56().output_shape == (None, 10)
    assert keras_resnet.ResNet56().input_shape == (None, 32, 32, 3)


def test_registry_lists_every_network():
    names = keras_resnet.available()
    for depth in PARAMS:
        assert f"resnet{depth}" in names and f"plain{depth}" in names
    assert len(names) == 2 * len(PARAMS)
    assert keras_resnet.build("ResNet-56").name == "resnet56"


def test_include_top_and_pooling_shapes():
    assert keras_resnet.ResNet50(include_top=True).output_shape == (None, 1000)
    kw = dict(include_top=False, input_shape=(224, 224, 3))
    assert keras_resnet.ResNet50(**kw).output_shape == (None, 7, 7, 2048)
    assert keras_resnet.ResNet50(pooling="avg", **kw).output_shape == (None, 2048)
    assert keras_resnet.ResNet18(pooling="max", **kw).output_shape == (None, 512)
    assert keras_resnet.ResNet50(include_top=False).output_shape == (None, None, None, 2048)
    model = keras_resnet.ResNet18(classes=7, classifier_activation=None, input_shape=(64, 96, 3))
    assert model.output_shape == (None, 7)
    out = model(np.zeros((2, 64, 96, 3), "float32"))
    assert out.shape == (2, 7)


def test_input_tensor_is_used():
    tensor = keras.Input((32, 32, 3))
    model = keras_resnet.ResNet20(input_tensor=tensor)
    assert model.inputs[0] is tensor


def test_every_layer_is_named_like_keras_applications():
    names = {layer.name for layer in keras_resnet.ResNet50().layers}
    twin = keras.applications.ResNet50(weights=None)
    reference = {layer.name for layer in twin.layers[1:]}  # all but the input
    assert reference <= names
    assert not [n for n in names if n.startswith(("conv2d", "batch_normalization", "activation", "add"))]


@pytest.mark.parametrize("depth", sorted(PAPER_FLOPS))
def test_flops_match_the_paper(depth):
    counted = keras_resnet.flops(keras_resnet.build(f"resnet{depth}"))
    assert counted == pytest.approx(PAPER_FLOPS[depth], rel=0.04)


def test_flops_plain_equals_resnet_with_identity_shortcuts():
    assert keras_resnet.flops(keras_resnet.Plain34()) == keras_resnet.flops(keras_resnet.ResNet34(shortcut="A"))


def test_flops_need_a_fixed_size():
    with pytest.raises(ValueError, match="input_shape=\\(224, 224, 3\\)"):
        keras_resnet.flops(keras_resnet.ResNet18(include_top=False))


def test_v15_moves_the_stride_to_the_3x3():
    v1, v15 = keras_resnet.ResNet50(), keras_resnet.ResNet50(variant="v1.5")
    assert trainable(v1) == trainable(v15)
    assert v1.get_layer("conv3_block1_1_conv").strides == (2, 2)
    assert v15.get_layer("conv3_block1_1_conv").strides == (1, 1)
    assert v15.get_layer("conv3_block1_2_conv").strides == (2, 2)
    assert keras_resnet.flops(v15) == pytest.approx(4.09e9, rel=0.01)  # torchvision's ResNet-50 number


def test_v2_is_pre_activation():
    model = keras_resnet.ResNet20(variant="v2")
    names = [layer.name for layer in model.layers]
    assert "conv2_block1_preact_bn" in names and "post_relu" in names
    assert "conv1_bn" not in names  # the stem's BN-ReLU moves into the first block
    assert model(np.ones((1, 32, 32, 3), "float32")).shape == (1, 10)


def test_zero_init_residual_makes_blocks_start_as_identity():
    model = keras_resnet.ResNet20(zero_init_residual=True)
    assert not np.any(model.get_layer("conv2_block1_2_bn").gamma.numpy())
    assert np.all(model.get_layer("conv2_block1_1_bn").gamma.numpy() == 1)
    # With every residual branch silenced, a block passes relu(shortcut) through.
    probe = keras.Model(
        model.inputs, [model.get_layer("conv1_relu").output, model.get_layer("conv2_block3_out").output]
    )
    stem, block3 = probe(np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32"))
    np.testing.assert_allclose(block3, stem, atol=1e-6)


def test_plain_nets_have_no_shortcuts():
    names = {layer.name for layer in keras_resnet.Plain20().layers}
    assert not [n for n in names if n.endswith(("_add", "_0_conv", "_0_pad"))]
    assert "conv4_block3_out" in names


def test_option_a_pads_with_zeros_and_subsamples():
    layer = keras_resnet.SubsampleZeroPad(8, 2)
    x = np.arange(2 * 4 * 4 * 3, dtype="float32").reshape(2, 4, 4, 3)
    y = keras.ops.convert_to_numpy(layer(x))
    assert y.shape == (2, 2, 2, 8)
    np.testing.assert_array_equal(y[..., :3], x[:, ::2, ::2, :])
    assert not y[..., 3:].any()


def test_channels_first_builds():
    model = keras_resnet.build("resnet20", data_format="channels_first")
    assert model.input_shape == (None, 3, 32, 32)
    assert trainable(model) == PARAMS[20][0]


@pytest.mark.parametrize(
    "name, kwargs, shapes",
    [
        ("resnet50", dict(input_shape=(224, 224, 3)), {"C2": 56, "C3": 28, "C4": 14, "C5": 7}),
        ("resnet18", dict(input_shape=(128, 128, 3), variant="v2"), {"C2": 32, "C3": 16, "C4": 8, "C5": 4}),
        ("resnet20", dict(input_shape=(32, 32, 3)), {"C2": 32, "C3": 16, "C4": 8}),
    ],
)
def test_stage_features(name, kwargs, shapes):
    model = keras_resnet.build(name, include_top=False, **kwargs)
    features = keras_resnet.stage_features(model)
    out = features(np.zeros((1, *kwargs["input_shape"]), "float32"))
    assert {key: value.shape[1] for key, value in out.items()} == shapes
    assert out[max(shapes)].shape[-1] == model.output_shape[-1]
    if kwargs.get("variant") == "v2":
        np.testing.assert_allclose(out["C5"], model(np.zeros((1, *kwargs["input_shape"]), "float32")))
