"""The paper's recipes (docs/paper.md) as data; every value is a flag default."""

# Sec. 4.2: batch 128, lr 0.1 /10 at 32k and 48k, stop at 64k, wd 1e-4, momentum 0.9,
# 4-px pad + crop + flip, per-pixel mean; 45k/5k split. The length is in epochs (64k iterations of
# 128 on 45k images = 182 epochs) and the drops are at 1/2 and 3/4 of the run, so the schedule means
# the same training at any --batch-size (the lr scales linearly) and any --epochs.
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
    decay_at=[0.5, 0.75],
    epochs=182,
    warmup_epochs=0.0,
    weight_decay=1e-4,
    momentum=0.9,
)

# `--recipe fast`: the paper's net, data and augmentation in 90 epochs (49 % of its 182), which fits one
# 2-core CPU session (saved_models/resnet20_cifar10/MODEL_CARD.md: the runs, their times and accuracies):
# a cosine decay instead of the two drops, wd 5e-4 as most CIFAR trainers since use for short schedules,
# and label smoothing 0.1. The shipped model's version 2 was this at 75 epochs, version 1 at 28 without
# label smoothing.
CIFAR10_FAST = dict(
    CIFAR10,
    schedule="cosine",
    decay_at=None,
    epochs=90,
    weight_decay=5e-4,
    label_smoothing=0.1,
)

CIFAR10_RECIPES = {"paper": CIFAR10, "fast": CIFAR10_FAST}

# Sec. 3.4: ResNet-50, batch 256, lr 0.1 /10 at 30/60/80 of 90 epochs (kept as fractions of the run,
# so --epochs 45 drops at 15/30/40), scale augmentation, per-channel mean; linear scaling with a
# 5-epoch warm-up above 256 (Goyal et al. 2017).
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
    decay_at=[1 / 3, 2 / 3, 8 / 9],
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
    decay_at=None,
)

# Faster R-CNN on PASCAL VOC (Detectron's VOC recipe): batch 16, lr 0.02 (0.00125 an image), /10 after 2/3
# of the run, 18k iterations on VOC07 trainval (5,011 images: ~57 epochs), frozen BN, a short warm-up.
# Images: shorter side 600 (the paper's), 0.8-1.2x and flips when training. `--image-size 320` on a CPU.
DETECTION = dict(
    task="detection",
    detector="frcnn-c4",
    model="resnet50",
    data="voc:data/VOC2007",
    validation_split=0,
    image_size=600,
    augment="flip_scale",
    mean="rgb",
    batch_size=16,
    lr=0.02,
    lr_batch=16,
    schedule="step",
    decay_at=[2 / 3],
    epochs=57,
    warmup_epochs=0.5,
    weight_decay=1e-4,
    momentum=0.9,
)
