"""Studies: the paper's comparisons in miniature, each a set of trainer runs and a report of them.

    python -m trainers.study degradation --depths 20,56 --epochs 10          # Fig. 6 / Table 6
    python -m trainers.study shortcuts --family imagenet --depth 34 ...       # Table 3: plain, A, B, C
    python -m trainers.study detection --data voc:DIR --image-size 320 ...    # Tables 7-8

degradation: the plain and the residual net of each depth, the same recipe (trainers.cifar10's, or
trainers.imagenet's with --family imagenet); the paper's claim is that deeper plain nets train *worse*
(training error too), deeper ResNets better. shortcuts: options A, B, C and the plain net at one depth.
detection: the same Faster R-CNN recipe on a residual and a plain backbone of the same depth.

Every flag after the study's own goes to the trainer (--data, --epochs, --batch-size, ...). Each run lives
in OUT/<run>/seed<k>: rerunning the same command skips finished runs and resumes an unfinished one from its
checkpoint, so a study cut off by the end of a session goes on where it stopped; `--only plain20,resnet20`
trains some runs here (others elsewhere, into a shared OUT) and reports on every run finished so far.
Writes OUT/study.md, study.csv (classification), study.json (every curve, to redraw without training) and
the figures.
"""

import argparse
import csv
import json
import math
import os
import re
import sys
import time

# The paper's errors (%), from docs/paper.md.
CIFAR_TABLE6 = {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97, "resnet110": 6.43,
                "resnet1202": 7.93}  # fmt: skip
IMAGENET_TABLE2 = {"plain18": 27.94, "plain34": 28.54, "resnet18": 27.88, "resnet34": 25.03}  # top-1, 10-crop
IMAGENET_TABLE3 = {"plain34": 28.54, "resnet34-A": 25.03, "resnet34-B": 24.52, "resnet34-C": 24.19}
DETECTION_PAPER = (
    "Paper (Faster R-CNN at 600-1000 px, ImageNet-pretrained): VOC07 test mAP@0.5 73.2 (VGG-16) / 76.4 "
    "(ResNet-101), Table 7; COCO val mAP@[.5,.95] 21.2 / 27.2, Table 8."
)
DEFAULT_DEPTHS = {"cifar": "20,32,44,56", "imagenet": "18,34"}
DEFAULT_DEPTH = {"shortcuts": {"cifar": 20, "imagenet": 34}, "detection": {"cifar": 18, "imagenet": 18}}


def parser():
    p = argparse.ArgumentParser(
        prog="python -m trainers.study",
        description="The paper's comparisons in miniature; flags after the study's own go to the trainer.",
        usage="%(prog)s {degradation,shortcuts,detection} [study flags] [trainer flags ...]",
    )
    p.add_argument("study", choices=["degradation", "shortcuts", "detection"])
    p.add_argument("--family", choices=["cifar", "imagenet"], default="cifar", help="recipe and nets (default: cifar)")
    p.add_argument("--depths", default=None, help="degradation: depths (default: 20,32,44,56; imagenet: 18,34)")
    p.add_argument("--depth", type=int, default=None, help="shortcuts (20; imagenet 34) and detection (18): depth")
    p.add_argument("--families", default="resnet,plain", help="detection: backbone families (default: resnet,plain)")
    p.add_argument("--seeds", default="0", help="train each net with these seeds; mean ± std (default: 0)")
    p.add_argument("--only", default=None, help="train only these runs here, e.g. plain20,resnet20")
    p.add_argument("--out", default=None, help="study folder (default: runs/study-<study>-<family>)")
    return p


def _ints(text, flag):
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise ValueError(f"{flag} {text}: expected whole numbers separated by commas, e.g. 20,56")
    return values


def plan(args):
    """[(run name, model, extra trainer flags)] of the study, in training order."""
    if args.study == "degradation":
        depths = _ints(args.depths or DEFAULT_DEPTHS[args.family], "--depths")
        return [(f"{prefix}{d}", f"{prefix}{d}", []) for d in depths for prefix in ("plain", "resnet")]
    depth = args.depth or DEFAULT_DEPTH[args.study][args.family]
    if args.study == "shortcuts":
        return [(f"plain{depth}", f"plain{depth}", [])] + [
            (f"resnet{depth}-{option}", f"resnet{depth}", ["--shortcut", option]) for option in "ABC"
        ]
    return [(f"{family}{depth}", f"{family}{depth}", []) for family in args.families.split(",")]


def _elapsed(model_dir, seconds):
    """Training seconds over every invocation of this run (a resumed run adds its own)."""
    path = os.path.join(model_dir, "study_time.json")
    total = seconds
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            total += json.load(f)["seconds"]
    os.makedirs(model_dir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"seconds": total}, f)
    return total


def _config(recipe, flags, model, extra, seed, model_dir):
    from trainers import cli
    from trainers import config as config_lib

    argv = [*flags, "--model", model, *extra, "--seed", str(seed), "--model-dir", model_dir]
    if "--export" not in flags:
        argv.append("--no-export")
    return config_lib.resolve(recipe, argv, prog="python -m trainers.study", on_parsed=cli.quiet_tensorflow)


def _finished(config):
    """The result of a run that already finished under these settings, else None."""
    import dataclasses

    from trainers import config as config_lib
    from trainers.run_dir import RunDir

    run_dir = RunDir(config.model_dir)
    if not os.path.exists(run_dir.result_path):
        return None
    saved = run_dir.read_config()
    # What the data and the machine decided (the class count, what `auto` precision became) as the run did.
    now = dataclasses.replace(
        config,
        num_classes=config.num_classes or saved.num_classes,
        precision=saved.precision if config.precision == "auto" else config.precision,
    )
    if config_lib.differences(saved, now):
        return None  # other settings: training refuses, with the differences named
    with open(run_dir.result_path, encoding="utf-8") as f:
        return json.load(f)


def run_study(args, flags):
    from trainers import loop, recipes

    if args.study == "detection":
        recipe, recipe_name = recipes.DETECTION, "detection"
    elif args.family == "cifar":
        recipe, recipe_name = recipes.CIFAR10, "cifar10"
    else:
        recipe, recipe_name = recipes.IMAGENET, "imagenet"
    out = args.out or os.path.join("runs", f"study-{args.study}-{args.family}")
    os.makedirs(out, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    runs = plan(args)
    if only and not only & {name for name, _, _ in runs}:
        raise ValueError(f"--only {args.only}: none of this study's runs ({', '.join(n for n, _, _ in runs)}).")
    rows = []
    for name, model, extra in runs:
        for seed in _ints(args.seeds, "--seeds"):
            model_dir = os.path.join(out, name, f"seed{seed}")
            config = _config(recipe, flags, model, extra, seed, model_dir)
            result, task, seconds = _finished(config), None, 0.0
            if result is not None:
                print(f"== {name} seed {seed}: finished, skipped ({model_dir})", flush=True)
            elif only and name not in only:
                print(f"== {name} seed {seed}: not run here (--only)", flush=True)
                continue
            else:
                print(f"\n== {name} seed {seed} ==", flush=True)
                task = _task(config)
                started = time.perf_counter()
                result = loop.train(config, task=task, recipe_name=recipe_name)
                result = {k: v for k, v in result.items() if k not in ("timings", "chief")}
                seconds = time.perf_counter() - started
            seconds = _elapsed(model_dir, seconds)
            rows.append(_row(args.study, name, seed, _saved_config(config), result, seconds, task))
    if not rows:
        print("No finished run to report yet.")
        return 0
    (_report_detection if args.study == "detection" else _report)(args, out, rows, flags)
    return 0


def _task(config):
    if config.task == "detection":
        from trainers.tasks.detection import DetectionTask

        return DetectionTask(config)
    return None  # classification: the loop's default


def _saved_config(config):
    from trainers.run_dir import RunDir

    return RunDir(config.model_dir).read_config()  # the effective one: num_classes from the data


# -- classification -------------------------------------------------------------------------------------------


def _row(study, name, seed, config, result, seconds, task):
    if study == "detection":
        return _detection_row(name, config, result, seconds, task)
    import keras_resnet
    from trainers import curves
    from trainers.tasks.classification import build_model

    model = build_model(config, config.num_classes)
    spec = keras_resnet.get_spec(config.model)
    logs = os.path.join(config.model_dir, "logs")
    train = {s: 1.0 - v for s, v in curves.scalars(os.path.join(logs, "train"), "top1").items()}
    val = {s: 1.0 - v for s, v in curves.scalars(os.path.join(logs, "validation"), "top1").items()}
    final_train = 1.0 - result["train_top1"] if "train_top1" in result else train[max(train)] if train else math.nan
    return {
        "name": name,
        "model": config.model,
        "depth": int(re.search(r"\d+", config.model)[0]),
        "shortcut": (config.shortcut or spec.shortcut) if spec.residual else "—",
        "seed": seed,
        "params": int(model.count_params()),
        "flops": int(keras_resnet.flops(model)),
        "final_train_error": final_train,
        "final_val_error": 1.0 - result["validation"]["top1"],
        "best_val_error": min(val.values(), default=math.nan),
        "seconds": seconds,
        "steps": result["step"],
        "warmup": _warmup(config),
        "model_dir": config.model_dir,
        "curves": {"train_error": train, "val_error": val},
    }


def _warmup(config):
    """The run's warm-up in words: the table says which nets started below the recipe's lr."""
    from trainers import schedules

    per_epoch = 1000  # the linear warm-up is in epochs, the constant one in steps: neither needs the real count
    schedule = schedules.from_config(config, steps_per_epoch=per_epoch, total_steps=per_epoch)
    parts = [f"lr {schedule.constant_lr:g} for {schedule.constant_steps} steps"] if schedule.constant_steps else []
    if schedule.warmup_steps:
        parts.append(f"linear over {schedule.warmup_steps / per_epoch:g} epochs")
    return ", ".join(parts) or "none"


def _mean_std(values):
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0


def summarize(rows):
    """Rows of the same run (its seeds) -> one: mean and std of the errors, curves averaged with their spread."""
    by_name = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(row)
    out = []
    for group in by_name.values():
        first = dict(group[0])
        for key in ("final_train_error", "final_val_error", "best_val_error"):
            first[key], first[key + "_std"] = _mean_std([r[key] for r in group])
        first["seconds"] = sum(r["seconds"] for r in group)
        first["seeds"] = [r["seed"] for r in group]
        for kind in ("train_error", "val_error"):
            steps = set.intersection(*(set(r["curves"][kind]) for r in group))
            values = {s: [r["curves"][kind][s] for r in group] for s in sorted(steps)}
            first["curves"] = {**first.get("curves", {}), kind: {s: sum(v) / len(v) for s, v in values.items()}}
            first.setdefault("bands", {})[kind] = {s: (min(v), max(v)) for s, v in values.items()}
        out.append(first)
    return out


def _paper(args, row):
    if args.study == "shortcuts":
        return IMAGENET_TABLE3.get(row["name"]) if args.family == "imagenet" else None
    return (CIFAR_TABLE6 if args.family == "cifar" else IMAGENET_TABLE2).get(row["model"])


def _percent(mean, std, seeds):
    if math.isnan(mean):
        return "—"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if len(seeds) > 1 else f"{100 * mean:.2f}"


def _report(args, out, rows, flags):
    from trainers import curves

    summary = summarize(rows)
    header = ["net", "depth", "shortcut", "params", "FLOPs", "final train error %", "final val error %",
              "best val error %", "paper error %", "warm-up", "training time"]  # fmt: skip
    table, lines = [], []
    for r in summary:
        paper = _paper(args, r)
        table.append([
            r["name"], r["depth"], r["shortcut"], f"{r['params'] / 1e6:.2f}M", f"{r['flops'] / 1e6:.1f}M",
            _percent(r["final_train_error"], r["final_train_error_std"], r["seeds"]),
            _percent(r["final_val_error"], r["final_val_error_std"], r["seeds"]),
            _percent(r["best_val_error"], r["best_val_error_std"], r["seeds"]),
            "—" if paper is None else f"{paper:.2f}", r.get("warmup", "—"), f"{r['seconds'] / 60:.0f} min",
        ])  # fmt: skip
    lines += [f"# {args.study.title()} study ({args.family})", "",
              f"{len(summary)} nets, seeds {args.seeds}, {summary[0]['steps']} steps each; trainer flags: "
              f"`{' '.join(flags) or '(the recipe)'}`. Paper: Table 6 (CIFAR-10 test error), Tables 2-3 (ImageNet "
              "top-1, 10-crop); ours is the validation split's error.", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table]
    figure = "figure.png"
    lines += ["", f"![training (dashed) and validation (solid) error]({figure})", ""]
    with open(os.path.join(out, "study.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    with open(os.path.join(out, "study.csv"), "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["net", "depth", "shortcut", "params", "flops", "final_train_error", "final_val_error",
                         "best_val_error", "paper_error", "warmup", "seconds", "seeds"])  # fmt: skip
        for r in summary:
            writer.writerow([r["name"], r["depth"], r["shortcut"], r["params"], r["flops"], r["final_train_error"],
                             r["final_val_error"], r["best_val_error"], _paper(args, r), r.get("warmup", ""),
                             r["seconds"], " ".join(map(str, r["seeds"]))])  # fmt: skip
    with open(os.path.join(out, "study.json"), "w", encoding="utf-8") as f:
        json.dump({"study": args.study, "family": args.family, "flags": flags, "runs": rows}, f, indent=2)
    _figure(args, summary, os.path.join(out, figure), curves)
    print("\n".join(lines[4 : 6 + len(table)]))
    print(f"\nStudy: {os.path.join(out, 'study.md')}; figure: {os.path.join(out, figure)}")


def _figure(args, summary, path, curves):
    """Fig. 6's layout: training error dashed, validation solid, one colour per depth; plain nets left and
    ResNets right for degradation, every run in one panel for shortcuts."""
    everything = [v for r in summary for kind in ("train_error", "val_error") for v in r["curves"][kind].values()]
    y_range = (min(everything, default=0.0) * 100, max(everything, default=1.0) * 100)
    if args.study == "degradation":
        depths = sorted({r["depth"] for r in summary})
        groups = [("plain", "plain nets"), ("resnet", "ResNets")]
    else:
        groups = [(None, f"shortcut options, depth {summary[0]['depth']}")]
    panels = []
    for prefix, title in groups:
        series, dashed, colours, bands = {}, set(), {}, {}
        for i, r in enumerate(summary):
            if prefix and not r["model"].startswith(prefix):
                continue
            colour = depths.index(r["depth"]) if prefix else i
            for kind, shown in (("train_error", "train"), ("val_error", "val")):
                label = f"{r['name']} {shown}"
                series[label] = {s: 100 * v for s, v in r["curves"][kind].items()}
                colours[label] = colour
                if len(r["seeds"]) > 1:
                    bands[label] = {s: (100 * lo, 100 * hi) for s, (lo, hi) in r["bands"][kind].items()}
                if kind == "train_error":
                    dashed.add(label)
        panels.append(curves.line_chart(series, None, title=title, xlabel="iterations", ylabel="error %",
                                        dashed=dashed, colours=colours, y_range=y_range, bands=bands))  # fmt: skip
    curves.side_by_side(panels, path)


# -- detection ------------------------------------------------------------------------------------------------


def _detection_row(name, config, result, seconds, task):
    import keras

    import keras_resnet
    from trainers.tasks.detection import DetectionTask

    task = task or DetectionTask(config)
    backbone = keras_resnet.build(config.model, include_top=False, input_shape=(config.image_size,) * 2 + (3,))
    detector = task.build_model(config.num_classes)
    val = result["validation"]
    return {
        "model": name,
        "mAP50": val["mAP50"],
        "AP": val["AP"],
        "AP50": val["AP50"],
        "AP75": val["AP75"],
        "train_loss": result.get("train_loss", math.nan),  # the last epoch's, as the loop logged it
        "per_class_AP50": (task.last_evaluation or {}).get("voc", {}).get("AP@0.5", {}),
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


def _report_detection(args, out, rows, flags):
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
        "| backbone | VOC07 mAP@0.5 | COCO AP | AP50 | AP75 | train loss | params | backbone GFLOPs | training time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['mAP50']:.4f} | {r['AP']:.4f} | {r['AP50']:.4f} | {r['AP75']:.4f} | "
            f"{r['train_loss']:.4f} | "
            f"{r['params'] / 1e6:.2f} M | {r['backbone_gflops']:.2f} | {r['training_seconds'] / 60:.0f} min |"
        )
    lines += ["", DETECTION_PAPER, "", "![validation mAP@0.5](curves_map.png)", "",
              "![training loss](curves_loss.png)", ""]  # fmt: skip
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
    from trainers.loop import Interrupted

    args, flags = parser().parse_known_args(argv)
    try:
        return run_study(args, flags)
    except Interrupted as stop:  # the run saved its checkpoint; the finished runs are already on disk
        print(f"\nInterrupted ({stop.signal_name}) in {stop.model_dir} at step {stop.step}: rerun the same command "
              "to resume the study.")  # fmt: skip
        return stop.exit_code
    except ValueError as error:  # trainers.data.DataError is one
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
