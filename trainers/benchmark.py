"""`python -m trainers.benchmark`: training, input and serving speed of trainers against plain Keras, interleaved.

Every measurement is a fresh process (`--one SPEC`) that warms up (tracing, autotuning) and then times;
configurations run interleaved, A, B, C, then C, B, A, ... for --rounds rounds, so a noisy machine slows
all of them alike. Each configuration gets its median images/s; each comparison the median of its
per-round ratios and their spread (min-max).

    python -m trainers.benchmark                                  # every suite, the sizes below
    python -m trainers.benchmark --suites cifar,loop --rounds 3   # some of them
    python -m trainers.benchmark --write-markdown BENCHMARKS.md   # the table and the machine, into a file

Suites:
  resnet50  ResNet-50, 224 px, batch 32, synthetic data: keras.applications.ResNet50 + compile + fit run the
            way a user would (TensorFlow's default environment, fp32), the same given our kernels and
            precision (oneDNN as trainers sets it, the precision `auto` picks), and trainers.loop.train at
            fp32, bf16 and its defaults (precision auto, default steps per loop).
  cifar     ResNet-20 and ResNet-56, 32 px, batch 128: trainers' defaults against a plain Keras fit of
            keras_resnet.ResNet20/ResNet56 (same environment).
  input     ResNet-20 training from a JPEG folder and from TFRecord shards (generated, CIFAR-like 32 px) as
            a ratio to synthetic data; the input pipelines alone (decode + augment).
  mfu       the matmul peak at fp32 and bf16 (a big tf.matmul loop), for model FLOPs utilisation:
            2 x multiply-adds (keras_resnet.flops) x 3 (forward + backward) x images/s over that peak.
  memory    peak resident memory (the child's ru_maxrss) per configuration (measured for all anyway).
  replicas  ResNet-20 with --cpu-replicas 1 against 2.
  loop      ResNet-20 with --steps-per-loop 1 against --loop-steps: the host's per-step overhead.
  serving   images/s of an exported SavedModel (float32 and JPEG-bytes signatures).
"""

import argparse
import dataclasses
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

SUITES = ("resnet50", "cifar", "input", "mfu", "memory", "replicas", "loop", "serving")
# Run --secondary-rounds times: what no target depends on (the input suite's training runs and the matmul
# peaks do: they keep --rounds).
SECONDARY = ("input pipelines alone", "replicas", "loop", "serving")
POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
# Per suite: (image size, batch, warm-up steps, timed steps) unless --image-size/--batch-size/--warmup/--steps.
SIZES = {
    "resnet50": (224, 32, 2, 3),
    "cifar": (32, 128, 10, 20),
    "input": (32, 128, 10, 20),
    "replicas": (32, 128, 10, 20),
    "loop": (32, 128, 10, 20),
    "pipeline": (32, 128, 5, 40),
    "serving": (224, 32, 2, 5),
}
TARGETS = {
    "resnet50_default": 1.5,
    "resnet50_same": 1.0,
    "mfu": 0.5,
    "folder": 0.95,
    "tfrecord": 0.95,
    "cifar": 1.0,
}
CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
# A child in TensorFlow's own environment: tensorflow first, so importing trainers changes nothing.
DEFAULT_ENV_PRELUDE = (
    "import tensorflow, runpy; runpy.run_module('trainers.benchmark', run_name='__main__', alter_sys=True)"
)


# == one measurement, in its own process =============================================================================
def _max_rss_mib():
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


def _load_average():
    """The 1-minute load average (other people's work on a shared machine), None where unknown."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _timed_loops(spec, steps_per_loop):
    """Device loops of `steps_per_loop` steps that cover spec's timed steps."""
    return max(1, math.ceil(spec["steps"] / steps_per_loop))


def _default_steps_per_loop(spec):
    import tensorflow as tf

    from trainers import loop

    device = "GPU" if tf.config.list_physical_devices("GPU") and not spec.get("cpu_replicas") else "CPU"
    return loop.DEFAULT_STEPS_PER_LOOP[device]


def measure_train(spec):
    """trainers.loop.train on spec's data; images/s over the device loops after the warm-up.

    The warm-up (tracing, the kernels' first runs, tf.data autotuning) is spec's warm-up steps: the device
    loop that would cross its end is cut there; every timed loop after it is as long as the configuration
    makes it (--steps-per-loop or the device's default), so ResNet-50 need not train 10 untimed steps on a
    CPU to warm up.
    """
    from trainers import loop
    from trainers.data import synthetic

    batch = spec["batch_size"]
    steps_per_loop = spec.get("steps_per_loop") or _default_steps_per_loop(spec)
    warm, timed = max(1, spec["warmup"]), _timed_loops(spec, steps_per_loop)
    total = warm + timed * steps_per_loop
    # One epoch holds the whole run (no evaluation between loops, every loop full length); evaluation at the
    # end reads one batch. Module constants of a throwaway process: the loop sees an ordinary data set.
    saved = synthetic.TRAIN_EXAMPLES, synthetic.VALIDATION_EXAMPLES, loop.Loop
    synthetic.TRAIN_EXAMPLES = max(synthetic.TRAIN_EXAMPLES, total * batch)
    synthetic.VALIDATION_EXAMPLES = batch
    loop.Loop = _warm_up_first(loop.Loop, warm)
    try:
        result = _train(spec, total)
    finally:
        synthetic.TRAIN_EXAMPLES, synthetic.VALIDATION_EXAMPLES, loop.Loop = saved
    timings = result["timings"]
    timed_loops = [t for t in timings if t[0] > warm]
    if warm not in [t[0] for t in timings] or len(timed_loops) != timed:
        found = [t[0] for t in timings]
        raise RuntimeError(f"expected warm-up loops to step {warm}, then {timed} loops of {steps_per_loop}: {found}")
    return {
        "images": sum(t[1] for t in timed_loops),
        "seconds": sum(t[2] for t in timed_loops),
        "steps_per_loop": steps_per_loop,
        "precision": loop.resolve_precision(spec["precision"]),
        "macs_per_image": _macs(spec),
        "saved_model": result.get("saved_model"),
    }


def _warm_up_first(base, steps):
    """`base` (trainers.loop.Loop) whose device loops stop at step `steps` (the end of the warm-up) once."""

    class WarmUpFirst(base):
        def _loop_length(self, step, done, remaining):
            n = super()._loop_length(step, done, remaining)
            return min(n, steps - step) if step < steps else n

    return WarmUpFirst


def _train(spec, total):
    """trainers.loop.train for `total` steps in a scratch run dir (or spec's model_dir, to keep a profile)."""
    from trainers import loop
    from trainers.config import Config

    batch = spec["batch_size"]
    with tempfile.TemporaryDirectory(prefix="benchmark-") as scratch:
        config = Config(
            model=spec["model"],
            data=spec.get("data", "synthetic"),
            image_size=spec["image_size"],
            batch_size=batch,
            augment=spec.get("augment", "none"),
            mean="none",
            num_classes=spec["classes"],
            steps=total,
            lr=0.1,
            lr_batch=batch,
            schedule="cosine",
            precision=spec["precision"],
            steps_per_loop=spec.get("steps_per_loop"),
            cpu_replicas=spec.get("cpu_replicas"),
            model_dir=spec.get("model_dir") or os.path.join(scratch, "run"),
            profile_steps=spec.get("profile_steps"),
            keep_checkpoints=1,
            export=bool(spec.get("export")),
            export_dir=spec.get("export_dir") or os.path.join(scratch, "export"),
            export_name="benchmark",
            progress=False,
        )
        return loop.train(config, recipe_name="benchmark")


def _macs(spec):
    """Multiply-adds of one forward pass (keras_resnet.flops) of the network spec trains."""
    import keras

    import keras_resnet

    shape = (spec["image_size"], spec["image_size"], 3)
    if spec.get("app") == "keras.applications":
        model = keras.applications.ResNet50(weights=None, input_shape=shape, classes=spec["classes"])
    else:
        model = keras_resnet.build(spec["model"], input_shape=shape, classes=spec["classes"])
    return keras_resnet.flops(model)


def measure_keras_fit(spec):
    """model.compile(SGD) + model.fit, as a user would: keras.applications.ResNet50 or a keras_resnet net."""
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_resnet

    keras.mixed_precision.set_global_policy(POLICIES[spec["precision"]])
    keras.utils.set_random_seed(0)
    size, batch, classes = spec["image_size"], spec["batch_size"], spec["classes"]
    shape = (size, size, 3)
    if spec.get("app") == "keras.applications":
        model = keras.applications.ResNet50(weights=None, input_shape=shape, classes=classes)
    else:
        model = keras_resnet.build(spec["model"], input_shape=shape, classes=classes)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, *shape)).astype("float32")
    labels = rng.integers(0, classes, batch).astype("int32")
    data = tf.data.Dataset.from_tensors((images, labels)).repeat()  # no input cost at all: the baseline's best

    class Clock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            np.asarray((logs or {}).get("loss", 0.0))  # the step's results exist: it is done
            self.ends.append(time.perf_counter())

    clock = Clock()
    warm, steps = max(1, spec["warmup"]), spec["steps"]
    model.fit(data, steps_per_epoch=warm + steps, epochs=1, verbose=0, callbacks=[clock])
    return {
        "images": batch * steps,
        "seconds": clock.ends[-1] - clock.ends[warm - 1],
        "precision": spec["precision"],
        "macs_per_image": keras_resnet.flops(model),
    }


def measure_pipeline(spec):
    """The input pipeline alone: decode + augment batches of source.dataset(...), images/s."""
    from trainers import data

    source = data.open_source(spec["data"])
    batch, size = spec["batch_size"], spec["image_size"]
    warm, steps = spec["warmup"], spec["steps"]
    seen, images, start, epoch = 0, 0, None, 0
    while seen < warm + steps:
        ds = source.dataset(
            "train", global_batch_size=batch, image_size=size, augment="cifar", training=True, epoch=epoch
        )
        for x, _ in ds:
            seen += 1
            if seen == warm:
                start = time.perf_counter()
            elif seen > warm:
                images += int(x.shape[0])
            if seen >= warm + steps:
                break
        epoch += 1
    if start is None:
        start = time.perf_counter()
    return {"images": images, "seconds": time.perf_counter() - start, "precision": "n/a"}


def measure_matmul(spec):
    """FLOP/s of a chain of n x n matmuls at spec's precision: the compute peak MFU is measured against."""
    import tensorflow as tf

    dtype = {"fp32": tf.float32, "bf16": tf.bfloat16, "fp16": tf.float16}[spec["precision"]]
    n = spec["matmul_size"]
    a = tf.cast(tf.random.stateless_normal([n, n], [1, 2]), dtype)
    b = tf.cast(tf.random.stateless_normal([n, n], [3, 4]) / math.sqrt(n), dtype)  # keeps the chain's scale

    @tf.function
    def chain(x, count):
        for _ in tf.range(count):
            x = tf.matmul(x, b)
        return x

    chain(a, tf.constant(2)).numpy()  # trace, warm the kernels
    count, seconds = 2, 0.0
    while True:
        start = time.perf_counter()
        chain(a, tf.constant(count)).numpy()
        seconds = time.perf_counter() - start
        if seconds >= spec["matmul_seconds"] or count >= 1 << 20:
            break
        count *= 2
    return {"flops_per_second": 2 * n**3 * count / seconds, "seconds": seconds, "precision": spec["precision"]}


def measure_serving(spec):
    """A SavedModel signature called on batches: float32 pixels or JPEG bytes, images/s."""
    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(spec["saved_model"])
    batch, size = spec["batch_size"], spec["image_size"]
    pixels = _smooth_images(batch, size, seed=1)
    if spec["signature"] == "serve_image_bytes":
        inputs = {"image_bytes": tf.constant([tf.io.encode_jpeg(p, quality=90).numpy() for p in pixels])}
    else:
        inputs = {"images": tf.constant(pixels.astype(np.float32))}
    function = loaded.signatures[spec["signature"]]
    for _ in range(max(1, spec["warmup"])):
        _first_value(function(**inputs))
    start = time.perf_counter()
    for _ in range(spec["steps"]):
        _first_value(function(**inputs))
    return {"images": batch * spec["steps"], "seconds": time.perf_counter() - start, "precision": "fp32"}


def _first_value(outputs):
    return next(iter(outputs.values())).numpy()


def _smooth_images(count, size, seed):
    """CIFAR-like uint8 images: smooth colour fields with a little noise (JPEG sizes like real photos')."""
    import numpy as np

    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (count, 4, 4, 3))
    side = np.linspace(0, 3, size)
    i0 = np.minimum(side.astype(int), 2)
    frac = (side - i0)[:, None]
    rows = coarse[:, i0] * (1 - frac[None, :, :, None]) + coarse[:, i0 + 1] * frac[None, :, :, None]
    fine = rows[:, :, i0] * (1 - frac[None, None, :, :]) + rows[:, :, i0 + 1] * frac[None, None, :, :]
    return np.clip(fine + rng.normal(0, 8, fine.shape), 0, 255).astype(np.uint8)


MEASURES = {
    "train": measure_train,
    "keras_fit": measure_keras_fit,
    "pipeline": measure_pipeline,
    "matmul": measure_matmul,
    "serving": measure_serving,
}


def run_one(spec):
    """Runs the measurement `spec` describes in this process; the result dict the parent reads."""
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    from trainers import hardware

    start = time.perf_counter()
    result = MEASURES[spec["kind"]](spec)
    if "images" in result:
        result["images_per_second"] = result["images"] / max(result["seconds"], 1e-9)
    found = hardware.accelerators()  # TensorFlow is imported by now: the parent's machine block gets the GPUs
    result.update(
        load_average=_load_average(),
        accelerators=found and {"gpus": found["gpus"], "tpus": found["tpus"]},
        max_rss_mib=_max_rss_mib(),
        onednn=hardware.onednn().state,
        onednn_line=hardware.onednn().line,
        wall_seconds=time.perf_counter() - start,
    )
    return result


# == the plan: configurations and comparisons ========================================================================
@dataclasses.dataclass
class Measurement:
    """One configuration: its spec for the child, the environment it runs in, how many rounds."""

    name: str
    suite: str
    spec: dict
    env: str = "trainers"  # "trainers" (as trainers sets it) or "default" (TensorFlow's own, as a user runs)
    rounds: int = 5
    label: str = ""
    runs: list = dataclasses.field(default_factory=list)  # {"round", "result"} or {"round", "error"}
    failed: bool = False


@dataclasses.dataclass
class Comparison:
    """numerator / denominator per round; `target` the ratio to reach (None: informative)."""

    name: str
    suite: str
    numerator: str
    denominator: str
    target: float | None = None
    metric: str = "images_per_second"


def _sizes(args, suite):
    size, batch, warmup, steps = SIZES[suite]
    return (
        args.image_size or size,
        args.batch_size or batch,
        warmup if args.warmup is None else args.warmup,
        steps if args.steps is None else args.steps,
    )


def _common(args, suite, **spec):
    size, batch, warmup, steps = _sizes(args, suite)
    return {"image_size": size, "batch_size": batch, "warmup": warmup, "steps": steps, "classes": 10, **spec}


def _title(model):
    return model.replace("resnet", "ResNet-").replace("plain", "Plain-")


WORK = "{work}"  # in specs: the scratch folder for data and models, filled in when a child runs


def plan(args, auto_precision, work=WORK):
    """(measurements, comparisons) of the selected suites; paths in the scratch folder are written `work`."""
    suites = args.suites
    main_rounds, secondary = args.rounds, args.secondary_rounds or args.rounds
    ms, cs = [], []

    def add(name, suite, spec, env="trainers", label="", rounds=None):
        spec = {"name": name, **spec}
        if args.profile_dir and spec["kind"] == "train":
            spec.update(model_dir=os.path.join(args.profile_dir, name), profile_steps=args.profile_steps)
        ms.append(Measurement(name, suite, spec, env, rounds or main_rounds, label or name))

    if "resnet50" in suites:
        r50 = _common(args, "resnet50", model="resnet50", classes=1000)
        keras_app = {**r50, "kind": "keras_fit", "app": "keras.applications"}
        add("r50_keras_default", "resnet50", {**keras_app, "precision": "fp32"}, env="default",
            label="ResNet-50 keras.applications fit, TF default environment, fp32")  # fmt: skip
        add("r50_keras_same", "resnet50", {**keras_app, "precision": auto_precision},
            label=f"ResNet-50 keras.applications fit, trainers' kernels, {auto_precision}")  # fmt: skip
        add("r50_ours_defaults", "resnet50", {**r50, "kind": "train", "precision": "auto"},
            label=f"ResNet-50 trainers defaults (precision auto = {auto_precision}, default steps/loop)")  # fmt: skip
        for precision in ("fp32", "bf16"):
            if precision == auto_precision:
                continue  # the defaults run exactly this
            spec, label, rounds = (
                {**r50, "kind": "train", "precision": precision},
                f"ResNet-50 trainers {precision}",
                None,
            )
            if precision == "bf16" and auto_precision != "bf16":
                # Emulated on this machine (4-14x slower, ~8 min a measurement on 2 cores): it shows the
                # choice `auto` avoids, no target depends on it, so one short round.
                spec.update(steps_per_loop=1, warmup=1, steps=min(spec["steps"], 2))
                label, rounds = f"{label} (emulated here: 1 + {spec['steps']} steps, 1 round)", 1
            add(f"r50_ours_{precision}", "resnet50", spec, label=label, rounds=rounds)
        cs += [
            Comparison("ResNet-50: trainers defaults / keras.applications fit (TF default environment, fp32)",
                       "resnet50", "r50_ours_defaults", "r50_keras_default", TARGETS["resnet50_default"]),
            Comparison(f"ResNet-50: trainers defaults / keras.applications fit (same kernels, {auto_precision})",
                       "resnet50", "r50_ours_defaults", "r50_keras_same", TARGETS["resnet50_same"]),
            Comparison("ResNet-50: keras.applications fit, trainers' kernels and precision / TF default",
                       "resnet50", "r50_keras_same", "r50_keras_default"),
        ]  # fmt: skip
        for precision in ("fp32", "bf16"):
            if precision != auto_precision:
                cs.append(Comparison(f"ResNet-50: trainers {precision} / trainers defaults ({auto_precision})",
                                     "resnet50", f"r50_ours_{precision}", "r50_ours_defaults"))  # fmt: skip
    if "cifar" in suites:
        for model in args.cifar_models:
            spec = _common(args, "cifar", model=model)
            add(f"{model}_ours", "cifar", {**spec, "kind": "train", "precision": "auto"},
                label=f"{_title(model)} trainers defaults")  # fmt: skip
            add(f"{model}_keras", "cifar", {**spec, "kind": "keras_fit", "precision": auto_precision},
                label=f"{_title(model)} plain Keras fit ({auto_precision})")  # fmt: skip
            cs.append(Comparison(f"{_title(model)}: trainers defaults / plain Keras fit", "cifar",
                                 f"{model}_ours", f"{model}_keras", TARGETS["cifar"]))  # fmt: skip
    if "input" in suites:
        spec = _common(args, "input", model="resnet20", kind="train", precision="auto", augment="cifar")
        pipe = _common(args, "pipeline", kind="pipeline")
        for kind, data in (("synthetic", "synthetic"), ("folder", f"folder:{work}/folder"),
                           ("tfrecord", f"tfrecord:{work}/tfrecord")):  # fmt: skip
            add(f"input_{kind}", "input", {**spec, "data": data},
                label=f"ResNet-20 trainers from {kind} data (cifar augmentation)")  # fmt: skip
            add(f"pipeline_{kind}", "input", {**pipe, "data": data}, rounds=secondary,
                label=f"input pipeline alone, {kind} (decode + cifar augmentation)")  # fmt: skip
            if kind != "synthetic":
                cs.append(Comparison(f"ResNet-20 training from {kind} / synthetic data", "input",
                                     f"input_{kind}", "input_synthetic", TARGETS[kind]))  # fmt: skip
            cs.append(Comparison(f"input pipeline alone ({kind}) / ResNet-20 training on it", "input",
                                 f"pipeline_{kind}", f"input_{kind}"))  # fmt: skip
    if "mfu" in suites:
        for precision in ("fp32", "bf16"):
            add(f"matmul_{precision}", "mfu",
                {"kind": "matmul", "precision": precision, "matmul_size": args.matmul_size,
                 "matmul_seconds": args.matmul_seconds},
                label=f"matmul peak, {precision} ({args.matmul_size}x{args.matmul_size})")  # fmt: skip
    if "replicas" in suites:
        spec = _common(args, "replicas", model="resnet20", kind="train", precision="auto")
        for n in (1, 2):
            add(f"replicas_{n}", "replicas", {**spec, "cpu_replicas": n}, rounds=secondary,
                label=f"ResNet-20 trainers --cpu-replicas {n}")  # fmt: skip
        cs.append(Comparison("ResNet-20: --cpu-replicas 2 / 1", "replicas", "replicas_2", "replicas_1"))
    if "loop" in suites:
        spec = _common(args, "loop", model="resnet20", kind="train", precision="auto")
        for n in (1, args.loop_steps):
            add(f"loop_{n}", "loop", {**spec, "steps_per_loop": n}, rounds=secondary,
                label=f"ResNet-20 trainers --steps-per-loop {n}")  # fmt: skip
        cs.append(Comparison(f"ResNet-20: --steps-per-loop {args.loop_steps} / 1", "loop",
                             f"loop_{args.loop_steps}", "loop_1"))  # fmt: skip
    if "serving" in suites:
        size, batch, warmup, steps = _sizes(args, "serving")
        if args.serving_model != "resnet50" and not args.image_size:
            size = 32
        for signature in ("serving_default", "serve_image_bytes"):
            add(f"serving_{signature}", "serving",
                {"kind": "serving", "signature": signature, "image_size": size, "batch_size": batch,
                 "warmup": warmup, "steps": steps, "saved_model": os.path.join(work, "saved_model")},
                rounds=secondary,
                label=f"{_title(args.serving_model)} SavedModel {signature}, batch {batch} "
                      f"({'JPEG bytes' if 'bytes' in signature else 'float32 pixels'})")  # fmt: skip
        cs.append(Comparison("serving: JPEG bytes / float32 signature", "serving",
                             "serving_serve_image_bytes", "serving_serving_default"))  # fmt: skip
    return ms, cs


# == preparation: the data and the SavedModel the suites read ========================================================
def prepare(args, ms, work):
    names = {m.name for m in ms}
    if names & {"input_folder", "input_tfrecord", "pipeline_folder", "pipeline_tfrecord"}:
        size, batch, warmup, steps = _sizes(args, "input")
        spl = _loop_steps_for_input(args)
        run_steps = max(1, warmup) + _timed_loops({"steps": steps}, spl) * spl
        _, pipe_batch, pipe_warm, pipe_steps = _sizes(args, "pipeline")
        # One epoch holds a whole training run, so every device loop is full length, as with synthetic data.
        count = max(run_steps * batch, min((pipe_warm + pipe_steps) * pipe_batch, 4096), 2 * batch)
        print(f"Writing {count} + {batch} CIFAR-like {size}-px JPEGs (folder and TFRecords) to {work}", flush=True)
        write_image_data(work, count, batch, size)
    if any(m.spec["kind"] == "serving" for m in ms):
        print(f"Training {args.serving_model} for one step and exporting it to {work}/saved_model", flush=True)
        size = args.image_size or (224 if args.serving_model == "resnet50" else 32)
        spec = {
            "kind": "train",
            "model": args.serving_model,
            "image_size": size,
            "batch_size": args.batch_size or 8,
            "classes": 1000 if args.serving_model == "resnet50" else 10,
            "precision": "fp32",
            "steps_per_loop": 1,
            "warmup": 0,
            "steps": 1,
            "export": True,
            "export_dir": os.path.join(work, "export"),
        }
        result = run_child(spec, "trainers", args.timeout)
        if "error" in result:
            raise RuntimeError(f"exporting the serving model failed:\n{result['error']}")
        os.rename(result["result"]["saved_model"], os.path.join(work, "saved_model"))


def _loop_steps_for_input(args):
    """The steps per loop the input suite's runs use (the CPU default unless a GPU is there)."""
    try:
        import tensorflow as tf

        from trainers import loop

        return loop.DEFAULT_STEPS_PER_LOOP["GPU" if tf.config.list_physical_devices("GPU") else "CPU"]
    except ImportError:
        return 10


def write_image_data(root, train, validation, size, classes=10, shards=8):
    """root/folder/{train,validation}/<class>/*.jpg and root/tfrecord/{train,validation}-*-of-* shards of the
    same JPEGs (TF Model Garden schema, labels 1..classes)."""
    import io

    import tensorflow as tf
    from PIL import Image

    for split, count in (("train", train), ("validation", validation)):
        pixels = _smooth_images(count, size, seed=len(split))
        encoded = []
        for i, image in enumerate(pixels):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=90)
            label = i % classes
            name = f"{split}_{i:05d}.jpg"
            encoded.append((buffer.getvalue(), label, name))
            folder = os.path.join(root, "folder", split, f"class_{label:02d}")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, name), "wb") as f:
                f.write(buffer.getvalue())
        n = shards if split == "train" else 1
        os.makedirs(os.path.join(root, "tfrecord"), exist_ok=True)
        for shard in range(n):
            path = os.path.join(root, "tfrecord", f"{split}-{shard:05d}-of-{n:05d}")
            with tf.io.TFRecordWriter(path) as writer:
                for data, label, name in encoded[shard::n]:
                    writer.write(_example(tf, data, label + 1, name, size))


def _example(tf, data, label, name, size):
    def feature(kind, value):
        return tf.train.Feature(**{kind: getattr(tf.train, kind.title().replace("_", ""))(value=[value])})

    features = {
        "image/encoded": feature("bytes_list", data),
        "image/class/label": feature("int64_list", label),
        "image/filename": feature("bytes_list", name.encode()),
        "image/height": feature("int64_list", size),
        "image/width": feature("int64_list", size),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


# == running =========================================================================================================
def child_command(spec, env):
    spec_json = json.dumps(spec)
    if env == "default":
        return [sys.executable, "-c", DEFAULT_ENV_PRELUDE, "--one", spec_json]
    return [sys.executable, "-m", "trainers.benchmark", "--one", spec_json]


def child_environment(env):
    from trainers import hardware

    base = hardware.user_environment() if env == "default" else dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = base.get("PYTHONPATH")
    base["PYTHONPATH"] = package_root + (os.pathsep + path if path else "")
    for key, value in CHILD_ENV.items():
        base.setdefault(key, value)
    return base


def run_child(spec, env, timeout):
    """{"result": ...} or {"error": text} of one measurement in a fresh process."""
    try:
        out = subprocess.run(
            child_command(spec, env),
            env=child_environment(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as expired:
        return {"error": f"timed out after {timeout} s\n{(expired.stderr or '')[-3000:]}"}
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        return {"error": f"exit code {out.returncode}\n{out.stderr[-3000:]}"}
    return {"result": json.loads(lines[-1])}


def resume(ms, path, log=print):
    """Takes the successful measurements of configurations with the same spec from an earlier (partial) JSON."""
    with open(path, encoding="utf-8") as f:
        earlier = json.load(f)["configs"]
    for m in ms:
        old = earlier.get(m.name)
        if old and old.get("spec") == json.loads(json.dumps(m.spec)) and old.get("environment") == m.env:
            m.runs = [run for run in old["runs"] if "result" in run and run["round"] < m.rounds]
            if m.runs:
                log(f"{m.name}: {len(m.runs)} rounds from {path}")


def _in(spec, work):
    """spec with the scratch folder's placeholder filled in."""
    return {k: v.replace(WORK, work) if isinstance(v, str) else v for k, v in spec.items()}


def run_rounds(ms, args, log=print, after=None, work=WORK):
    """Interleaved: round r runs every configuration still due, in forward order on even rounds and in
    reverse on odd ones; a configuration that fails is not retried, one measured already (--resume) is kept."""
    rounds = max(m.rounds for m in ms)
    for r in range(rounds):
        order = [m for m in ms if r < m.rounds and not m.failed and r not in {run["round"] for run in m.runs}]
        if r % 2:
            order.reverse()
        for m in order:
            started = time.perf_counter()
            outcome = run_child(_in(m.spec, work), m.env, args.timeout)
            took = time.perf_counter() - started
            if "error" in outcome:
                m.failed = True
                m.runs.append({"round": r, "error": outcome["error"]})
                log(f"round {r + 1}/{rounds} {m.name}: FAILED ({took:.0f} s)\n{outcome['error']}")
                continue
            result = outcome["result"]
            m.runs.append({"round": r, "result": result})
            value = result.get("images_per_second")
            shown = f"{value:.2f} img/s" if value is not None else f"{result['flops_per_second'] / 1e9:.1f} GFLOP/s"
            log(f"round {r + 1}/{rounds} {m.name}: {shown}, {result['max_rss_mib']:.0f} MiB ({took:.0f} s)")
            if after:
                after()


# == results =========================================================================================================
def _spread(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _values(m, key):
    return {run["round"]: run["result"][key] for run in m.runs if "result" in run and key in run["result"]}


def summarize(ms, cs):
    """The JSON-ready results: per configuration, per comparison, and model FLOPs utilisation."""
    by_name = {m.name: m for m in ms}
    peaks = {}
    for precision in ("fp32", "bf16", "fp16"):
        m = by_name.get(f"matmul_{precision}")
        if m and _values(m, "flops_per_second"):
            peaks[precision] = _values(m, "flops_per_second")
    configs = {}
    for m in ms:
        ok = [run["result"] for run in m.runs if "result" in run]
        entry = {
            "label": m.label,
            "suite": m.suite,
            "environment": m.env,
            "spec": m.spec,
            "runs": m.runs,
            "rounds": len(ok),
            "failed": m.failed,
        }
        if ok:
            first = ok[0]
            entry.update(
                precision=first.get("precision"),
                onednn=first.get("onednn"),
                steps_per_loop=first.get("steps_per_loop"),
                max_rss_mib=_spread([r["max_rss_mib"] for r in ok]),
            )
            for key in ("images_per_second", "flops_per_second"):
                if key in first:
                    entry[key] = _spread([r[key] for r in ok])
            mfu = _mfu(m, peaks)
            if mfu:
                entry["mfu"] = _spread(list(mfu.values()))
                entry["mfu_per_round"] = mfu
        configs[m.name] = entry
    comparisons = []
    for c in cs:
        num, den = by_name[c.numerator], by_name[c.denominator]
        a, b = _values(num, c.metric), _values(den, c.metric)
        ratios = {r: a[r] / b[r] for r in sorted(a) if r in b and b[r]}
        entry = {
            "name": c.name,
            "suite": c.suite,
            "numerator": c.numerator,
            "denominator": c.denominator,
            "target": c.target,
            "ratios": list(ratios.values()),
        }
        if ratios:
            entry.update(_spread(list(ratios.values())))
            if c.target is not None:
                entry["met"] = entry["median"] >= c.target
        comparisons.append(entry)
    mfu_targets = []
    for name in ("r50_ours_defaults",) + tuple(n for n in configs if n.endswith("_ours") and n != "r50_ours"):
        entry = configs.get(name)
        if entry and "mfu" in entry:
            target = TARGETS["mfu"] if name == "r50_ours_defaults" else None
            mfu_targets.append(
                {
                    "name": f"{entry['label']}: model FLOPs utilisation at {entry['precision']}",
                    "config": name,
                    "target": target,
                    **entry["mfu"],
                    **({"met": entry["mfu"]["median"] >= target} if target is not None else {}),
                }
            )
    return {"configs": configs, "comparisons": comparisons, "mfu": mfu_targets}


def _mfu(m, peaks):
    """Per round: 2 x multiply-adds x 3 x images/s over the matmul peak at the precision the run used
    (that round's peak, else the median of the peaks)."""
    ips = _values(m, "images_per_second")
    macs = _values(m, "macs_per_image")
    precision = next((run["result"].get("precision") for run in m.runs if "result" in run), None)
    if m.spec["kind"] not in ("train", "keras_fit") or precision not in peaks or not macs:
        return {}
    peak = peaks[precision]
    fallback = statistics.median(peak.values())
    return {r: 2 * macs[r] * 3 * ips[r] / peak.get(r, fallback) for r in ips if r in macs}


# == output ==========================================================================================================
def machine_block(machine):
    flags = ", ".join(flag for flag, present in machine["flags"].items() if present) or "none of interest"
    lines = [
        f"- CPU: {machine['cpu']} ({machine['arch']}), {machine['available_cpus']} CPUs available "
        f"({machine['logical_cpus']} logical, {machine['physical_cores'] or '?'} cores); flags: {flags}",
        f"- {machine['onednn']['line']}",
        f"- TensorFlow {machine['tensorflow']}, Keras {machine['keras']}, Python {machine['python']}, {machine['os']}",
        f"- Date: {machine['date']}",
    ]
    loads = machine.get("load_average_during")
    if loads:
        lines.append(
            f"- Load (1-minute average, other work on the machine included): {loads['median']:.1f} median at the "
            f"end of a measurement ({loads['min']:.1f}–{loads['max']:.1f}) on {machine['available_cpus']} CPUs"
        )
    for gpu in machine.get("gpus") or []:
        lines.append(f"- GPU: {gpu['name']} (compute capability {gpu['compute_capability']})")
    return "\n".join(lines)


def _range(spread, fmt="{:.2f}"):
    return f"{fmt.format(spread['min'])}–{fmt.format(spread['max'])}"


CONFIG_COLUMNS = (
    "Configuration",
    "Precision",
    "oneDNN",
    "Rounds",
    "Median img/s",
    "Spread (min–max)",
    "Peak RSS MiB",
    "MFU",
)
COMPARISON_COLUMNS = ("Comparison", "Median ratio", "Spread (min–max)", "Rounds", "Target", "Met")


def markdown(summary, settings):
    configs, out = summary["configs"], []
    out.append("| " + " | ".join(CONFIG_COLUMNS) + " |")
    out.append("|" + "---|" * len(CONFIG_COLUMNS))
    for entry in configs.values():
        if entry["rounds"] == 0:
            out.append(f"| {entry['label']} | failed | | 0 | | | | |")
            continue
        if "images_per_second" in entry:
            speed, spread = entry["images_per_second"], _range(entry["images_per_second"], "{:.1f}")
            median = f"{speed['median']:.1f}"
        else:
            flops = entry["flops_per_second"]
            median = f"{flops['median'] / 1e9:.1f} GFLOP/s"
            spread = _range({k: flops[k] / 1e9 for k in ("min", "max")}, "{:.1f}")
        mfu = f"{entry['mfu']['median']:.1%}" if "mfu" in entry else ""
        spl = f", {entry['steps_per_loop']} steps/loop" if entry.get("steps_per_loop") else ""
        out.append(
            f"| {entry['label']}{spl} | {entry['precision']} | {entry['onednn']} | {entry['rounds']} | {median} | "
            f"{spread} | {entry['max_rss_mib']['median']:.0f} | {mfu} |"
        )
    out.append("")
    out.append("| " + " | ".join(COMPARISON_COLUMNS) + " |")
    out.append("|" + "---|" * len(COMPARISON_COLUMNS))
    for c in summary["comparisons"]:
        if "median" not in c:
            out.append(f"| {c['name']} | n/a | | 0 | {_target(c)} | |")
            continue
        met = "" if c["target"] is None else ("yes" if c["met"] else "**no**")
        out.append(f"| {c['name']} | {c['median']:.2f}× | {_range(c)} | {c['n']} | {_target(c)} | {met} |")
    for m in summary["mfu"]:
        met = "" if m["target"] is None else ("yes" if m["met"] else "**no**")
        target = "" if m["target"] is None else f"≥ {m['target']:.0%}"
        out.append(f"| {m['name']} | {m['median']:.1%} | {m['min']:.1%}–{m['max']:.1%} | {m['n']} | {target} | {met} |")
    out.append("")
    out.append(
        f"Sizes: {settings}. Images/s of training exclude the warm-up (tracing, autotuning); trainers' runs time "
        "whole device loops after the warm-up loops. MFU = 2 × multiply-adds (keras_resnet.flops) × 3 × images/s "
        "over the matmul peak measured in the same round at the same precision."
    )
    return "\n".join(out)


def _target(c):
    return "" if c["target"] is None else f"≥ {c['target']:.2f}×"


def target_paragraphs(summary):
    """One line per target: met or missed, the median ratio and its spread."""
    lines = []
    for c in summary["comparisons"] + summary["mfu"]:
        if c.get("target") is None:
            continue
        if "median" not in c:
            lines.append(f"- **{c['name']}** (target ≥ {c['target']}): not measured.")
            continue
        is_mfu = c in summary["mfu"]
        value = f"{c['median']:.1%} ({c['min']:.1%}–{c['max']:.1%})" if is_mfu else f"{c['median']:.2f}× ({_range(c)})"
        target = f"{c['target']:.0%}" if is_mfu else f"{c['target']:.2f}×"
        lines.append(
            f"- **{c['name']}**: target ≥ {target}, {'met' if c['met'] else 'missed'}: median {value} "
            f"over {c['n']} rounds."
        )
    return "\n".join(lines)


def write_markdown(path, machine, table, targets, command):
    text = (
        "# Benchmarks\n\n"
        f"Measured with `{command}`: every number is a fresh process, configurations interleaved round by round; "
        "medians with their spread (min–max).\n\n"
        "## Machine\n\n"
        f"{machine_block(machine)}\n\n"
        "## Results\n\n"
        f"{table}\n\n"
        "## Targets\n\n"
        f"{targets}\n"
    )
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# == command line ====================================================================================================
def _csv(choices=None):
    def parse(text):
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if choices and item not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(choices or ['names'])}")
        return items

    return parse


def parser():
    p = argparse.ArgumentParser(
        prog="python -m trainers.benchmark",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
        epilog="\n".join(__doc__.splitlines()[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--suites", type=_csv(SUITES), default=list(SUITES), help=f"comma list of {', '.join(SUITES)}")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the main comparisons")
    p.add_argument(
        "--secondary-rounds",
        type=int,
        default=None,
        help=f"rounds of the secondary suites ({', '.join(SECONDARY)}) (default: --rounds); a precision this "
        "machine only emulates runs one short round",
    )
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default: per suite)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first: tracing, autotuning (per suite)")
    p.add_argument("--image-size", type=int, default=None, help="image side for every suite (default: per suite)")
    p.add_argument("--batch-size", type=int, default=None, help="batch for every suite (default: per suite)")
    p.add_argument("--cifar-models", type=_csv(), default=["resnet20", "resnet56"], help="networks of the cifar suite")
    p.add_argument("--loop-steps", type=int, default=20, help="loop suite: steps per loop compared with 1")
    p.add_argument("--matmul-size", type=int, default=2048, help="mfu suite: side of the square matmuls")
    p.add_argument(
        "--matmul-seconds",
        type=float,
        default=2.0,
        help="mfu suite: the timed chain of matmuls runs at least this long",
    )
    p.add_argument(
        "--serving-model", default="resnet50", help="serving suite: network exported (224 px for resnet50, else 32)"
    )
    p.add_argument("--timeout", type=int, default=3600, help="seconds one measurement may take before it fails")
    p.add_argument("--output-json", default="benchmark.json", help="results and machine as JSON ('' for none)")
    p.add_argument("--write-markdown", default=None, metavar="FILE", help="write the table and machine to FILE")
    p.add_argument(
        "--profile-steps",
        default=None,
        help="with --profile-dir: profile these steps (A,B) of trainers' runs into TensorBoard",
    )
    p.add_argument("--profile-dir", default=None, help="keep trainers' run dirs (and profiles) under this folder")
    p.add_argument(
        "--resume",
        default=None,
        metavar="JSON",
        help="keep the measurements of an earlier run's (partial) JSON whose configuration is unchanged; run the rest",
    )
    p.add_argument("--list", action="store_true", help="print the configurations and comparisons, run nothing")
    p.add_argument("--one", default=None, metavar="SPEC", help="internal: run one measurement (JSON) and print it")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))), flush=True)
        return 0
    for flag in ("rounds", "secondary_rounds", "steps", "image_size", "batch_size", "loop_steps", "matmul_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.warmup is not None and args.warmup < 1:
        raise SystemExit("--warmup must be at least 1: the first step traces")
    from trainers import hardware

    machine = hardware.describe()  # no TensorFlow here; the children report the GPUs
    machine["date"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    machine["load_average_at_start"] = _load_average()
    # What `auto` means here decides the baselines' precision: asking starts TensorFlow, so only when needed.
    auto = hardware.auto_precision() if {"resnet50", "cifar"} & set(args.suites) else None
    print(hardware.summary_line(machine) + (f"; precision auto = {auto}" if auto else ""), flush=True)
    with tempfile.TemporaryDirectory(prefix="trainers-benchmark-") as work:
        ms, cs = plan(args, auto)
        if args.list:
            for m in ms:
                print(f"{m.name:28} {m.rounds} rounds, {m.env} environment: {m.label}")
            for c in cs:
                print(f"compare {c.numerator} / {c.denominator}" + (f" (target {c.target})" if c.target else ""))
            return 0
        started = time.perf_counter()
        prepare(args, ms, work)

        def save_partial():  # a long run that dies keeps what it measured
            if args.output_json:
                partial = {"machine": machine, "complete": False, **summarize(ms, cs)}
                with open(args.output_json, "w", encoding="utf-8") as f:
                    json.dump(partial, f, indent=1, default=str)

        if args.resume:
            resume(ms, args.resume)
        run_rounds(ms, args, after=save_partial, work=work)
        elapsed = time.perf_counter() - started
    _add_accelerators(machine, ms)
    loads = [run["result"]["load_average"] for m in ms for run in m.runs if run.get("result", {}).get("load_average")]
    if loads:
        machine["load_average_during"] = _spread(loads)
    summary = summarize(ms, cs)
    settings = _settings_text(args)
    table = markdown(summary, settings)
    targets = target_paragraphs(summary)
    print("\n" + table + ("\n\n" + targets if targets else ""), flush=True)
    print(f"\n{hardware.summary_line(machine)}; {elapsed / 60:.1f} min")
    report = {
        "machine": machine,
        "settings": {k: v for k, v in vars(args).items() if k != "one"},
        "precision_auto": auto,
        "elapsed_seconds": elapsed,
        "complete": True,
        **summary,
        "markdown": table,
    }
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, default=str)
    if args.write_markdown:
        command = "python -m trainers.benchmark " + " ".join(argv if argv is not None else sys.argv[1:])
        write_markdown(args.write_markdown, machine, table, targets, command.strip())
    return 1 if any(m.failed for m in ms) else 0


def _add_accelerators(machine, ms):
    """The GPUs/TPUs as the first child that ran saw them (the parent never starts TensorFlow for them)."""
    for m in ms:
        for run in m.runs:
            found = run.get("result", {}).get("accelerators")
            if found:
                machine["gpus"] = [
                    {**g, "compute_capability": ".".join(map(str, g["compute_capability"] or ())) or None}
                    for g in found["gpus"]
                ]
                machine["tpus"] = found["tpus"]
                return


def _settings_text(args):
    parts = []
    for suite in ("resnet50", "cifar", "input", "pipeline", "serving"):
        if suite in args.suites or (suite == "pipeline" and "input" in args.suites):
            size, batch, warmup, steps = _sizes(args, suite)
            parts.append(f"{suite} {size} px, batch {batch}, {warmup} warm-up + {steps} timed steps")
    rounds = f"{args.rounds} rounds" + (
        f" ({args.secondary_rounds} for secondary suites)" if args.secondary_rounds else ""
    )
    return "; ".join(parts + [rounds])


if __name__ == "__main__":
    sys.exit(main())
