"""Learning-rate schedules as serializable Keras schedules (they live in the optimizer's checkpoint)."""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="trainers")
class ResNetSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, an optional constant warm-up lr, then step (/10 at boundaries) or cosine decay.

    The paper's ResNet-110 trick (0.01 until training error < 80 %, ~400 iterations) is the
    constant warm-up; Goyal et al.'s linear warm-up is the other.
    """

    def __init__(
        self, peak_lr, total_steps, boundaries=(), kind="step", warmup_steps=0, constant_lr=None, constant_steps=0
    ):
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.boundaries = [int(b) for b in boundaries]
        self.kind = kind
        self.warmup_steps = int(warmup_steps)
        self.constant_lr = constant_lr
        self.constant_steps = int(constant_steps) if constant_lr is not None else 0

    def __call__(self, step):
        step = ops.cast(step, "float32")
        if self.kind == "cosine":
            start = float(max(self.warmup_steps, self.constant_steps))
            span = max(1.0, self.total_steps - start)
            progress = ops.clip((step - start) / span, 0.0, 1.0)
            lr = 0.5 * self.peak_lr * (1.0 + ops.cos(math.pi * progress))
        else:
            drops = sum(ops.cast(step >= b, "float32") for b in self.boundaries) if self.boundaries else 0.0
            lr = self.peak_lr * ops.power(0.1, drops)
        if self.warmup_steps:
            lr = ops.where(step < self.warmup_steps, self.peak_lr * (step + 1) / self.warmup_steps, lr)
        if self.constant_steps:
            lr = ops.where(step < self.constant_steps, ops.cast(self.constant_lr, "float32"), lr)
        return lr

    def get_config(self):
        return dict(
            peak_lr=self.peak_lr,
            total_steps=self.total_steps,
            boundaries=self.boundaries,
            kind=self.kind,
            warmup_steps=self.warmup_steps,
            constant_lr=self.constant_lr,
            constant_steps=self.constant_steps,
        )


def boundaries_of(config, steps_per_epoch, total_steps):
    """Where the step schedule divides the lr by 10, in steps: given in steps, epochs or fractions of the run."""
    if config.decay_steps:
        return [int(b) for b in config.decay_steps]
    if config.decay_epochs:
        return [round(e * steps_per_epoch) for e in config.decay_epochs]
    return [round(f * total_steps) for f in config.decay_at or []]


def needs_constant_warmup(config):
    """The paper's ResNet-110 warm-up (Sec. 4.2: lr 0.1 is too large to start converging), for every CIFAR net
    of 56 layers or more, plain or residual, decided on the network the name resolves to.

    The paper needed it from 110 layers; our ResNet-56 at lr 0.1 from step 0 collapses within 20 steps to an
    output that ignores its input (train top-1 13 % after 2 epochs), and learns after 0.01 for a few dozen
    steps. Plain nets of the same depth get the same warm-up, so the degradation study compares one recipe.
    """
    from keras_resnet.models import get_spec

    spec = get_spec(config.model)
    return spec.stem == "cifar" and spec.depth >= 56


def from_config(config, steps_per_epoch, total_steps):
    """The schedule a Config asks for, with 'auto' values resolved."""
    peak = config.lr * config.batch_size / config.lr_batch
    boundaries = boundaries_of(config, steps_per_epoch, total_steps)
    warmup_epochs = config.warmup_epochs
    if warmup_epochs is None:  # auto: only when linear scaling raised the lr
        warmup_epochs = 5 if config.batch_size > config.lr_batch else 0
    constant_lr = config.warmup_lr
    if constant_lr is None and needs_constant_warmup(config):
        constant_lr = 0.01 * config.batch_size / config.lr_batch
    return ResNetSchedule(
        peak,
        total_steps,
        boundaries,
        config.schedule,
        warmup_steps=round(warmup_epochs * steps_per_epoch),
        constant_lr=constant_lr,
        constant_steps=config.warmup_lr_steps,
    )


def describe(schedule, config):
    """What the run will really do, for the start log; a warning when no lr drop falls inside the run."""
    peak = schedule.peak_lr
    scaled = f" ({config.lr:g} x {config.batch_size}/{config.lr_batch} linear scaling)" if peak != config.lr else ""
    parts = [f"lr {peak:g}{scaled}"]
    if schedule.warmup_steps:
        parts.append(f"linear warm-up over {schedule.warmup_steps} steps")
    if schedule.constant_steps:
        parts.append(f"{schedule.constant_lr:g} for the first {schedule.constant_steps} steps")
    if schedule.kind == "cosine":
        parts.append(f"cosine decay to 0 at step {schedule.total_steps}")
    elif schedule.boundaries:
        parts.append(f"/10 at steps {', '.join(map(str, schedule.boundaries))} of {schedule.total_steps}")
    else:
        parts.append(f"constant for {schedule.total_steps} steps")
    warning = None
    if schedule.kind == "step" and schedule.boundaries and min(schedule.boundaries) >= schedule.total_steps:
        warning = (
            f"every lr drop ({', '.join(map(str, schedule.boundaries))}) lies at or past the run's last step "
            f"{schedule.total_steps}: the lr never decays. Use --decay-at fractions or fewer --decay-steps."
        )
    return ", ".join(parts), warning
