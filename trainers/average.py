"""Weight averaging (SWA, Izmailov et al. 2018): one network from several snapshots of one training.

Snapshots near the end of SGD runs that continue one another (the checkpoints of a run at a constant lr, or
the ends of cosine cycles chained with --init-from) lie in one wide basin; their mean lies nearer its
centre than any of them, and generalises better. The moving BatchNorm statistics of the mean weights are
none of the snapshots', so they are measured again: one pass of the training pipeline (its augmentation and
random erasing: the weights expect the statistics of the images they trained on) whose batch statistics
are averaged exactly, every batch alike.

    python -m trainers.average runs/swa saved_models/resnet20_cifar10/4 --out runs/swa-average

A source is a run directory (every checkpoint it kept, or its newest --last N), one checkpoint
(DIR/checkpoints/ckpt-N) or an exported model version (its assets.extra/model.keras). All must be the same
network trained on the same data; the first checkpoint's run (else the first export) gives the settings,
the BatchNorm pass's pipeline included. The result is a run directory like a trainer's (config.json,
normalization.npz, checkpoints/, averaged.json), so `trainers.evaluate --model-dir`, `trainers.export
--model-dir` and `--init-from` take it; it is scored on the validation split and exported unless --no-export.
"""

import argparse
import dataclasses
import json
import logging
import os
import sys
import time

import numpy as np

log = logging.getLogger("trainers.average")  # also when run as __main__

SAME_NETWORK = ("task", "model", "shortcut", "variant", "image_size", "num_classes")


@dataclasses.dataclass
class Snapshot:
    """One set of weights: a checkpoint of a run, or an exported version's model.keras."""

    path: str
    kind: str  # "checkpoint" or "export"
    run_path: str | None
    config: object
    mean: np.ndarray
    class_names: list
    network: object = None  # an export's trained network, loaded once


def _config_from_fields(fields):
    from trainers.config import Config

    known = {f.name for f in dataclasses.fields(Config)}
    return Config(**{k: v for k, v in fields.items() if k in known})


def _run_snapshots(run_path, checkpoints):
    from trainers.run_dir import RunDir

    run = RunDir(run_path)
    config = run.read_config()
    norm = run.read_normalization()
    return [Snapshot(c, "checkpoint", run_path, config, norm["mean"], norm["class_names"]) for c in checkpoints]


def _export_snapshot(version):
    from trainers import export
    from trainers.run_dir import load_exported_model

    info = export.read_export_info(version)
    if info.get("detection_format"):
        raise ValueError(f"{version}: a detector; weight averaging is for classification networks.")
    if info.get("preprocessing") != "mean":
        raise ValueError(f"{version}: exported with {info.get('preprocessing')!r} preprocessing (converted "
                         "weights); average snapshots trained here.")  # fmt: skip
    config = _config_from_fields((info.get("source") or {}).get("config") or {})
    served, network = load_exported_model(version, config.model, "source")
    mean = np.asarray(served.get_layer("normalization").get_config()["mean"], np.float32)
    with open(os.path.join(version, "assets", "class_names.txt"), encoding="utf-8") as f:
        names = [line.rstrip("\n") for line in f]
    # The average of exports is by default the next version of the first one's model name.
    root = os.path.dirname(os.path.dirname(os.path.abspath(version)))
    config = dataclasses.replace(config, export_dir=root, export_name=info.get("name"))
    return Snapshot(version, "export", None, config, mean, names, network)


def snapshots_of(path, last=None):
    """The snapshots a source names (see the module's docstring); `last` keeps a run directory's newest N."""
    import tensorflow as tf

    from trainers.run_dir import RunDir, export_version

    if os.path.exists(os.path.join(path, "config.json")):
        run = RunDir(path)
        state = tf.train.get_checkpoint_state(run.checkpoint_dir)
        kept = state.all_model_checkpoint_paths if state else []  # joined to the directory as it was given
        checkpoints = [c for c in kept if os.path.exists(c + ".index")]
        if not checkpoints:
            raise ValueError(f"{path}: no checkpoint in {run.checkpoint_dir}: train first.")
        return _run_snapshots(path, checkpoints[-last:] if last else checkpoints)
    if os.path.exists(path + ".index"):
        run_path = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        if not os.path.exists(os.path.join(run_path, "config.json")):
            raise ValueError(f"{path}: a checkpoint outside a run directory (no {run_path}/config.json).")
        return _run_snapshots(run_path, [path])
    version = export_version(path) if os.path.isdir(path) else None
    if version:
        return [_export_snapshot(version)]
    raise ValueError(
        f"{path}: not a run directory (config.json), a checkpoint (DIR/checkpoints/ckpt-N) or an exported "
        "model version (assets.extra/export_info.json)."
    )


def check_same_training(snapshots):
    """Averaging mixes weights position by position: only snapshots of one network, one data and one input
    normalisation make a network."""
    first = snapshots[0]
    for other in snapshots[1:]:
        for field in SAME_NETWORK:
            a, b = getattr(first.config, field), getattr(other.config, field)
            if a != b and not (field == "num_classes" and None in (a, b)):
                raise ValueError(
                    f"{other.path} has {field} {b!r}, {first.path} {a!r}: average snapshots of one network."
                )
        if list(other.class_names) != list(first.class_names):
            raise ValueError(f"{other.path} and {first.path} name other classes: average snapshots of one data set.")
        try:
            same_mean = np.allclose(np.asarray(first.mean, np.float32), np.asarray(other.mean, np.float32), atol=1e-3)
        except ValueError:  # shapes that do not broadcast: a mean image and a per-channel mean
            same_mean = False
        if not same_mean:
            raise ValueError(
                f"{other.path} and {first.path} subtract other mean images from their inputs (trained on other "
                "data): average snapshots of one training."
            )


def load_into(model, snapshot):
    """`snapshot`'s weights into `model`; every variable must be found."""
    from trainers.export import _restore
    from trainers.run_dir import copy_layer_weights

    if snapshot.kind == "checkpoint":
        _restore(model, snapshot.path, snapshot.run_path, snapshot.config)
        return
    kept = copy_layer_weights(snapshot.network, model, f"{snapshot.path}: none of {snapshot.config.model}'s layers")
    if kept:
        raise ValueError(f"{snapshot.path}: its model.keras lacks layers {kept[:5]} of {snapshot.config.model}.")


def mean_weights(model, snapshots):
    """Sets `model` to the mean of `snapshots`, variable by variable (moving statistics too)."""
    sums = None
    for i, snapshot in enumerate(snapshots):
        load_into(model, snapshot)
        values = [v.numpy().astype(np.float64) for v in model.weights]
        sums = values if sums is None else [s + v for s, v in zip(sums, values, strict=True)]
        log.info("snapshot %d/%d: %s", i + 1, len(snapshots), snapshot.path)
    for variable, total in zip(model.weights, sums, strict=True):
        variable.assign((total / len(snapshots)).astype(variable.dtype))


def batch_norm_layers(layer):
    """The BatchNormalization layers that training updates, nested models included."""
    import keras

    for sub in getattr(layer, "layers", []):
        if isinstance(sub, keras.layers.BatchNormalization):
            if sub.trainable:
                yield sub
        else:
            yield from batch_norm_layers(sub)


def update_batch_norm(model, batches, mean, max_batches=None):
    """Moving mean and variance of every BatchNorm layer := the mean over `batches` of the batch statistics
    (each batch weighs the same), measured as training measures them. Returns (batches, images) used."""
    import tensorflow as tf

    from trainers import preprocessing

    layers = list(batch_norm_layers(model))
    if not layers:
        return 0, 0
    momentum = tf.Variable(0.0, trainable=False, dtype="float32")
    saved = [layer.momentum for layer in layers]
    for layer in layers:
        layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, np.float32))
        layer.moving_variance.assign(np.ones(layer.moving_variance.shape, np.float32))
        object.__setattr__(layer, "momentum", momentum)  # untracked: read at each call, not traced as a constant

    @tf.function
    def forward(images):
        model(preprocessing.normalize(images, mean), training=True)

    count = images_seen = 0
    started = time.perf_counter()
    try:
        for images, _ in batches:
            momentum.assign(count / (count + 1.0))  # new = old * k/(k+1) + batch/(k+1): the running mean
            forward(images)
            count += 1
            images_seen += int(images.shape[0])
            if count % 50 == 0:
                log.info("BatchNorm statistics: %d batches, %d images, %.0f img/s", count, images_seen,
                         images_seen / (time.perf_counter() - started))  # fmt: skip
            if max_batches and count >= max_batches:
                break
    finally:
        for layer, value in zip(layers, saved, strict=True):
            object.__setattr__(layer, "momentum", value)
    if not count:
        raise ValueError("the training split gave no batch to measure BatchNorm statistics on.")
    return count, images_seen


def average(sources, out, last=None, data=None, bn_batches=None, bn_update=True):
    """Averages the snapshots `sources` name into the new run directory `out`; returns its averaged.json."""
    import keras
    import tensorflow as tf

    from trainers.run_dir import RunDir
    from trainers.tasks import task_for

    if os.path.exists(out) and os.listdir(out):
        raise ValueError(f"--out {out} exists and is not empty: averaging writes a new run directory; give "
                         "another --out or remove that one.")  # fmt: skip
    snapshots = [s for source in sources for s in snapshots_of(source, last)]
    if len(snapshots) < 2:
        raise ValueError(f"{len(snapshots)} snapshot in {', '.join(sources)}: averaging needs two or more.")
    check_same_training(snapshots)
    reference = next((s for s in snapshots if s.kind == "checkpoint"), snapshots[0])
    config = dataclasses.replace(
        reference.config, model_dir=out, num_classes=len(reference.class_names), data=data or reference.config.data
    )
    if config.task != "classification":
        raise ValueError(f"{reference.path}: a {config.task} run; weight averaging is for classification.")
    keras.mixed_precision.set_global_policy("float32")
    task = task_for(config)
    model = task.build_model(len(reference.class_names))
    task.open()
    if list(task.source.class_names[: len(reference.class_names)]) != list(reference.class_names):
        found, wanted = list(task.source.class_names)[:5], list(reference.class_names)[:5]
        raise ValueError(f"--data {config.data}: its classes {found}... are not the snapshots' {wanted}...: give "
                         "the data they trained on.")  # fmt: skip
    mean_weights(model, snapshots)
    bn = {"updated": False, "batches": 0, "images": 0}
    if bn_update and any(True for _ in batch_norm_layers(model)):
        task.mean = np.asarray(reference.mean, np.float32)
        log.info("BatchNorm statistics from %s's training split (augment %s, random erasing %s)", config.data,
                 config.augment, config.random_erasing)  # fmt: skip
        batches, images = update_batch_norm(model, task.batches("train"), task.mean, bn_batches)
        bn = {"updated": True, "batches": batches, "images": images, "augment": config.augment,
              "random_erasing": config.random_erasing}  # fmt: skip
    run = RunDir(out)
    run.write_config(config)
    run.write_normalization(reference.mean, reference.class_names)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), run.checkpoint_dir, max_to_keep=1)
    manager.save(checkpoint_number=len(snapshots))
    record = {"snapshots": [s.path for s in snapshots], "batch_norm": bn,
              "validation_examples": task.examples("validation")}  # fmt: skip
    with open(run.averaged_path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    return record


def parser():
    p = argparse.ArgumentParser(
        prog="python -m trainers.average",
        description="Average the weights of several snapshots of one training (SWA), measure BatchNorm "
        "statistics again on the training pipeline, write a run directory, score and export it.",
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="a run directory (every checkpoint it kept), a checkpoint prefix (DIR/checkpoints/ckpt-N) "
                   "or an exported model version (saved_models/NAME/VERSION)")  # fmt: skip
    p.add_argument("--out", required=True, help="the new run directory for the averaged network")
    p.add_argument("--last", type=int, default=None, help="of each run directory only its newest N checkpoints")
    p.add_argument("--data", default=None, help="the training data (default: the runs'), e.g. folder:DIR")
    p.add_argument("--bn-batches", type=int, default=None, help="batches for BatchNorm (default: one epoch)")
    p.add_argument("--no-bn-update", dest="bn_update", action="store_false",
                   help="keep the mean of the snapshots' moving statistics instead of measuring them")  # fmt: skip
    p.add_argument(
        "--export-dir",
        default=None,
        help="SavedModel root (default: the first checkpoint's run's --export-dir, else the first export's)",
    )
    p.add_argument(
        "--export-name",
        default=None,
        help="TF Serving model name (default: that run's --export-name, else the first "
        "export's name: its next version)",
    )
    p.add_argument("--no-export", dest="export", action="store_false", help="write the run directory only")
    return p


def main(argv=None):
    args = parser().parse_args(argv)  # before TensorFlow: --help and usage errors are instant
    from trainers import evaluate, logs
    from trainers.export import export_model_dir
    from trainers.run_dir import RunDir

    for name in ("last", "bn_batches"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} {getattr(args, name)}: give 1 or more.", file=sys.stderr)
            return 2
    logs.setup_logging()
    logs.import_tensorflow_quietly()
    try:
        record = average(args.sources, args.out, args.last, args.data, args.bn_batches, args.bn_update)
        if record["validation_examples"]:
            result = evaluate.evaluate(args.out)
            record["validation"] = {k: v for k, v in result.items() if isinstance(v, (int, float))}
        with open(RunDir(args.out).averaged_path, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
        path = export_model_dir(args.out, args.export_dir, name=args.export_name) if args.export else None
    except ValueError as error:  # DataError is one
        print(f"error: {error}", file=sys.stderr)
        return 2
    bn = record["batch_norm"]
    print(f"Averaged {len(record['snapshots'])} snapshots into {args.out}")
    print("BatchNorm statistics: " + (f"measured on {bn['images']} training images ({bn['batches']} batches)"
                                      if bn["updated"] else "the mean of the snapshots'"))  # fmt: skip
    if "validation" in record:
        scores = record["validation"]
        print(
            f"Validation ({scores['examples']} images): top1 {scores['top1']:.4f}, top5 {scores['top5']:.4f}, "
            f"loss {scores['loss']:.4f}"
        )
    else:
        print(
            "No validation split to score it on: evaluate it with python -m trainers.evaluate --model-dir "
            f"{args.out} --data ..."
        )
    if path is not None:
        print(f"SavedModel: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
