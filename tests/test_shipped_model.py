"""The ResNet-20 that ships in saved_models/resnet20_cifar10/<latest version>: it loads, classifies CIFAR-10
JPEGs through `serve_image_bytes` (also with the README's saved_model_cli command), and scores what its model
card says on the 5,000 images its training held out."""

import pathlib
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from trainers.evaluate import evaluate_saved_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
VERSIONS = sorted((ROOT / "saved_models" / "resnet20_cifar10").glob("[0-9]*"), key=lambda p: int(p.name))
SHIPPED = VERSIONS[-1]  # what TF Serving serves; the card's first table is this one
CARD = SHIPPED.parent / "MODEL_CARD.md"
CIFAR10 = ROOT.parent / "shared" / "data" / "cifar10" / "train.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def card_number(label):
    """The percentage in the model card's table row that starts with `label` (e.g. 'Validation top-1')."""
    found = re.search(rf"\| {label}[^|\n]*\|[^0-9|\n]*([0-9]+\.[0-9]+) ?%", CARD.read_text(encoding="utf-8"))
    assert found, f"{CARD} states no {label!r}"
    return float(found.group(1))


def test_it_loads_names_the_cifar10_classes_and_its_card_says_how_it_was_trained():
    loaded = tf.saved_model.load(str(SHIPPED))
    names = loaded.signatures["class_names"]()["class_names"].numpy().tolist()
    assert names == [n.encode() for n in CLASSES]
    card = CARD.read_text(encoding="utf-8")
    assert "python -m trainers.cifar10" in card and "Wall time" in card and "91.25" in card
    assert 0 < card_number("Validation top-1") <= 100
    for version in VERSIONS:  # every version that ships is on the card, and loads
        assert f"`resnet20_cifar10/{version.name}`" in card
        assert tf.saved_model.load(str(version)).signatures["serve_image_bytes"] is not None


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    if not CIFAR10.exists():
        pytest.skip(f"{CIFAR10} is not on this machine (CI and the developers' machines have it)")
    root = tmp_path_factory.mktemp("cifar10")
    with tarfile.open(CIFAR10) as tar:
        tar.extractall(root, filter="data")
    return root / "train"


@pytest.mark.slow
def test_it_scores_what_its_card_says_on_the_images_its_training_held_out(cifar10):
    report = evaluate_saved_model(str(SHIPPED), f"folder:{cifar10}", batch_size=250)
    assert (report["split"], report["validation_split"], report["examples"]) == ("validation", 5000, 5000)
    assert report["signature"] == "serve_image_bytes"
    # The card's number came from this signature on this CPU kind; another CPU's float sums may flip a near tie.
    assert 100 * report["top1"] == pytest.approx(card_number("Validation top-1"), abs=0.1)


@pytest.mark.slow
def test_the_readmes_saved_model_cli_command_classifies_a_jpeg(cifar10, tmp_path):
    jpeg = cifar10 / "ship" / "0000.jpg"
    inputs = tmp_path / "image.npy"
    np.save(inputs, np.array([jpeg.read_bytes()], dtype=object))
    cli = pathlib.Path(sys.executable).parent / "saved_model_cli"
    out = subprocess.run(
        [str(cli), "run", "--dir", str(SHIPPED), "--tag_set", "serve", "--signature_def", "serve_image_bytes",
         "--inputs", f"image_bytes={inputs}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    served = tf.saved_model.load(str(SHIPPED)).signatures["serve_image_bytes"](image_bytes=[jpeg.read_bytes()])
    names = re.search(r"top_5_names:\s*\[\[([^\]]*)\]\]", out.stdout.replace("\n", " "))
    assert names, out.stdout[-2000:]
    assert names.group(1).split()[0].strip("b'\"") == served["top_5_names"].numpy()[0][0].decode()
