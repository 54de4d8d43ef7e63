"""Every network of the paper by name, and the keras.applications-style entry points."""

import dataclasses
import inspect

from keras_resnet.builder import ResNetSpec, build_model

# ImageNet nets (Table 1): stages conv2_x..conv5_x, 64..512 filters, stride 1,2,2,2.
_IMAGENET = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
# CIFAR-10 nets (Sec. 4.2): depth 6n+2, three stages of n basic blocks, 16/32/64 filters.
_CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)


def _imagenet_spec(depth, residual):
    block, blocks = _IMAGENET[depth]
    kind = "resnet" if residual else "plain"
    return ResNetSpec(
        name=f"{kind}{depth}",
        stem="imagenet",
        block=block,
        stackwise_num_blocks=blocks,
        stackwise_num_filters=(64, 128, 256, 512),
        stackwise_strides=(1, 2, 2, 2),
        shortcut="B",
        residual=residual,
    )


def _cifar_spec(depth, residual):
    n = (depth - 2) // 6
    kind = "resnet" if residual else "plain"
    return ResNetSpec(
        name=f"{kind}{depth}",
        stem="cifar",
        block="basic",
        stackwise_num_blocks=(n, n, n),
        stackwise_num_filters=(16, 32, 64),
        stackwise_strides=(1, 2, 2),
        shortcut="A",
        default_size=32,
        default_classes=10,
        residual=residual,
    )


SPECS = {
    spec.name: spec
    for residual in (True, False)
    for spec in [_imagenet_spec(d, residual) for d in _IMAGENET] + [_cifar_spec(d, residual) for d in _CIFAR_DEPTHS]
}


def available():
    """Registered model names, e.g. ['plain110', ..., 'resnet56', ...]."""
    return sorted(SPECS, key=lambda n: (not SPECS[n].residual, SPECS[n].stem != "imagenet", SPECS[n].depth))


def _cifar_depth(key):
    """The depth of "resnet8", "plain14", ...: the CIFAR family is defined for every 6n+2 (Sec. 4.2), not only
    the depths the paper trained; None when `key` is no such name."""
    for kind in ("resnet", "plain"):
        digits = key[len(kind) :]
        if key.startswith(kind) and digits.isdigit() and int(digits) >= 8 and (int(digits) - 2) % 6 == 0:
            return int(digits)
    return None


def get_spec(model_name, shortcut=None, variant=None):
    """The registered spec for `model_name` (or any 6n+2 CIFAR depth), with `shortcut`/`variant` overrides."""
    key = str(model_name).lower().replace("-", "").replace("_", "")
    if key in SPECS:
        spec = SPECS[key]
    elif depth := _cifar_depth(key):
        spec = _cifar_spec(depth, residual=key.startswith("resnet"))
    else:
        raise ValueError(
            f"Unknown model {model_name!r}. Available: {', '.join(available())}. "
            f"ImageNet depths: {sorted(_IMAGENET)}; CIFAR depths: any 6n+2 (n >= 1), the paper's "
            f"{list(_CIFAR_DEPTHS)}."
        )
    if shortcut is not None:
        if not spec.residual:
            raise ValueError(
                f"{spec.name} is a plain network: it has no shortcuts, so shortcut={shortcut!r} "
                f"means nothing. Use resnet{spec.depth} for shortcut options A/B/C."
            )
        spec = dataclasses.replace(spec, shortcut=str(shortcut).upper())
    if variant is not None:
        spec = dataclasses.replace(spec, variant=variant)
    spec.validate()
    return spec


def build(
    model_name,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=None,
    classifier_activation="softmax",
    name=None,
    shortcut=None,
    variant=None,
    zero_init_residual=False,
    data_format=None,
):
    """Build a registered network by name: `build("resnet56")`, `build("plain34", classes=10)`.

    Arguments are keras.applications' (`include_top`, `weights`, `input_tensor`,
    `input_shape`, `pooling`, `classes`, `classifier_activation`, `name`), plus
    `shortcut` ("A", "B", "C"), `variant` ("v1", "v1.5", "v2") and `zero_init_residual`.
    `weights` is None, "imagenet" (ResNet50/101/152, converted from keras.applications)
    or a path (keras.applications' .h5 file, or our own `.weights.h5`).
    """
    from keras_resnet import weights as weights_lib

    spec = get_spec(model_name, shortcut, variant)
    weights_lib.check(spec, weights, include_top, classes)
    model = build_model(
        spec,
        include_top=include_top,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        name=name,
        zero_init_residual=zero_init_residual,
        data_format=data_format,
    )
    if weights is not None:
        weights_lib.load(model, spec, weights)
    return model


def _entry_point(model_name):
    def entry_point(*args, **kwargs):
        return build(model_name, *args, **kwargs)

    # build's signature minus `model_name`, so help() and IDEs show keras.applications' arguments.
    entry_point.__signature__ = inspect.Signature(list(inspect.signature(build).parameters.values())[1:])
    spec = SPECS[model_name]
    kind = "ResNet" if spec.residual else "Plain"
    entry_point.__name__ = entry_point.__qualname__ = f"{kind}{spec.depth}"
    entry_point.__doc__ = (
        f"{kind}-{spec.depth} ({spec.stem}, {spec.block} blocks, default shortcut "
        f"{spec.shortcut if spec.residual else 'none'}). See `keras_resnet.build` for arguments."
    )
    return entry_point


ResNet18, ResNet34, ResNet50, ResNet101, ResNet152 = (_entry_point(f"resnet{d}") for d in _IMAGENET)
Plain18, Plain34, Plain50, Plain101, Plain152 = (_entry_point(f"plain{d}") for d in _IMAGENET)
ResNet20, ResNet32, ResNet44, ResNet56, ResNet110, ResNet1202 = (_entry_point(f"resnet{d}") for d in _CIFAR_DEPTHS)
Plain20, Plain32, Plain44, Plain56, Plain110, Plain1202 = (_entry_point(f"plain{d}") for d in _CIFAR_DEPTHS)
