"""The paper's recipes (../shared/reference.md) as data; every value is a flag default."""

# Sec. 4.2: batch 128, lr 0.1 /10 at 32k and 48k, stop at 64k, wd 1e-4, momentum 0.9,
# 4-px pad + crop + flip, per-pixel mean; 45k/5k split.
CIFAR10 = dict(
    model="resnet20",
    data="tfds:cifar10",
    validation_split=5000,
    image_size=32,
    augment="cifar",
    mean="per_pixel",
    batch_size=128,
    lr=0.1,
    lr_batch=128,
    schedule="step",
    decay_steps=[32000, 48000],
    steps=64000,
    warmup_epochs=0.0,
    weight_decay=1e-4,
    momentum=0.9,
)

# Sec. 3.4: ResNet-50, batch 256, lr 0.1 /10 at 30/60/80 of 90 epochs, scale augmentation,
# per-channel mean; linear scaling with a 5-epoch warm-up above 256 (Goyal et al. 2017).
IMAGENET = dict(
    model="resnet50",
    data="tfrecord:/data/imagenet",
    validation_split=0,
    image_size=224,
    augment="scale",
    mean="rgb",
    batch_size=256,
    lr=0.1,
    lr_batch=256,
    schedule="step",
    decay_epochs=[30, 60, 80],
    epochs=90,
    warmup_epochs=None,
    weight_decay=1e-4,
    momentum=0.9,
)

# `make demo`: ResNet-20 on the digits that ship inside scikit-learn, on the CPU.
DIGITS_DEMO = dict(
    CIFAR10,
    data="digits",
    validation_split=297,
    augment="pad_crop",
    batch_size=64,
    lr=0.1,
    lr_batch=64,
    steps=None,
    epochs=15,
    schedule="cosine",
    decay_steps=None,
)
