"""Studies: the paper's comparisons in miniature, each a set of trainer runs and a report of them.

    python -m trainers.study detection --data voc:DIR --image-size 320 --epochs 4 [--depth 18]

detection: the same Faster R-CNN recipe on a residual and on a plain backbone of the same depth (the paper's
Tables 7-8 ask how much of detection's gain is the representation: VOC07 mAP 73.2 -> 76.4 and COCO
mAP@[.5,.95] 21.2 -> 27.2 from VGG-16 to ResNet-101). Every flag after the study's own goes to
`python -m trainers.detection`. Writes OUT/study.md (the table), study.json, curves_map.png and
curves_loss.png. Each run lives in OUT/<model>: rerunning the same command resumes an unfinished one and
only evaluates a finished one, so a study cut off by the end of a session goes on where it stopped.
"""

import argparse
import json
import os
import sys
import time

PAPER = (
    "Paper (Faster R-CNN at 600-1000 px, ImageNet-pretrained): VOC07 test mAP@0.5 73.2 (VGG-16) / 76.4 "
    "(ResNet-101), Table 7; COCO val mAP@[.5,.95] 21.2 / 27.2, Table 8."
)


def parser():
    p = argparse.ArgumentParser(
        prog="python -m trainers.study",
        description="The paper's comparisons in miniature; flags after the study's own go to the trainer.",
        usage="%(prog)s detection [--depth N] [--families resnet,plain] [--out DIR] [trainer flags ...]",
    )
    p.add_argument("study", choices=["detection"])
    p.add_argument("--depth", type=int, default=18, help="backbone depth (default: 18)")
    p.add_argument("--families", default="resnet,plain", help="backbone families compared (default: resnet,plain)")
    p.add_argument("--out", default=None, help="study folder (default: runs/study-detection-<depth>)")
    return p


def _elapsed(model_dir, seconds):
    """Training seconds over every invocation of this run (a resumed run adds its own)."""
    path = os.path.join(model_dir, "study_time.json")
    total = seconds
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            total += json.load(f)["seconds"]
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"seconds": total}, f)
    return total


def run_detection(args, flags):
    from trainers import cli, loop, recipes
    from trainers import config as config_lib
    from trainers.tasks.detection import DetectionTask

    out = args.out or os.path.join("runs", f"study-detection-{args.depth}")
    os.makedirs(out, exist_ok=True)
    rows = []
    for family in args.families.split(","):
        model = f"{family}{args.depth}"
        argv = [*flags, "--model", model, "--model-dir", os.path.join(out, model)]
        if "--export" not in flags:
            argv.append("--no-export")
        config = config_lib.resolve(recipes.DETECTION, argv, prog="python -m trainers.study detection",
                                    on_parsed=cli.quiet_tensorflow)  # fmt: skip
        print(f"\n== {model} ==", flush=True)
        task = DetectionTask(config)
        started = time.perf_counter()
        result = loop.train(config, task=task, recipe_name="detection")
        seconds = _elapsed(config.model_dir, time.perf_counter() - started)
        rows.append(_row(model, config, task, result, seconds))
    _report(out, rows, flags)
    return 0


def _row(model, config, task, result, seconds):
    import keras

    import keras_resnet

    backbone = keras_resnet.build(model, include_top=False, input_shape=(config.image_size, config.image_size, 3))
    detector = task.build_model()
    val = result["validation"]
    evaluation = task.last_evaluation or {}
    return {
        "model": model,
        "mAP50": val["mAP50"],
        "AP": val["AP"],
        "AP50": val["AP50"],
        "AP75": val["AP75"],
        "per_class_AP50": evaluation.get("voc", {}).get("AP@0.5", {}),
        "params": int(sum(int(keras.ops.size(w)) for w in detector.weights)),
        "backbone_gflops": keras_resnet.flops(backbone) / 1e9,
        "training_seconds": seconds,
        "steps": result["step"],
        "model_dir": config.model_dir,
        "image_size": config.image_size,
        "detector": config.detector,
        "data": config.data,
        "validation_images": val["examples"],
    }


def _report(out, rows, flags):
    from trainers import curves

    with open(os.path.join(out, "study.json"), "w", encoding="utf-8") as f:
        json.dump({"flags": flags, "runs": rows}, f, indent=2, default=float)
    first = rows[0]
    lines = [
        f"# Detection study: {first['detector']} on {', '.join(r['model'] for r in rows)}",
        "",
        f"Data {first['data']}, shorter side {first['image_size']} px, {first['steps']} steps, "
        f"{first['validation_images']} validation images; flags: `{' '.join(flags)}`.",
        "",
        "| backbone | VOC07 mAP@0.5 | COCO AP | AP50 | AP75 | params | backbone GFLOPs | training time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['mAP50']:.4f} | {r['AP']:.4f} | {r['AP50']:.4f} | {r['AP75']:.4f} | "
            f"{r['params'] / 1e6:.2f} M | {r['backbone_gflops']:.2f} | {r['training_seconds'] / 60:.0f} min |"
        )
    lines += ["", PAPER, "", "![validation mAP@0.5](curves_map.png)", "", "![training loss](curves_loss.png)", ""]
    with open(os.path.join(out, "study.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    logs = {r["model"]: os.path.join(r["model_dir"], "logs") for r in rows}
    curves.line_chart(
        {m: curves.scalars(os.path.join(d, "validation"), "mAP50") for m, d in logs.items()},
        os.path.join(out, "curves_map.png"),
        title="validation mAP@0.5 (VOC07 11-point)",
        ylabel="mAP@0.5",
    )
    curves.line_chart(
        {m: curves.scalars(os.path.join(d, "train"), "loss") for m, d in logs.items()},
        os.path.join(out, "curves_loss.png"),
        title="training loss (RPN + head)",
        ylabel="loss",
    )
    print("\n".join(lines[: 8 + len(rows)]))
    print(f"\nStudy: {os.path.join(out, 'study.md')}")


def main(argv=None):
    args, flags = parser().parse_known_args(argv)
    try:
        return run_detection(args, flags)
    except ValueError as error:  # trainers.data.DataError is one
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
