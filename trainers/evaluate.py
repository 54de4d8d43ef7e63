"""`python -m trainers.evaluate --model-dir DIR`: a trained run's checkpoint scored on its validation data.

The task the run trained (its config.json) decides what is reported: classification's loss, top-1 and top-5
(`--ten-crop` for the paper's 10-crop testing), detection's VOC07 mAP@0.5 with per-class APs and pycocotools'
COCO table, and the sample-detection PNG. `--data` evaluates on other data of the same kind (e.g. VOC07
test after training on trainval); `--task` must agree with the run's, if given.
"""

import argparse
import dataclasses
import json
import os
import sys


def parser():
    p = argparse.ArgumentParser(prog="python -m trainers.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True, help="the trainer's --model-dir")
    p.add_argument("--task", choices=["classification", "detection"], default=None, help="(default: the run's)")
    p.add_argument("--checkpoint", default=None, help="a checkpoint prefix (default: the latest)")
    p.add_argument("--data", default=None, help="evaluate on this --data instead of the run's")
    p.add_argument("--batch-size", type=int, default=None, help="(default: the run's)")
    p.add_argument("--ten-crop", action="store_true", help="classification: the paper's 10-crop testing")
    p.add_argument("--output-json", default=None, help="also write the numbers here")
    return p


def evaluate(run_path, checkpoint=None, make_task=None, **changes):
    """{metric: value, "examples": n} (and detection's "voc" and "coco" details) of the checkpoint of the run
    at `run_path`.

    make_task: config -> the task (default: the one config.task names); `changes`: config fields to override."""
    import keras
    import numpy as np
    import tensorflow as tf

    from trainers.export import _restore
    from trainers.run_dir import RunDir
    from trainers.tasks import task_for

    model_dir = run_path
    run = RunDir(model_dir)
    config = run.read_config()
    config = dataclasses.replace(config, backbone_weights=None, **{k: v for k, v in changes.items() if v is not None})
    checkpoint = checkpoint or run.latest_checkpoint()
    if checkpoint is None:
        raise ValueError(f"{model_dir}/checkpoints holds no checkpoint yet: train first, then evaluate.")
    keras.mixed_precision.set_global_policy("float32")
    task = (make_task or task_for)(config)
    task.open()
    task.prepare(run, resuming=True)
    model = task.build_model()
    _restore(model, checkpoint, model_dir, config)
    result = task.evaluate(model)
    if result is None:
        step = tf.function(lambda batch: task.eval_sums(model, batch))
        totals = np.zeros(len(task.metric_names) + 1)
        for batch in task.dataset("validation"):
            totals += step(batch).numpy()
        result = task.summarize(totals)
    details = getattr(task, "last_evaluation", None)
    if details:
        result = {**result, **details}
    result["checkpoint"] = checkpoint
    return result


def main(argv=None):
    args = parser().parse_args(argv)
    from trainers import cli, logs
    from trainers.run_dir import RunDir

    try:
        saved = RunDir(args.model_dir).read_config()
        if args.task and args.task != saved.task:
            raise ValueError(f"--task {args.task}: {args.model_dir} is a {saved.task} run.")
        cli.quiet_tensorflow(saved)
        result = evaluate(
            args.model_dir, args.checkpoint, data=args.data, batch_size=args.batch_size,
            ten_crop=True if args.ten_crop else None, model_dir=args.model_dir,
        )  # fmt: skip
    except ValueError as error:  # DataError is one
        print(f"error: {error}", file=sys.stderr)
        return 2
    logs.log.info("%s at %s", args.model_dir, result["checkpoint"])
    if "voc" in result:
        for name, ap in result["voc"]["AP@0.5"].items():
            print(f"  {name:>14} AP@0.5 {ap:.4f}")
        print(result["coco"]["summary"])
        picture = os.path.join(args.model_dir, "detections.png")
        if os.path.exists(picture):
            print(f"Sample detections: {picture}")
    shown = {k: v for k, v in result.items() if isinstance(v, (int, float))}
    print(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
