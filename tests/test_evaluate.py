"""`python -m trainers.evaluate`: every number of the report against a direct computation, for a run's
checkpoint and for its exported SavedModel; refusals that say what to do."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import trainers
from trainers import recipes
from trainers.config import Config
from trainers.evaluate import classification_report, evaluate, evaluate_saved_model, main

CLASSES = ("ant", "bee", "cow")

pytestmark = pytest.mark.usefixtures("float32_policy")  # their runs set Keras' process-wide policy


def make_folder(root, per_class=8, size=8):
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.random.default_rng(c * 100 + i).integers(0, 256, (size, size, 3), dtype=np.uint8)
            pixels[..., c] = 255  # something to learn
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return root


def by_hand(labels, scores, k):
    """The report's numbers computed the plain way, one example at a time."""
    top1 = top5 = 0
    confusion = np.zeros((k, k), int)
    for label, row in zip(labels, scores, strict=True):
        order = sorted(range(k), key=lambda c: (-row[c], c))
        top1 += order[0] == label
        top5 += label in order[:5]
        confusion[label, order[0]] += 1
    per_class = [confusion[c, c] / confusion[c].sum() for c in range(k)]
    return top1 / len(labels), top5 / len(labels), per_class, confusion


def check(report, labels, scores):
    top1, top5, per_class, confusion = by_hand(labels, scores, len(CLASSES))
    assert report["top1"] == pytest.approx(top1) and report["top5"] == pytest.approx(top5)
    assert report["top1_error"] == pytest.approx(1 - top1) and report["examples"] == len(labels)
    assert list(report["per_class_accuracy"].values()) == pytest.approx(per_class)
    assert report["confusion_matrix"] == confusion.tolist() and report["images_per_second"] > 0


@pytest.mark.slow
@pytest.mark.usefixtures("restore_logging")  # main() sets up logging as the command line does
def test_a_checkpoint_and_its_export_are_scored_like_a_direct_computation(tmp_path):
    data = make_folder(tmp_path / "images")
    config = Config(
        **dict(
            recipes.CIFAR10,
            model="resnet8",
            data=f"folder:{data}",
            validation_split=6,
            image_size=8,
            batch_size=6,
            epochs=None,
            steps=4,
            precision="fp32",  # evaluate scores in float32 (as the export serves): the loop's loss too, to 1e-5
            model_dir=str(tmp_path / "run"),
            export=True,
            export_dir=str(tmp_path / "saved"),
            export_name="bugs",
            progress=False,
        )  # fmt: skip
    )
    final = trainers.train(config)
    # The checkpoint: the run's 6 held-out images, the loop's numbers, and each one recomputed here.
    report = evaluate(config.model_dir)
    assert report["top1"] == pytest.approx(final["validation"]["top1"])
    assert report["loss"] == pytest.approx(final["validation"]["loss"], rel=1e-5)
    from trainers.run_dir import RunDir
    from trainers.tasks.classification import ClassificationTask

    task = ClassificationTask(config)
    task.open()
    model = task.build_model()
    tf.train.Checkpoint(model=model).restore(RunDir(config.model_dir).latest_checkpoint()).expect_partial()
    mean = RunDir(config.model_dir).read_normalization()["mean"]
    files = task.source._files["validation"]
    images = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) for p in files[0]])
    check(report, files[1], model(images - mean, training=False).numpy())
    # --flip-test: each image's softmax averaged with its mirror image's (mirrored, then the mean taken off).
    flipped = evaluate(config.model_dir, flip_test=True)
    both = [tf.nn.softmax(model(views - mean, training=False)).numpy() for views in (images, images[:, :, ::-1])]
    probabilities = (both[0] + both[1]) / 2
    check(flipped, files[1], probabilities)
    nll = -np.log(probabilities[np.arange(len(files[1])), files[1]]).mean()
    assert flipped["loss"] == pytest.approx(nll, rel=1e-5)
    assert not np.allclose(probabilities, both[0], atol=1e-3)  # the mirror view counted

    # The SavedModel through serve_image_bytes: by default on the 6 images its training held out, as the
    # checkpoint was (no train/serve skew); with validation_split=0 on all 24 files, each recomputed here.
    held = evaluate_saved_model(final["saved_model"], f"folder:{data}", batch_size=5)
    assert (held["split"], held["validation_split"], held["examples"]) == ("validation", 6, 6)
    assert held["confusion_matrix"] == report["confusion_matrix"] and held["top5"] == pytest.approx(report["top5"])
    served = evaluate_saved_model(final["saved_model"], f"folder:{data}", batch_size=5, validation_split=0)
    assert served["signature"] == "serve_image_bytes" and served["split"] == "train" and served["examples"] == 24
    signature = tf.saved_model.load(final["saved_model"]).signatures["serve_image_bytes"]
    labels, scores = [], []
    for c, name in enumerate(CLASSES):
        for path in sorted((data / name).iterdir()):
            scores.append(signature(image_bytes=tf.constant([path.read_bytes()]))["probabilities"].numpy()[0])
            labels.append(c)
    check(served, labels, np.array(scores))

    out = tmp_path / "report.json"
    args = ["--model", final["saved_model"], "--data", f"folder:{data}", "--output-json", str(out)]
    assert main([*args, "--validation-split", "0"]) == 0
    assert json.loads(out.read_text())["confusion_matrix"] == served["confusion_matrix"]
    assert main(args) == 0
    assert json.loads(out.read_text())["confusion_matrix"] == held["confusion_matrix"]
    picture = Image.open(tmp_path / "report_confusion.png")
    assert picture.size[0] > 100 and picture.size[1] > 100


def test_the_report_breaks_ties_to_the_lower_class_and_counts_every_class():
    scores = np.array([[0.5, 0.5, 0.0], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]])
    report = classification_report([1, 2, 0], scores, CLASSES, seconds=1.0)
    check(report, [1, 2, 0], scores)
    assert report["confusion_matrix"] == [[0, 0, 1], [1, 0, 0], [0, 0, 1]]  # the tie went to class 0


def test_evaluate_refuses_what_it_cannot_score(tmp_path):
    (tmp_path / "run").mkdir()
    from trainers import config as config_lib

    config_lib.save(Config(steps=1), str(tmp_path / "run" / "config.json"))
    cmd = [sys.executable, "-m", "trainers.evaluate", "--model-dir", str(tmp_path / "run")]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

    def run(*argv):
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)

    wrong = run(*cmd, "--task", "detection")
    assert wrong.returncode == 2 and "--task detection: " in wrong.stderr and "classification run" in wrong.stderr
    empty = run(*cmd)
    assert empty.returncode == 2 and "holds no checkpoint yet" in empty.stderr, empty.stderr[-2000:]
    missing = run(*cmd[:-1], str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "has no config.json" in missing.stderr
    no_data = run(sys.executable, "-m", "trainers.evaluate", "--model", str(tmp_path))
    assert no_data.returncode == 2 and "--model needs --data" in no_data.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model-dir", "r", "--ten-crop", "--flip-test"], "the 10 crops include the mirror images"),
        (["--model", "m", "--data", "folder:x", "--flip-test"], "--flip-test scores a checkpoint (--model-dir)"),
        (["--model", "m", "--data", "folder:x", "--ten-crop"], "--ten-crop scores a checkpoint (--model-dir)"),
    ],
)
def test_test_time_averaging_is_refused_where_it_cannot_apply(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
