"""`python -m trainers.evaluate`: a trained model scored the way the paper scores it.

    python -m trainers.evaluate --model-dir runs/cifar10-resnet20-...         # a checkpoint, the run's data
    python -m trainers.evaluate --model saved_models/resnet20_cifar10/5 --data folder:cifar10/test

--model-dir scores a run's checkpoint through the task's own evaluation (the loop's numbers): for
classification top-1/top-5 error (`--ten-crop`: the paper's 10-crop test; `--flip-test`: each image and
its mirror image averaged), per-class accuracy and a confusion matrix; for detection VOC07 mAP@0.5 with
per-class APs, the COCO table and the sample PNG.
--model scores an exported classification SavedModel through its serving signature, on encoded image bytes
where the data has them (`serve_image_bytes`, what TF Serving answers a client) and `serve_uint8`
otherwise: a difference from the checkpoint's numbers is train/serve skew. `--data` evaluates on other
data of the same kind: its validation split; for data without one (a folder of class folders), the part
that the model's training held out (`--validation-split`, the same fixed split: on the folder the model
trained from, only images it never saw), or all of it with `--validation-split 0`. Writes --output-json (the
report) and a confusion-matrix PNG beside it (--confusion-png).
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np


def parser():
    from trainers.config import to_count_or_fraction

    p = argparse.ArgumentParser(prog="python -m trainers.evaluate", description=__doc__.split("\n\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model-dir", help="a trainer's --model-dir: its checkpoint")
    which.add_argument("--model", help="an exported classification SavedModel (saved_models/NAME/VERSION)")
    p.add_argument("--task", choices=["classification", "detection"], default=None, help="(default: the run's)")
    p.add_argument("--checkpoint", default=None, help="with --model-dir: a checkpoint prefix (default: the latest)")
    p.add_argument("--data", default=None, help="evaluate on this --data (default: the run's; needed with --model)")
    p.add_argument("--batch-size", type=int, default=None, help="(default: the run's; 64 for --model)")
    p.add_argument("--validation-split", default=None, metavar="N|FRACTION", type=to_count_or_fraction,
                   help="with --model and a --data that has no validation split of its own: score the images this "
                   "fixed split holds out (default: the split the model was trained with, so its own training "
                   "images are not scored; 0: every image)")  # fmt: skip
    p.add_argument("--ten-crop", action="store_true", help="classification checkpoints: the paper's 10-crop test")
    p.add_argument("--flip-test", action="store_true", help="classification checkpoints: average each image's "
                   "softmax with its mirror image's (test-time averaging: report it apart)")  # fmt: skip
    p.add_argument("--output-json", default=None, help="write the report here")
    p.add_argument("--confusion-png", default=None, help="classification: the confusion matrix (default: beside "
                   "--output-json, else none)")  # fmt: skip
    return p


def classification_report(labels, scores, class_names, seconds):
    """Top-1/top-5 (ties to the lower class id, as the loop's top_k_hits), per-class accuracy and the
    confusion matrix [true, predicted] of host arrays: labels [n], scores [n, classes]."""
    labels, scores = np.asarray(labels, np.int64), np.asarray(scores, np.float64)
    k = scores.shape[1]
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, : min(5, k)]
    top1 = ranked[:, 0] == labels
    top5 = (ranked == labels[:, None]).any(axis=1)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (labels, ranked[:, 0]), 1)
    totals = confusion.sum(axis=1)
    per_class = {
        str(name): (float(confusion[i, i] / totals[i]) if totals[i] else float("nan"))
        for i, name in enumerate(class_names[:k])
    }
    n = len(labels)
    return {
        "top1": float(top1.mean()) if n else float("nan"),
        "top5": float(top5.mean()) if n else float("nan"),
        "top1_error": float(1 - top1.mean()) if n else float("nan"),
        "top5_error": float(1 - top5.mean()) if n else float("nan"),
        "examples": n,
        "images_per_second": n / max(seconds, 1e-9),
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion.tolist(),
        "class_names": [str(c) for c in class_names[:k]],
    }


def evaluate(run_path, checkpoint=None, make_task=None, **changes):
    """The report of the checkpoint of the run at `run_path` on its (or `changes`') validation data.

    make_task: config -> the task (default: the one config.task names); `changes`: config fields to override.
    Classification: classification_report's keys plus the loop's loss; detection: mAP50, AP, AP50, AP75,
    examples and the "voc" and "coco" details."""
    import keras
    import tensorflow as tf

    from trainers.export import _restore
    from trainers.run_dir import RunDir
    from trainers.tasks import task_for

    run = RunDir(run_path)
    config = run.read_config()
    config = dataclasses.replace(config, backbone_weights=None, **{k: v for k, v in changes.items() if v is not None})
    checkpoint = checkpoint or run.latest_checkpoint()
    if checkpoint is None:
        raise ValueError(f"{run_path}/checkpoints holds no checkpoint yet: train first, then evaluate.")
    keras.mixed_precision.set_global_policy("float32")
    task = (make_task or task_for)(config)
    task.open()
    task.prepare(run, resuming=True)
    model = task.build_model()
    _restore(model, checkpoint, run_path, config)
    started = time.perf_counter()
    result = task.evaluate(model)
    if result is not None:
        result = {**result, **(getattr(task, "last_evaluation", None) or {})}
    else:
        scores_of = tf.function(lambda images: task.scores(model, images))
        sums_of = tf.function(lambda batch: task.eval_sums(model, batch))
        labels, scores, totals = [], [], np.zeros(len(task.metric_names) + 1)
        for batch in task.batches("validation"):
            labels.append(batch[1].numpy())
            scores.append(scores_of(batch[0]).numpy())
            totals += sums_of(batch).numpy()
        report = classification_report(
            np.concatenate(labels), np.concatenate(scores), task.source.class_names, time.perf_counter() - started
        )
        result = {**report, "loss": task.summarize(totals)["loss"]}
    result["checkpoint"] = checkpoint
    return result


def _served_split(source):
    return "validation" if source.num_examples("validation") else "train"


def evaluate_saved_model(path, data_spec, batch_size=64, validation_split=None):
    """classification_report of the SavedModel at `path` through its serving signature on `data_spec`.

    validation_split (None: the one the model was trained with) holds out the same fixed part of a source
    without a validation split of its own as training did: scored on the folder it trained from, the model
    meets only the images it never saw."""
    import tensorflow as tf

    from trainers import data
    from trainers.data.base import Request
    from trainers.export import read_export_info

    info = read_export_info(path)
    if not info:
        raise ValueError(f"--model {path}: no assets.extra/export_info.json: not a SavedModel exported by trainers.")
    if info.get("detection_format"):
        raise ValueError(f"--model {path}: a detector; evaluate its run with --model-dir (mAP needs the boxes).")
    names_file = os.path.join(path, "assets", "class_names.txt")
    with open(names_file, encoding="utf-8") as f:
        model_names = [line.rstrip("\n") for line in f]
    source = data.open_source(data_spec)
    held_out = None
    if not source.num_examples("validation"):  # no split of its own: hold out what training held out
        trained_split = (info.get("source") or {}).get("config", {}).get("validation_split") or 0
        held_out = trained_split if validation_split is None else validation_split
        if held_out:
            source = data.open_source(data_spec, validation_split=held_out)
    if list(source.class_names[: len(model_names)]) != model_names:
        raise ValueError(
            f"--data {data_spec}: its classes {list(source.class_names)[:5]}... are not the model's "
            f"{model_names[:5]}... (in this order): labels would be compared with the wrong classes."
        )
    split = _served_split(source)
    size = int(info["image_size"][0]) if isinstance(info["image_size"], list) else int(info["image_size"])
    stream = source._stream(Request(split, False, False, size, 0, 1, 0))
    elements = stream.elements.map(lambda *item: stream.parse(item if len(item) > 1 else item[0]))
    encoded = "data" in elements.element_spec
    signature = tf.saved_model.load(path).signatures["serve_image_bytes" if encoded else "serve_uint8"]
    labels, scores = [], []
    started = time.perf_counter()
    for batch in elements.batch(batch_size):
        if encoded:
            out = signature(image_bytes=batch["data"])
        else:
            out = signature(images=tf.cast(batch["image"], tf.uint8))
        labels.append(batch["label"].numpy())
        scores.append(out["probabilities"].numpy())
    report = classification_report(
        np.concatenate(labels), np.concatenate(scores), model_names, time.perf_counter() - started
    )
    signature_name = "serve_image_bytes" if encoded else "serve_uint8"
    return {**report, "split": split, "validation_split": held_out, "signature": signature_name, "model": path}


def main(argv=None):
    args = parser().parse_args(argv)
    from trainers import cli
    from trainers.config import Config
    from trainers.run_dir import RunDir

    averaging = "--ten-crop" if args.ten_crop else "--flip-test" if args.flip_test else None
    try:
        if args.ten_crop and args.flip_test:
            raise ValueError("--ten-crop and --flip-test: the 10 crops include the mirror images; give one.")
        if args.model:
            if not args.data:
                raise ValueError("--model needs --data: the images to score it on (e.g. folder:DIR).")
            if averaging:
                raise ValueError(f"{averaging} scores a checkpoint (--model-dir): --model answers one view an "
                                 "image, as its serving signature does.")  # fmt: skip
            cli.quiet_tensorflow(Config(steps=1))
            result = evaluate_saved_model(args.model, args.data, args.batch_size or 64, args.validation_split)
        else:
            saved = RunDir(args.model_dir).read_config()
            if args.task and args.task != saved.task:
                raise ValueError(f"--task {args.task}: {args.model_dir} is a {saved.task} run.")
            if saved.task == "detection" and averaging:
                raise ValueError(f"{averaging}: test-time averaging is for classification; {args.model_dir} is a "
                                 "detector.")  # fmt: skip
            cli.quiet_tensorflow(saved)
            result = evaluate(
                args.model_dir, args.checkpoint, data=args.data, batch_size=args.batch_size,
                ten_crop=True if args.ten_crop else None, flip_test=True if args.flip_test else None,
                model_dir=args.model_dir,
            )  # fmt: skip
    except ValueError as error:  # DataError is one
        print(f"error: {error}", file=sys.stderr)
        return 2
    _print(args, result)
    return 0


def _print(args, result):
    from trainers import curves

    if "voc" in result:
        for name, ap in result["voc"]["AP@0.5"].items():
            print(f"  {name:>14} AP@0.5 {ap:.4f}")
        print(result["coco"]["summary"])
        picture = os.path.join(args.model_dir, "detections.png")
        if os.path.exists(picture):
            print(f"Sample detections: {picture}")
    if "per_class_accuracy" in result:
        for name, accuracy in result["per_class_accuracy"].items():
            print(f"  {name:>14} accuracy {accuracy:.4f}")
    if "signature" in result:
        held = f", the {result['validation_split']} held out as in training" if result["validation_split"] else ""
        print(f"{result['model']} through {result['signature']}: {result['examples']} images of the "
              f"{result['split']} split{held}")  # fmt: skip
    shown = {k: v for k, v in result.items() if isinstance(v, (int, float)) and k != "validation_split"}
    print(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
    png = args.confusion_png or (os.path.splitext(args.output_json)[0] + "_confusion.png" if args.output_json else None)
    if png and "confusion_matrix" in result:
        print(f"Confusion matrix: {curves.confusion_chart(result['confusion_matrix'], result['class_names'], png)}")
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=float)
        print(f"Report: {args.output_json}")


if __name__ == "__main__":
    sys.exit(main())
