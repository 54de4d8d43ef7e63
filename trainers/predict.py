"""Top-k classes of image files, through the exported SavedModel's serve_image_bytes: the serving path itself.

    python -m trainers.predict --model saved_models/NAME/VERSION photo.jpg more.png
    python -m trainers.predict --model saved_models/NAME --folder photos/ --top-k 3    # the newest version
    python -m trainers.predict --model-dir runs/cifar10-resnet20-tfds_cifar10-1a2b3c4d --output preds.csv x.jpg

--model-dir takes a training run: its export of the latest checkpoint when one exists (`python -m
trainers.export --model-dir DIR` writes it), else the checkpoint is restored and exported to a temporary
folder for this run only, so the predictions still go through the served graph (decode, the evaluation
resize, normalisation; `trainers.preprocessing`).

Prints a table (file, rank, class id, class name, probability), or writes --output FILE.csv / FILE.json.
A file that cannot be read or decoded is reported with its path and skipped; the exit code is 2 when no
file could be predicted, else 0. TensorFlow is imported after the arguments are parsed (--help is instant).
"""

import argparse
import csv
import json
import os
import re
import sys

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
_SERVING_ERROR = re.compile(r"image_bytes\[(\d+)\] ([^\]\n]*)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m trainers.predict",
        description="Top-k classes of image files through an exported SavedModel's serve_image_bytes signature.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a SavedModel version folder saved_models/NAME/VERSION (or NAME: the newest)")
    source.add_argument("--model-dir", help="a training run: its export of the latest checkpoint, or a fresh one")
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image files (a folder: its images)")
    parser.add_argument("--folder", action="append", default=[], help="every image under DIR (recursive)")
    parser.add_argument("--top-k", type=int, default=5, help="classes per image (default: 5)")
    parser.add_argument("--output", default=None, help="write FILE.csv or FILE.json instead of printing a table")
    parser.add_argument("--batch-size", type=int, default=32, help="images per request (default: 32)")
    args = parser.parse_args(argv)
    if not args.images and not args.folder:
        parser.error("give image files and/or --folder DIR")
    if args.top_k < 1 or args.batch_size < 1:
        parser.error("--top-k and --batch-size must be at least 1")
    if args.output and os.path.splitext(args.output)[1].lower() not in (".csv", ".json"):
        parser.error(f"--output must end in .csv or .json, got {args.output!r}")
    return args


def image_files(images, folders):
    """(files in the given order, folders expanded to their image files sorted; errors for missing folders)."""
    files, errors = [], []

    def walk(folder):
        found = []
        for root, dirs, names in os.walk(folder):
            dirs.sort()
            found += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
        return found

    for path in images:
        files += walk(path) if os.path.isdir(path) else [path]
    for folder in folders:
        if os.path.isdir(folder):
            files += walk(folder)
        else:
            errors.append({"file": folder, "error": "no such folder"})
    return files, errors


def resolve_model(model=None, model_dir=None, scratch=None):
    """(SavedModel version folder, a note on where it came from or None)."""
    from trainers import export

    if model is not None:
        import tensorflow as tf

        if tf.saved_model.contains_saved_model(model):
            return model, None
        newest = export.newest_version_dir(os.path.dirname(os.path.abspath(model)), os.path.basename(model))
        if newest is None:
            raise ValueError(f"{model} is neither a SavedModel nor a folder of integer SavedModel versions.")
        return newest, f"using the newest version, {newest}"
    existing = export.find_export(model_dir)
    if existing is not None:
        return existing, f"using {existing}, the export of {model_dir}'s latest checkpoint"
    path = export.export_model_dir(model_dir, scratch)
    note = (
        f"{model_dir}'s latest checkpoint has no export yet: exported it to a temporary folder for this run "
        f"(python -m trainers.export --model-dir {model_dir} keeps one)"
    )
    return path, note


def load(path):
    """(serve_image_bytes function, class names or None) of a SavedModel version folder."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    if "serve_image_bytes" not in loaded.signatures:
        raise ValueError(f"{path} has no serve_image_bytes signature: it was not written by trainers.export.")
    names = None
    if "class_names" in loaded.signatures:
        names = [n.decode("utf-8") for n in loaded.signatures["class_names"]()["class_names"].numpy()]
    return loaded.signatures["serve_image_bytes"], names


def _serving_error(error):
    """(index, reason) from the signature's error message, or None."""
    match = _SERVING_ERROR.search(str(error))
    return (int(match.group(1)), match.group(2).strip()) if match else None


def predict(serve, files, top_k=5, batch_size=32, class_names=None):
    """Results in the order of `files`: {"file", "top_k": [{rank, class_id, class_name, probability}]} or
    {"file", "error"}. A request that fails on one element is sent again without it."""
    import numpy as np
    import tensorflow as tf

    results = {}
    readable = []
    for path in files:
        try:
            with open(path, "rb") as f:
                readable.append((path, f.read()))
        except OSError as error:
            results[path] = {"file": path, "error": f"cannot read: {error.strerror or error}"}
    for start in range(0, len(readable), batch_size):
        pending = readable[start : start + batch_size]
        while pending:
            try:
                out = serve(image_bytes=tf.constant([data for _, data in pending]))
            except tf.errors.InvalidArgumentError as error:
                found = _serving_error(error)
                if found is None or found[0] >= len(pending):
                    if len(pending) == 1:
                        results[pending[0][0]] = {"file": pending[0][0], "error": str(error).strip().splitlines()[-1]}
                        break
                    # Not an element's error: find the culprit by sending each on its own.
                    for one in pending:
                        results.update(predict(serve, [one[0]], top_k, 1, class_names))
                    break
                path = pending.pop(found[0])[0]
                results[path] = {"file": path, "error": found[1]}
                continue
            probabilities = out["probabilities"].numpy()
            for (path, _), row in zip(pending, probabilities, strict=True):
                best = np.argsort(-row, kind="stable")[:top_k]
                results[path] = {
                    "file": path,
                    "top_k": [
                        {
                            "rank": rank,
                            "class_id": int(i),
                            "class_name": class_names[i] if class_names else str(int(i)),
                            "probability": float(row[i]),
                        }
                        for rank, i in enumerate(best, 1)
                    ],
                }
            break
    return {path: results[path] for path in files if path in results}


def write(results, errors, path, model):
    if path.lower().endswith(".json"):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "model": model,
                    "predictions": [r for r in results if "top_k" in r],
                    "errors": [r for r in results if "error" in r] + errors,
                },
                f,
                indent=2,
            )
        return
    with open(path, "w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(["file", "rank", "class_id", "class_name", "probability", "error"])
        for r in results:
            for p in r.get("top_k", []):
                out.writerow([r["file"], p["rank"], p["class_id"], p["class_name"], repr(p["probability"]), ""])
            if "error" in r:
                out.writerow([r["file"], "", "", "", "", r["error"]])
        for r in errors:
            out.writerow([r["file"], "", "", "", "", r["error"]])


def table(results):
    rows = [("file", "rank", "class_id", "class_name", "probability")]
    for r in results:
        rows += [(r["file"], p["rank"], p["class_id"], p["class_name"], f"{p['probability']:.4f}") for p in r["top_k"]]
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    return "\n".join(
        "  ".join(
            str(v).ljust(w) if i in (0, 3) else str(v).rjust(w)
            for i, (v, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )


def main(argv=None):
    args = parse_args(argv)  # before TensorFlow is imported: --help and usage errors are instant
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the decoder's own complaints: the errors are reported here
    import tempfile

    files, errors = image_files(args.images, args.folder)
    with tempfile.TemporaryDirectory(prefix="predict-") as scratch:
        try:
            model, note = resolve_model(args.model, args.model_dir, scratch)
            serve, class_names = load(model)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if note:
            print(note, file=sys.stderr)
        results = list(predict(serve, files, args.top_k, args.batch_size, class_names).values())
    good = sum("top_k" in r for r in results)
    bad = [r for r in results if "error" in r] + errors
    for r in bad:
        print(f"error: {r['file']}: {r['error']}", file=sys.stderr)
    if args.output:
        write(results, errors, args.output, args.model_dir if model.startswith(scratch) else model)
        print(f"{good} images predicted ({len(bad)} skipped): {args.output}", file=sys.stderr)
    elif good:
        print(table([r for r in results if "top_k" in r]))
    if not good:
        print("error: no image could be predicted.", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
