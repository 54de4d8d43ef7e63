"""Training configuration: one dataclass, recipes as data, flags over a --config file over the recipe.

A value is converted the same way whether it comes from a flag or a --config file, and `validate` refuses
settings that cannot work before anything is written, naming the flag to change.
"""

import argparse
import dataclasses
import difflib
import json
import numbers
import os
import re
import types


@dataclasses.dataclass
class Config:
    # What to train.
    task: str = "classification"
    detector: str = "frcnn-c4"
    backbone_weights: str | None = None
    init_from: str | None = None
    model: str = "resnet20"
    shortcut: str | None = None
    variant: str = "v1"
    zero_init_residual: bool = False
    sync_bn: bool = False
    # Data.
    data: str = "synthetic"
    data_dir: str | None = None
    download: bool = False
    validation_split: int | float = 0  # a count (kept an int: 5000, not 5000.0) or a fraction in (0, 1)
    image_size: int = 32
    augment: str = "cifar"
    random_erasing: float = 0.0
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
    cluster: str | None = None
    cluster_port: int = 8888
    worker_hosts: str | None = None
    task_index: int | None = None
    tpu: str | None = None
    data_service: str | None = None
    data_service_timeout: float = 30.0
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
    flip_test: bool = False
    eval_every: int = 1
    export: bool = True
    export_dir: str = "saved_models"
    export_name: str | None = None
    progress: bool = True
    tf_logs: bool = False


class ConfigError(ValueError):
    """A setting that cannot work. The message names the flag (or --config field); `field` is its Config name."""

    def __init__(self, message, field=None):
        super().__init__(message)
        self.field = field


# What each flag means; --help adds "(default: X)" from the recipe, or UNSET's words where the default is None.
HELP = {
    "task": "classification, or detection (python -m trainers.detection)",
    "detector": "detection: frcnn-c4 (the paper's Faster R-CNN on conv4_x, conv5_x as the box head) or frcnn-fpn",
    "backbone_weights": "detection: start the backbone from a classification run of ours (its --model-dir) or "
    "imagenet (keras.applications' weights, downloaded once)",
    "init_from": "start the network from another run's newest checkpoint (its --model-dir) or an exported model "
    "(saved_models/NAME/VERSION; weights only: the "
    "step, optimizer and schedule start afresh): fine-tuning, or a second schedule cycle. Layers whose shapes "
    "differ (a classifier of other classes) keep their initialisation",
    "model": "registered network name (keras_resnet.available())",
    "shortcut": "shortcut option A, B or C",
    "variant": "v1 (paper), v1.5 (stride on the 3x3) or v2 (pre-activation)",
    "zero_init_residual": "start each block's last BN gamma at 0",
    "sync_bn": "batch statistics over all replicas (exactly a single device's step)",
    "data": "tfds:NAME | tfrecord:DIR | folder:DIR | digits | synthetic; "
    "detection: voc:DIR | coco:DIR | tfds:voc/2007 | shapes[:N]",
    "data_dir": "tensorflow-datasets data (and manual) directory",
    "download": "download a tfds data set that is not prepared yet (needs internet)",
    "validation_split": "hold out this many training images (a count, e.g. 5000) or this fraction of them "
    "(e.g. 0.1) for validation; 0: the data's own validation split",
    "image_size": "training crop side in pixels",
    "augment": "cifar (4-px pad, crop, flip), pad_crop (no flip), scale (shorter side 256-480, crop, flip), "
    "inception (area/aspect crop, flip) or none; detection: flip_scale (flips, shorter side x0.8-1.2), flip "
    "or none",
    "random_erasing": "classification: the probability of erasing a random rectangle (2-40 %% of the image, aspect "
    "0.3-3.3) of each training image with noise, after --augment (Zhong et al. 2017; 0.5 is theirs; 0 turns it off)",
    "mean": "per_pixel (training-set mean image), rgb (ImageNet means) or none",
    "num_classes": "classes",
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
    "warmup_epochs": "linear warm-up epochs",
    "warmup_lr": "constant warm-up learning rate (paper: 0.01 for ResNet-110)",
    "warmup_lr_steps": "steps at --warmup-lr",
    "momentum": "SGD momentum",
    "weight_decay": "L2 weight decay",
    "bn_decay": "weight decay on BN parameters and biases too (--no-bn-decay: kernels only)",
    "label_smoothing": "label smoothing",
    "gpus": "mirror over this many GPUs (error if fewer exist)",
    "cpu_replicas": "split the CPU into N logical devices and mirror over them",
    "cluster": "slurm: one worker per task of the srun step, from Slurm's environment (SlurmClusterResolver); "
    "each mirrors over its node's GPUs (--gpus N per task)",
    "cluster_port": "--cluster slurm: first gRPC port of the workers on each node (tasks on a node count up)",
    "worker_hosts": "every worker's HOST:PORT, the same list on each, e.g. h1:2222,h2:2222 (writes TF_CONFIG; "
    "the first is the chief). gRPC between workers is unauthenticated: a private network only",
    "task_index": "this process's position in --worker-hosts, 0 (the chief) to N-1",
    "tpu": "TPUStrategy on a TPU: local (a TPU VM's own chips) or a Cloud TPU's name or grpc://IP:8470",
    "data_service": "decode and augment the training data on tf.data service workers (python -m "
    "trainers.data_service): the dispatcher's grpc://HOST:PORT",
    "data_service_timeout": "seconds the run waits for a --data-service dispatcher that stopped answering before "
    "it saves and stops",
    "precision": "auto: bf16 where computed natively, fp16 on GPUs without bf16, else fp32",
    "loss_scale": "fp16: initial dynamic loss scale; halved on each overflow",
    "xla": "compile the per-replica step with XLA",
    "steps_per_loop": "train steps per device loop; logs and checkpoints at loop ends",
    "seed": "random seed (weights, shuffling, augmentation; not the validation split, which is fixed)",
    "model_dir": "checkpoints, logs and config; rerunning the same command resumes from here",
    "checkpoint_steps": "also checkpoint every N steps (0: once per epoch)",
    "keep_checkpoints": "checkpoints kept",
    "log_steps": "write TensorBoard scalars every N steps",
    "profile_steps": "profile steps A,B into TensorBoard",
    "ten_crop": "evaluate with 10 crops",
    "flip_test": "evaluate each image and its mirror image (mean of the two softmaxes): flip test-time averaging",
    "eval_every": "evaluate every N epochs (and always after the last step)",
    "export": "export a SavedModel at the end",
    "export_dir": "SavedModel root (TF Serving layout <dir>/<name>/<version>)",
    "export_name": "TF Serving model name",
    "progress": "show a progress bar (a line per interval when stdout is not a terminal)",
    "tf_logs": "let TensorFlow's own INFO/WARNING logs through (otherwise only its errors show)",
}

# What a None default means, for --help.
UNSET = {
    "backbone_weights": "none: the backbone starts from random weights",
    "init_from": "none: random initial weights",
    "shortcut": "the model's: A for CIFAR nets, B for ImageNet nets",
    "data_dir": "tensorflow-datasets' own, ~/tensorflow_datasets",
    "num_classes": "from the data",
    "num_examples": "the count file DIR/counts.json, else counted once",
    "epochs": "none, --steps sets the length",
    "steps": "none, --epochs sets the length",
    "decay_steps": "none",
    "decay_epochs": "none",
    "decay_at": "none",
    "warmup_epochs": "auto: 5 when --batch-size > --lr-batch, else 0",
    "warmup_lr": "auto: 0.01 at --lr-batch for the CIFAR nets of 56 layers and more (plain too), else none",
    "gpus": "every GPU found, else the CPU",
    "cpu_replicas": "none",
    "cluster": "none: TF_CONFIG if set, else this machine",
    "worker_hosts": "none: TF_CONFIG if set, else this machine",
    "task_index": "none",
    "tpu": "none",
    "data_service": "none: decode in this process",
    "loss_scale": "Keras's 32768",
    "steps_per_loop": "by device: CPU 10, GPU 100, TPU 500",
    "model_dir": "runs/<recipe>-<model>-<data>-<hash of the settings>",
    "profile_steps": "none",
    "export_name": "the run directory's name",
}

CHOICES = {
    "task": ("classification", "detection"),
    "detector": ("frcnn-c4", "frcnn-fpn"),
    "variant": ("v1", "v1.5", "v2"),
    "augment": ("cifar", "pad_crop", "scale", "inception", "flip_scale", "flip", "none"),
    "mean": ("per_pixel", "rgb", "none"),
    "schedule": ("step", "cosine"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "cluster": ("slurm",),
}

DATA_FORMS = ("tfds:NAME", "tfrecord:DIR", "folder:DIR", "digits", "synthetic")
DATA_SUFFIX = {"tfds": ":NAME", "tfrecord": ":DIR", "folder": ":DIR"}
MIN_IMAGE_SIZE = 8  # smaller crops leave the CIFAR nets' last stage no pixels worth the name

# Names other trainers (Keras, PyTorch examples, timm, Model Garden) use for a field: an unknown --config key
# or flag suggests the field. Keys are compared lower-case without '-' and '_'.
ALIASES = {
    "learningrate": "lr",
    "baselr": "lr",
    "initlr": "lr",
    "initiallr": "lr",
    "initiallearningrate": "lr",
    "epoch": "epochs",
    "numepochs": "epochs",
    "nepochs": "epochs",
    "maxepochs": "epochs",
    "trainepochs": "epochs",
    "totalepochs": "epochs",
    "wd": "weight_decay",
    "weightdecay": "weight_decay",
    "l2": "weight_decay",
    "l2reg": "weight_decay",
    "l2weightdecay": "weight_decay",
    "decay": "weight_decay",
    "bs": "batch_size",
    "batch": "batch_size",
    "globalbatchsize": "batch_size",
    "trainbatchsize": "batch_size",
    "maxsteps": "steps",
    "trainsteps": "steps",
    "totalsteps": "steps",
    "numsteps": "steps",
    "iterations": "steps",
    "maxiter": "steps",
    "arch": "model",
    "architecture": "model",
    "network": "model",
    "modelname": "model",
    "dataset": "data",
    "datasetname": "data",
    "datapath": "data_dir",
    "dataroot": "data_dir",
    "datasetdir": "data_dir",
    "outputdir": "model_dir",
    "outdir": "model_dir",
    "logdir": "model_dir",
    "checkpointdir": "model_dir",
    "ckptdir": "model_dir",
    "savedir": "model_dir",
    "workdir": "model_dir",
    "numgpus": "gpus",
    "ngpus": "gpus",
    "gpu": "gpus",
    "dtype": "precision",
    "mixedprecision": "precision",
    "amp": "precision",
    "lrschedule": "schedule",
    "scheduler": "schedule",
    "lrscheduler": "schedule",
    "milestones": "decay_epochs",
    "lrsteps": "decay_steps",
    "lrdecaysteps": "decay_steps",
    "lrdecayepochs": "decay_epochs",
    "warmup": "warmup_epochs",
    "warmupepoch": "warmup_epochs",
    "randomseed": "seed",
    "smoothing": "label_smoothing",
    "reprob": "random_erasing",
    "erasing": "random_erasing",
    "randomerase": "random_erasing",
    "randomerasingprob": "random_erasing",
    "valsplit": "validation_split",
    "validationsize": "validation_split",
    "valsize": "validation_split",
    "holdout": "validation_split",
    "inputsize": "image_size",
    "imgsize": "image_size",
    "resolution": "image_size",
    "cropsize": "image_size",
    "classes": "num_classes",
    "nclasses": "num_classes",
    "numlabels": "num_classes",
    "jitcompile": "xla",
    "savedmodeldir": "export_dir",
}


def _flag(name):
    return "--" + name.replace("_", "-")


def _squash(name):
    return str(name).lower().replace("-", "").replace("_", "")


def closest_field(key):
    """The Config field an unknown name most likely meant (alias or spelling), or None."""
    names = [f.name for f in dataclasses.fields(Config)]
    squashed = _squash(key)
    by_squash = {_squash(n): n for n in names}
    if squashed in by_squash:
        return by_squash[squashed]
    if squashed in ALIASES:
        return ALIASES[squashed]
    close = difflib.get_close_matches(squashed, list(by_squash), n=1, cutoff=0.75)
    return by_squash[close[0]] if close else None


# -- converters: one per kind of field, shared by the flags and the --config file ----------------------------
# Each takes a flag's text or a file's value and returns the field's value, or raises ArgumentTypeError with
# what was expected (argparse prints it as "argument --X: ...").


def _bad(expected, value):
    return argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _to_int(value):
    expected = "a whole number"
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise _bad(expected, text) from None
    if _is_number(value) and float(value).is_integer():
        return int(value)
    raise _bad(expected, value)


def _to_float(value):
    """Numbers stay as given (an int stays an int, so a saved config hashes the same); text becomes a float."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _bad("a number", value) from None
    if not _is_number(value) or value != value or value in (float("inf"), float("-inf")):
        raise _bad("a number", value)
    return value


def _to_bool(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise _bad("true or false", value)


def _list_item(value):
    if isinstance(value, str):
        text = value.strip()
        if "." in text or "e" in text.lower():
            return float(text)
        return int(text)
    if _is_number(value):
        return value
    raise ValueError(value)


def _to_number_list(value):
    """'30,60,80', a list [30, 60, 80] or one number 30 (YAML reads `decay_epochs: 30` as a number)."""
    expected = "numbers separated by commas, e.g. 30,60,80"
    if isinstance(value, str):
        items = [v for v in re.split(r"[,\s]+", value.strip().strip("[]")) if v]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    elif _is_number(value):
        items = [value]
    else:
        raise _bad(expected, value)
    try:
        return [_list_item(v) for v in items]
    except ValueError:
        raise _bad(expected, value) from None


def _to_str(value):
    if isinstance(value, str):
        return value
    if _is_number(value):
        return str(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, numbers.Real)) for v in value):
        return ",".join(map(str, value))  # profile_steps: [10, 20] -> "10,20"
    raise _bad("text", value)


def to_count_or_fraction(value):
    """validation_split: a count of examples (an int) or a fraction in (0, 1) (a float)."""
    expected = "a count of images (e.g. 5000) or a fraction in (0, 1) (e.g. 0.1)"
    try:
        number = _to_float(value)
    except argparse.ArgumentTypeError:
        raise _bad(expected, value) from None
    if number < 0 or (number >= 1 and not float(number).is_integer()):
        raise _bad(expected, value)
    return int(number) if float(number).is_integer() else float(number)


def _optional(field):
    return isinstance(field.type, types.UnionType) and type(None) in field.type.__args__


def _base_type(field):
    if field.name == "validation_split":
        return "count_or_fraction"
    kinds = field.type.__args__ if isinstance(field.type, types.UnionType) else (field.type,)
    for kind in (bool, list, float, int, str):
        if kind in kinds:
            return kind
    return str


CONVERTERS = {
    bool: _to_bool,
    list: _to_number_list,
    float: _to_float,
    int: _to_int,
    str: _to_str,
    "count_or_fraction": to_count_or_fraction,
}
NONE_WORDS = ("none", "null", "auto", "")


def converter(field):
    """The function turning a flag's text or a file's value into `field`'s value (ArgumentTypeError if not)."""
    convert = CONVERTERS[_base_type(field)]
    optional, choices = _optional(field), CHOICES.get(field.name)

    def to_value(value):
        if optional and (value is None or (convert is not _to_str and str(value).strip().lower() in NONE_WORDS)):
            return None
        if value is None:
            raise argparse.ArgumentTypeError("expected a value, got null (this setting cannot be left unset)")
        result = convert(value)
        if choices and result not in choices:
            raise argparse.ArgumentTypeError(_choice_text(result, choices))
        return result

    to_value.__name__ = field.name  # argparse names a failed conversion after it
    return to_value


def _choice_text(value, choices):
    close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"expected one of {', '.join(choices)}, got {value!r}{hint}"


# -- the --config file -----------------------------------------------------------------------------------


def _parse_file(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(
                f"--config {path}: not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
            ) from None
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"--config {path}: reading YAML needs PyYAML (pip install pyyaml); or write JSON") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"--config {path}: not valid YAML: {problem}{where}") from None


def load_file(path):
    """The fields of a JSON or YAML file (keys with dashes or underscores), converted like their flags.

    Raises ConfigError "--config FILE: field X: <what was wrong, what is expected>" for every bad key."""
    if not os.path.isfile(path):
        raise ConfigError(f"--config {path}: no such file")
    raw = _parse_file(path)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"--config {path}: expected a mapping of settings (e.g. 'epochs: 90' or {{\"epochs\": 90}}), "
            f"got {type(raw).__name__}"
        )
    fields = {f.name: f for f in dataclasses.fields(Config)}
    values, problems = {}, []
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            guess = closest_field(key)
            hint = f"did you mean {guess}?" if guess else "see --help for the settings"
            problems.append(f"field {key}: unknown setting; {hint}")
            continue
        if name in values:
            problems.append(f"field {key}: given twice (as {name} and {_flag(name)[2:]}); keep one")
            continue
        try:
            values[name] = converter(fields[name])(value)
        except argparse.ArgumentTypeError as error:
            problems.append(f"field {key}: {error}")
    if problems:
        raise ConfigError(f"--config {path}: " + "; ".join(problems))
    return values


# -- the command line --------------------------------------------------------------------------------------


def _metavar(field):
    kind = _base_type(field)
    special = {
        "config": "FILE",
        "data": "SPEC",
        "profile_steps": "A,B",
        "num_examples": "SPLIT=N,...",
        "worker_hosts": "HOST:PORT,...",
        "tpu": "NAME|local",
        "data_service": "grpc://HOST:PORT",
        "cluster_port": "PORT",
        "task_index": "I",
    }
    if field.name in special:
        return special[field.name]
    if field.name.endswith("_dir"):
        return "DIR"
    return {int: "N", float: "X", list: "A,B,...", "count_or_fraction": "N|FRACTION"}.get(kind, field.name.upper())


def _shown(name, default):
    if default is None:
        return UNSET.get(name, "none")
    if isinstance(default, list):
        return ",".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in default)
    return default


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # "unrecognized arguments: --learning-rate 0.1" -> "...; did you mean --lr?"
        if message.startswith("unrecognized arguments:"):
            hints = {}
            for word in message.split(":", 1)[1].split():
                flag = word.split("=")[0]
                guess = closest_field(flag[2:]) if flag.startswith("--") else None
                if guess:
                    hints[flag] = _flag(guess)
            if len(hints) == 1:
                message += f"; did you mean {next(iter(hints.values()))}?"
            elif hints:
                message += "; did you mean " + ", ".join(f"{new} for {old}" for old, new in hints.items()) + "?"
        super().error(message)


def parser(recipe, prog, description, variants=None):
    """Every Config field as a flag, its default the recipe's (shown once in --help); `variants` (name ->
    recipe) adds --recipe NAME."""
    defaults = dataclasses.asdict(Config(**recipe))
    p = _Parser(
        prog=prog,
        description=description,
        usage="%(prog)s [--recipe NAME] [--config FILE] [--FLAG VALUE ...]  (--help lists every flag)",
        epilog="Precedence: the recipe's defaults < --config FILE < flags.",
    )
    if variants:
        chosen = next((name for name, values in variants.items() if values is recipe), None)
        what = f"the named recipe whose values are the defaults below (recipes.py) (here: {chosen})"
        p.add_argument("--recipe", choices=list(variants), default=argparse.SUPPRESS, help=what)
    p.add_argument("--config", help="JSON/YAML file of settings (keys as below, e.g. 'batch_size: 64')", metavar="FILE")
    for field in dataclasses.fields(Config):
        kwargs = dict(
            type=converter(field),
            default=argparse.SUPPRESS,
            metavar=_metavar(field),
            help=f"{HELP[field.name]} (default: {_shown(field.name, defaults[field.name])})",
        )
        if field.name in CHOICES:
            kwargs.update(choices=CHOICES[field.name], metavar="{" + ",".join(CHOICES[field.name]) + "}")
        if _base_type(field) is bool:
            kwargs.update(action=argparse.BooleanOptionalAction)
            del kwargs["type"], kwargs["metavar"]
        p.add_argument(_flag(field.name), **kwargs)
    return p


def resolve(recipe, argv=None, prog=None, description=None, on_parsed=None, variants=None):
    """Recipe < --config file < flags, then validate(); bad values exit with status 2 and a message.

    `--epochs` on the command line beats the recipe's --steps. `on_parsed(config)` runs before validate(),
    which imports keras: the command line sets up logging there, before TensorFlow starts. `variants` (name
    -> recipe): --recipe NAME replaces `recipe`, so --help shows that recipe's defaults."""
    if variants:
        first = argparse.ArgumentParser(add_help=False)  # an unknown name: the full parser's error, below
        first.add_argument("--recipe", default=None)
        recipe = variants.get(first.parse_known_args(argv)[0].recipe, recipe)
    p = parser(recipe, prog, description, variants)
    args = vars(p.parse_args(argv))
    args.pop("recipe", None)
    values = dict(recipe)
    config_file = args.pop("config", None)
    try:
        layers = [load_file(config_file)] if config_file else []
    except ConfigError as error:
        p.error(str(error))
    for layer in [*layers, args]:
        if "epochs" in layer and "steps" not in layer:
            values["steps"] = None
        # One way of placing the lr drops at a time: the most recently given one wins.
        given = [k for k in BOUNDARY_FIELDS if layer.get(k)]
        if given:
            values.update({k: None for k in BOUNDARY_FIELDS if k not in given})
        values.update(layer)
    config = Config(**values)
    if on_parsed is not None:
        on_parsed(config)
    try:
        validate(config)
    except ConfigError as error:
        where = (
            f" (set in --config {config_file})"
            if layers and error.field in layers[0] and error.field not in args
            else ""
        )
        p.error(f"{error}{where}")
    return config


# -- validation ----------------------------------------------------------------------------------------------

# field -> (smallest value, what it means when too small)
AT_LEAST = {
    "batch_size": 1,
    "lr_batch": 1,
    "steps": 1,
    "steps_per_loop": 1,
    "num_classes": 1,
    "image_size": MIN_IMAGE_SIZE,
    "warmup_lr_steps": 0,
    "checkpoint_steps": 0,
    "keep_checkpoints": 1,
    "log_steps": 1,
    "eval_every": 1,
    "gpus": 1,
    "cpu_replicas": 1,
    "cluster_port": 1,
    "task_index": 0,
    "seed": 0,
    "warmup_epochs": 0,
    "weight_decay": 0,
}
ABOVE_ZERO = ("epochs", "lr", "warmup_lr", "loss_scale", "data_service_timeout")
FRACTIONS = ("momentum", "label_smoothing")  # in [0, 1)
EXAMPLES = {
    "batch_size": "e.g. --batch-size 128",
    "epochs": "e.g. --epochs 90",
    "steps": "e.g. --steps 64000",
    "lr": "e.g. --lr 0.1",
    "image_size": "CIFAR uses 32, ImageNet 224",
    "gpus": "leave --gpus out to use the GPUs found; CUDA_VISIBLE_DEVICES= runs on the CPU",
    "label_smoothing": "e.g. 0.1; 0 turns it off",
    "random_erasing": "e.g. 0.5; 0 turns it off",
    "num_classes": "leave it out to take the count from the data",
}


def _problem(field, value, text):
    example = EXAMPLES.get(field)
    return ConfigError(f"{_flag(field)} {_show(value)}: {text}" + (f" ({example})" if example else ""), field)


def _show(value):
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def validate(config):
    """Raises ConfigError, naming the flag, for a setting that cannot work. Writes nothing; checks the model
    name, shortcut and variant against keras_resnet's registry (importing keras, so call it after logging
    is set up) last, after the cheap checks."""
    for field in dataclasses.fields(Config):
        value = getattr(config, field.name)
        try:
            converted = converter(field)(value)
        except argparse.ArgumentTypeError as error:
            raise ConfigError(f"{_flag(field.name)} {_show(value)}: {error}", field.name) from None
        if type(converted) is not type(value) or converted != value:
            raise ConfigError(f"{_flag(field.name)} {value!r}: expected {_base_type_text(field)}", field.name)
    for name, least in AT_LEAST.items():
        value = getattr(config, name)
        if value is not None and value < least:
            raise _problem(name, value, f"must be at least {least}")
    for name in ABOVE_ZERO:
        value = getattr(config, name)
        if value is not None and not value > 0:
            raise _problem(name, value, "must be greater than 0")
    for name in FRACTIONS:
        value = getattr(config, name)
        if not 0 <= value < 1:
            raise _problem(name, value, "must be in [0, 1)")
    if not 0 <= config.random_erasing <= 1:
        raise _problem("random_erasing", config.random_erasing, "a probability: must be in [0, 1]")
    placed = [_flag(name) for name in BOUNDARY_FIELDS if getattr(config, name)]
    if len(placed) > 1:
        raise ConfigError(f"{' and '.join(placed)} both place the lr drops: give one of them", "decay_at")
    if config.steps is None and config.epochs is None:
        raise ConfigError("say how long to train: --epochs N or --steps N", "epochs")
    _validate_boundaries(config)
    _validate_devices(config)
    _validate_data_service(config)
    _validate_cluster(config)
    _validate_data(config)
    _validate_augment(config)
    if config.profile_steps:
        _validate_profile_steps(config.profile_steps)
    if config.flip_test and config.ten_crop:
        raise ConfigError("--flip-test and --ten-crop: the 10 crops include the mirror images; give one", "flip_test")
    if config.task == "detection" and (config.flip_test or config.ten_crop):
        flag = "--flip-test" if config.flip_test else "--ten-crop"
        raise ConfigError(f"{flag}: test-time averaging is for classification; detection scores one view", "flip_test")
    _validate_model(config)


def _base_type_text(field):
    kind = _base_type(field)
    return {bool: "true or false", list: "a list of numbers", float: "a number", int: "a whole number"}.get(
        kind, "a count or a fraction in (0, 1)" if kind == "count_or_fraction" else "text"
    )


def _validate_boundaries(config):
    for name in BOUNDARY_FIELDS:
        values = getattr(config, name)
        if not values:
            continue
        if any(b <= a for a, b in zip(values, values[1:], strict=False)):
            raise _problem(name, values, "boundaries must increase")
        if name == "decay_at" and not all(0 < v < 1 for v in values):
            raise _problem(
                name, values, "fractions of the run must be in (0, 1), e.g. 0.5,0.75 (epochs: --decay-epochs)"
            )
        if name == "decay_steps" and not all(isinstance(v, int) and v >= 1 for v in values):
            raise _problem(name, values, "steps must be whole numbers >= 1, e.g. 32000,48000")
        if name == "decay_epochs" and not all(v > 0 for v in values):
            raise _problem(name, values, "epochs must be greater than 0, e.g. 30,60,80")


def _validate_devices(config):
    if config.gpus and config.cpu_replicas:
        raise ConfigError("--gpus and --cpu-replicas are exclusive: pick GPUs or logical CPU devices", "gpus")
    replicas = config.gpus or config.cpu_replicas
    if replicas and config.batch_size % replicas:
        flag = "--gpus" if config.gpus else "--cpu-replicas"
        raise ConfigError(
            f"--batch-size {config.batch_size} does not divide evenly over {flag} {replicas}: use a multiple of "
            f"{replicas}, e.g. --batch-size {max(replicas, config.batch_size // replicas * replicas)}",
            "batch_size",
        )


def worker_host_list(text):
    """ "h1:2222, h2:2222" -> ["h1:2222", "h2:2222"]; ConfigError naming --worker-hosts for a bad entry."""
    hosts = [h.strip() for h in str(text).split(",")]
    for host in hosts:
        name, colon, port = host.rpartition(":")
        if not colon or not name or name in ("[", "[]") or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(
                f"--worker-hosts {text}: {host!r} is not HOST:PORT with a port 1-65535 (e.g. "
                "--worker-hosts host1:2222,host2:2222)",
                "worker_hosts",
            )
    repeated = sorted({h for h in hosts if hosts.count(h) > 1})
    if repeated:
        raise ConfigError(
            f"--worker-hosts {text}: {', '.join(repeated)} given twice: one address per worker", "worker_hosts"
        )
    return hosts


def _validate_data_service(config):
    if config.data_service is None:
        return
    from trainers.data_service import DataServiceError, parse_address

    try:
        parse_address(config.data_service)
    except DataServiceError as error:
        raise ConfigError(str(error), "data_service") from None


def _validate_cluster(config):
    """--cluster, --worker-hosts and --tpu say where the run's devices are: one of them, consistently."""
    given = [f"{_flag(n)} {getattr(config, n)}" for n in ("cluster", "worker_hosts", "tpu") if getattr(config, n)]
    if len(given) > 1:
        raise ConfigError(f"{' and '.join(given)} both say where to train: give one of them", "worker_hosts")
    if config.tpu is not None and not config.tpu.strip():
        raise ConfigError("--tpu: name the TPU, or local for a TPU VM's own chips", "tpu")
    if config.tpu:
        for name in ("gpus", "cpu_replicas"):
            if getattr(config, name):
                raise ConfigError(
                    f"--tpu {config.tpu} and {_flag(name)} are exclusive: a TPU run uses its TPU cores", name
                )
    if config.cluster_port > 65535:
        raise _problem("cluster_port", config.cluster_port, "must be a port number, 1-65535")
    if config.task_index is not None and not config.worker_hosts:
        raise ConfigError(
            f"--task-index {config.task_index} needs --worker-hosts (the list it indexes), e.g. --worker-hosts "
            "h1:2222,h2:2222 --task-index 0",
            "task_index",
        )
    if not config.worker_hosts:
        return
    hosts = worker_host_list(config.worker_hosts)
    if config.task_index is None:
        raise ConfigError(
            f"--worker-hosts {config.worker_hosts} needs --task-index I, this worker's position in the list "
            f"(0 to {len(hosts) - 1}; 0 is the chief)",
            "task_index",
        )
    if config.task_index >= len(hosts):
        raise ConfigError(
            f"--task-index {config.task_index}: out of range for {len(hosts)} --worker-hosts (0 to {len(hosts) - 1})",
            "task_index",
        )
    if len(hosts) > 1 and config.cpu_replicas:
        raise ConfigError(
            f"--cpu-replicas {config.cpu_replicas} with --worker-hosts: each worker is one CPU replica under "
            "MultiWorkerMirroredStrategy; drop --cpu-replicas",
            "cpu_replicas",
        )
    replicas = len(hosts) * (config.gpus or 1)
    if config.batch_size % replicas:
        per = f" x --gpus {config.gpus}" if config.gpus else ""
        raise ConfigError(
            f"--batch-size {config.batch_size} does not divide evenly over {len(hosts)} --worker-hosts{per} = "
            f"{replicas} replicas: use a multiple of {replicas}, e.g. --batch-size "
            f"{max(replicas, config.batch_size // replicas * replicas)}",
            "batch_size",
        )


DETECTION_AUGMENT = ("flip_scale", "flip", "none")  # the boxes move with the pixels: no crops


def _validate_augment(config):
    detection = config.task == "detection"
    if detection and config.augment not in DETECTION_AUGMENT:
        raise ConfigError(
            f"--augment {config.augment}: a classification augmentation; detection takes flip_scale (flips and "
            "shorter side x0.8-1.2), flip or none",
            "augment",
        )
    if detection and config.random_erasing:
        raise ConfigError(
            f"--random-erasing {config.random_erasing}: classification only (noise over boxes would hide objects the "
            "labels still name); leave it out for detection",
            "random_erasing",
        )
    if not detection and config.augment in DETECTION_AUGMENT[:2]:
        raise ConfigError(
            f"--augment {config.augment}: detection's; classification takes cifar, pad_crop, scale, inception or none",
            "augment",
        )


def _validate_data(config):
    kind, colon, rest = config.data.partition(":")
    if config.task == "detection":
        if kind == "shapes" or (kind in ("voc", "coco", "tfds") and rest):
            return
        raise ConfigError(
            f"--data {config.data}: detection reads voc:DIR (the PASCAL VOC layout), coco:DIR (instances JSON), "
            "tfds:voc/2007, tfds:coco/2017 or shapes[:N] (generated)",
            "data",
        )
    forms = ", ".join(DATA_FORMS)
    if config.data in ("digits", "synthetic"):
        return
    if not colon or kind not in ("tfds", "tfrecord", "folder"):
        close = difflib.get_close_matches(kind, ["tfds", "tfrecord", "folder", "digits", "synthetic"], n=1)
        hint = f"; did you mean {close[0]}{DATA_SUFFIX.get(close[0], '')}?" if close else ""
        raise ConfigError(f"--data {config.data}: unknown data spec; valid forms: {forms}{hint}", "data")
    if kind == "tfds" and not rest:
        raise ConfigError(f"--data {config.data}: name the data set, e.g. tfds:cifar10", "data")
    if not rest and not config.data_dir:
        raise ConfigError(f"--data {config.data}: needs a directory, as {kind}:DIR or with --data-dir DIR", "data")


def _validate_profile_steps(text):
    try:
        steps = [int(v) for v in str(text).split(",")]
    except ValueError:
        steps = []
    if len(steps) not in (1, 2) or steps[0] < 1 or steps[-1] < steps[0]:
        raise ConfigError(
            f"--profile-steps {text}: expected A,B with 1 <= A <= B (e.g. 10,20), or one step A", "profile_steps"
        )


def _nearest_models(name, available):
    """Registered names close to a typo: the nearest depths of the same family, else the closest spellings."""
    match = re.fullmatch(r"([a-z]+?)[-_]?(\d+)", str(name).lower())
    if match:
        family = [(n, int(n[len(match[1]) :])) for n in available if re.fullmatch(match[1] + r"\d+", n)]
        if family:
            depth = int(match[2])
            return [n for n, d in sorted(family, key=lambda nd: (abs(nd[1] - depth), nd[1]))[:2]]
    return difflib.get_close_matches(str(name).lower(), available, n=3, cutoff=0.5)


def _validate_model(config):
    from keras_resnet.models import available, get_spec  # imports keras: only once the cheap checks passed

    try:
        get_spec(config.model)
    except ValueError as error:
        near = _nearest_models(config.model, available())
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        raise ConfigError(f"--model {config.model}: {hint}{error}", "model") from None
    if config.shortcut is not None:
        try:
            get_spec(config.model, shortcut=config.shortcut)
        except ValueError as error:
            raise ConfigError(f"--shortcut {config.shortcut}: {error}", "shortcut") from None
    try:
        spec = get_spec(config.model, shortcut=config.shortcut, variant=config.variant)
    except ValueError as error:
        raise ConfigError(f"--variant {config.variant}: {error}", "variant") from None
    if config.task == "detection" and len(spec.stackwise_num_blocks) < 4:
        raise ConfigError(
            f"--model {config.model}: a CIFAR net has no conv5_x stage for Faster R-CNN; detection needs an "
            "ImageNet-style one (resnet18/34/50/101/152, plain18/34/...)",
            "model",
        )


BOUNDARY_FIELDS = ("decay_steps", "decay_epochs", "decay_at")
# Settings that change what a run computes: a checkpoint only resumes under the same values.
# The rest (where files go, how often to log, how many devices) may change between reruns.
RUNTIME_FIELDS = frozenset(
    {
        "data_dir",
        "download",
        "gpus",
        "cpu_replicas",
        "cluster",
        "cluster_port",
        "worker_hosts",
        "task_index",
        "tpu",
        "data_service",
        "data_service_timeout",
        "xla",
        "model_dir",
        "checkpoint_steps",
        "keep_checkpoints",
        "log_steps",
        "profile_steps",
        "ten_crop",
        "flip_test",
        "eval_every",
        "export",
        "export_dir",
        "export_name",
        "progress",
        "tf_logs",
        "steps_per_loop",
        "num_examples",
    }
)


# The settings that choose the devices and the cluster: make_strategy's arguments.
STRATEGY_FIELDS = ("gpus", "cpu_replicas", "cluster", "worker_hosts", "task_index", "tpu", "cluster_port")


def strategy_settings(config):
    """make_strategy's keyword arguments from `config`."""
    return {name: getattr(config, name) for name in STRATEGY_FIELDS}


def training_fields(config):
    """The settings a checkpoint was trained under, as a dict."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in RUNTIME_FIELDS}


# Settings added after runs existed: left out of the default run directory's hash while at these values, so a
# new setting never moves an older command's runs/... directory (rerunning it still resumes).
ADDED_SETTINGS = {"init_from": None, "random_erasing": 0.0}


def identity_fields(config):
    """`training_fields` less the later-added settings at their old behaviour: what names a default run dir."""
    return {k: v for k, v in training_fields(config).items() if not (k in ADDED_SETTINGS and v == ADDED_SETTINGS[k])}


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
