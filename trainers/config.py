"""Training configuration: one dataclass, recipes as data, flags over a --config file over the recipe."""

import argparse
import dataclasses
import json
import os


@dataclasses.dataclass
class Config:
    # What to train.
    model: str = "resnet20"
    shortcut: str | None = None
    variant: str = "v1"
    zero_init_residual: bool = False
    sync_bn: bool = False
    # Data.
    data: str = "synthetic"
    data_dir: str | None = None
    download: bool = False
    validation_split: int = 0
    image_size: int = 32
    augment: str = "cifar"
    mean: str = "per_pixel"
    num_classes: int | None = None
    num_examples: str | None = None
    # Optimisation.
    batch_size: int = 128
    epochs: float | None = None
    steps: int | None = None
    lr: float = 0.1
    lr_batch: int = 128
    schedule: str = "step"
    decay_steps: list | None = None
    decay_epochs: list | None = None
    decay_at: list | None = None
    warmup_epochs: float | None = 0.0
    warmup_lr: float | None = None
    warmup_lr_steps: int = 400
    momentum: float = 0.9
    weight_decay: float = 1e-4
    bn_decay: bool = True
    label_smoothing: float = 0.0
    # Machines and numerics.
    gpus: int | None = None
    cpu_replicas: int | None = None
    precision: str = "auto"
    loss_scale: float | None = None
    xla: bool = False
    seed: int = 0
    steps_per_loop: int | None = None
    # Outputs.
    model_dir: str | None = None
    checkpoint_steps: int = 0
    keep_checkpoints: int = 3
    log_steps: int = 50
    profile_steps: str | None = None
    ten_crop: bool = False
    export: bool = True
    export_dir: str = "saved_models"
    export_name: str | None = None
    progress: bool = True
    tf_logs: bool = False


HELP = {
    "model": "registered network name (keras_resnet.available())",
    "shortcut": "shortcut option A, B or C (default: the model's, A for CIFAR, B for ImageNet)",
    "variant": "v1 (paper), v1.5 (stride on the 3x3) or v2 (pre-activation)",
    "zero_init_residual": "start each block's last BN gamma at 0",
    "sync_bn": "batch statistics over all replicas (exactly a single device's step)",
    "data": "tfds:NAME | tfrecord:DIR | folder:DIR | digits | synthetic",
    "data_dir": "tensorflow-datasets data (and manual) directory",
    "download": "download a tfds data set that is not prepared yet (needs internet)",
    "validation_split": "hold out this many training images for validation (0: the source's own split)",
    "image_size": "training crop side in pixels",
    "augment": "cifar | pad_crop | scale | inception | none",
    "mean": "per_pixel (training-set mean image), rgb (ImageNet means) or none",
    "num_classes": "classes (default: from the data)",
    "num_examples": "record counts when no count file exists, e.g. train=1281167,validation=50000",
    "batch_size": "global batch, split across replicas",
    "epochs": "train this many epochs (overrides --steps from the recipe)",
    "steps": "train this many steps",
    "lr": "learning rate at --lr-batch; scaled linearly with --batch-size",
    "lr_batch": "batch size at which --lr applies",
    "schedule": "step (divide by 10 at the boundaries) or cosine",
    "decay_steps": "step schedule boundaries in iterations, e.g. 32000,48000",
    "decay_epochs": "step schedule boundaries in epochs, e.g. 30,60,80",
    "decay_at": "step schedule boundaries as fractions of the run, e.g. 0.5,0.75 (any length and batch size)",
    "warmup_epochs": "linear warm-up epochs (auto: 5 when --batch-size > --lr-batch)",
    "warmup_lr": "constant warm-up learning rate (paper: 0.01 for ResNet-110; auto for 110/1202)",
    "warmup_lr_steps": "steps at --warmup-lr",
    "momentum": "SGD momentum",
    "weight_decay": "L2 weight decay",
    "bn_decay": "weight decay on BN parameters and biases too (--no-bn-decay: kernels only)",
    "label_smoothing": "label smoothing",
    "gpus": "mirror over this many GPUs (error if fewer exist)",
    "cpu_replicas": "split the CPU into N logical devices and mirror over them",
    "precision": "auto (bf16 where computed natively, fp16 on GPUs without bf16, else fp32) | fp32 | bf16 | fp16",
    "loss_scale": "fp16: initial dynamic loss scale (default: Keras's 32768); halved on each overflow",
    "xla": "compile the per-replica step with XLA",
    "steps_per_loop": "train steps per device loop; logs and checkpoints at loop ends (default: by device)",
    "seed": "random seed (weights, shuffling, augmentation; not the validation split, which is fixed)",
    "model_dir": "checkpoints, logs and config; rerunning the same command resumes from here",
    "checkpoint_steps": "also checkpoint every N steps (0: once per epoch)",
    "keep_checkpoints": "checkpoints kept",
    "log_steps": "write TensorBoard scalars every N steps",
    "profile_steps": "profile steps A,B into TensorBoard",
    "ten_crop": "evaluate with 10 crops",
    "export": "export a SavedModel at the end",
    "export_dir": "SavedModel root (TF Serving layout <dir>/<name>/<version>)",
    "export_name": "TF Serving model name (default: the run directory's name)",
    "progress": "show a progress bar (a line per interval when stdout is not a terminal)",
    "tf_logs": "let TensorFlow's own INFO/WARNING logs through (quiet by default)",
}

CHOICES = {
    "variant": ("v1", "v1.5", "v2"),
    "augment": ("cifar", "pad_crop", "scale", "inception", "none"),
    "mean": ("per_pixel", "rgb", "none"),
    "schedule": ("step", "cosine"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
}


def _number_list(text):
    return [float(v) if "." in v else int(v) for v in str(text).split(",") if v.strip()]


def _bool(text):
    value = str(text).lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _type_of(field):
    kind = str(field.type)
    if "bool" in kind:
        return _bool
    if "list" in kind:
        return _number_list
    if "float" in kind:
        return float
    if "int" in kind:
        return int
    return str


def load_file(path):
    """A JSON or YAML file of config fields (dashes or underscores)."""
    if not os.path.exists(path):
        raise SystemExit(f"--config {path}: no such file")
    with open(path, encoding="utf-8") as f:
        if path.endswith((".yaml", ".yml")):
            import yaml

            values = yaml.safe_load(f) or {}
        else:
            values = json.load(f)
    values = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(Config)})
    if unknown:
        raise SystemExit(
            f"--config {path}: unknown fields {unknown}; valid: {[f.name for f in dataclasses.fields(Config)]}"
        )
    return values


def parser(recipe, prog, description):
    """Every Config field as a flag, its default the recipe's."""
    defaults = dataclasses.asdict(Config(**recipe))
    p = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--config", help="JSON/YAML file of settings; flags override it", default=None)
    for field in dataclasses.fields(Config):
        default = defaults[field.name]
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        kwargs = dict(type=_type_of(field), default=argparse.SUPPRESS, help=f"{HELP[field.name]} (default: {shown})")
        if field.name in CHOICES:
            kwargs["choices"] = CHOICES[field.name]
        if _type_of(field) is _bool:
            kwargs.update(action=argparse.BooleanOptionalAction)
            del kwargs["type"]
        p.add_argument("--" + field.name.replace("_", "-"), **kwargs)
    return p


def resolve(recipe, argv=None, prog=None, description=None):
    """Recipe < --config file < flags. `--epochs` on the command line beats the recipe's --steps."""
    args = vars(parser(recipe, prog, description).parse_args(argv))
    values = dict(recipe)
    config_file = args.pop("config", None)
    layers = [load_file(config_file)] if config_file else []
    for layer in [*layers, args]:
        if "epochs" in layer and "steps" not in layer:
            values["steps"] = None
        # One way of placing the lr drops at a time: the most recently given one wins.
        given = [k for k in BOUNDARY_FIELDS if layer.get(k)]
        if given:
            values.update({k: None for k in BOUNDARY_FIELDS if k not in given})
        values.update(layer)
    return Config(**values)


BOUNDARY_FIELDS = ("decay_steps", "decay_epochs", "decay_at")
# Settings that change what a run computes: a checkpoint only resumes under the same values.
# The rest (where files go, how often to log, how many devices) may change between reruns.
RUNTIME_FIELDS = frozenset(
    {
        "data_dir",
        "download",
        "gpus",
        "cpu_replicas",
        "xla",
        "model_dir",
        "checkpoint_steps",
        "keep_checkpoints",
        "log_steps",
        "profile_steps",
        "ten_crop",
        "export",
        "export_dir",
        "export_name",
        "progress",
        "tf_logs",
        "steps_per_loop",
        "num_examples",
    }
)


def training_fields(config):
    """The settings a checkpoint was trained under, as a dict."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in RUNTIME_FIELDS}


def differences(saved, now):
    """'field: saved -> now' for each training setting that differs."""
    old, new = training_fields(saved), training_fields(now)
    return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in old if old[k] != new[k]]


def save(config, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(dataclasses.asdict(config), f, indent=2, sort_keys=True)


def read(path):
    with open(path, encoding="utf-8") as f:
        return Config(**json.load(f))
