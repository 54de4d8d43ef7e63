"""python -m trainers.predict: top-k through the served graph, each bad file reported by its path."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainers import config as config_lib
from trainers import predict, preprocessing
from trainers.export import export_saved_model

NAMES = ["cat", "dog", "ship", "frog"]
MEAN = np.array([120.0, 110.0, 100.0], np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(4)(x))
    model.layers[-1].kernel.assign(model.layers[-1].kernel * 0.05)
    root = str(tmp_path_factory.mktemp("saved_models"))
    path = export_saved_model(model, root, "tiny", image_size=8, mean=MEAN, class_names=NAMES)
    return path, tf.saved_model.load(path).signatures["serve_image_bytes"]


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(1)
    jpeg = tf.io.encode_jpeg(rng.integers(0, 256, (20, 12, 3), dtype=np.uint8)).numpy()
    folder = tmp_path / "photos"
    return {
        "png": write(
            str(tmp_path / "a.png"), tf.io.encode_png(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).numpy()
        ),
        "jpeg": write(str(folder / "b.jpg"), jpeg),
        "truncated": write(str(folder / "sub" / "c.jpg"), jpeg[: len(jpeg) // 2]),
        "text": write(str(folder / "sub" / "notes.png"), b"not an image at all"),
        "ignored": write(str(folder / "README.txt"), b"not an image name"),
        "folder": str(folder),
        "missing": str(tmp_path / "missing.jpg"),
    }


def served(serve, path):
    with open(path, "rb") as f:
        return serve(image_bytes=tf.constant([f.read()]))["probabilities"].numpy()[0]


def test_files_and_folder_to_csv_and_json(exported, files, tmp_path, capsys):
    path, serve = exported
    argv = ["--model", path, files["png"], files["missing"], "--folder", files["folder"], "--top-k", "3"]
    assert predict.main([*argv, "--batch-size", "3", "--output", str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err
    assert "2 images predicted (3 skipped)" in err
    for key in ("missing", "truncated", "text"):
        assert f"error: {files[key]}: " in err

    with open(tmp_path / "p.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    good = [r for r in rows if not r["error"]]
    assert [r["file"] for r in good] == [files["png"]] * 3 + [files["jpeg"]] * 3
    for name in ("png", "jpeg"):
        probabilities = served(serve, files[name])
        mine = [r for r in good if r["file"] == files[name]]
        best = np.argsort(-probabilities)[:3]
        assert [int(r["class_id"]) for r in mine] == best.tolist()
        assert [r["class_name"] for r in mine] == [NAMES[i] for i in best]
        # batches of 3 against one image at a time: TensorFlow's own (non-oneDNN) convolutions sum in another
        # order, 2e-6 apart on a probability of 1e-5
        np.testing.assert_allclose([float(r["probability"]) for r in mine], probabilities[best], rtol=1e-5)
    errors = {r["file"]: r["error"] for r in rows if r["error"]}
    assert errors[files["missing"]].startswith("cannot read")
    assert errors[files["truncated"]].startswith("could not be decoded")
    assert errors[files["text"]].startswith("is not a JPEG, PNG, GIF or BMP image")

    assert predict.main([*argv, "--output", str(tmp_path / "p.json")]) == 0
    with open(tmp_path / "p.json", encoding="utf-8") as f:
        saved = json.load(f)
    assert saved["model"] == path and len(saved["errors"]) == 3
    assert [p["file"] for p in saved["predictions"]] == [files["png"], files["jpeg"]]
    assert [p["class_name"] for p in saved["predictions"][0]["top_k"]] == [r["class_name"] for r in good[:3]]


def test_table_and_newest_version(exported, files, capsys):
    path, _ = exported
    assert predict.main(["--model", os.path.dirname(path), files["jpeg"], "--top-k", "10"]) == 0
    out, err = capsys.readouterr()
    assert "using the newest version" in err
    lines = out.splitlines()
    assert lines[0].split() == ["file", "rank", "class_id", "class_name", "probability"]
    assert len(lines) == 1 + len(NAMES) and all(line.startswith(files["jpeg"]) for line in lines[1:])


def test_nothing_readable_exits_2(exported, files, capsys):
    path, _ = exported
    assert predict.main(["--model", path, files["text"], files["missing"]]) == 2
    assert "no image could be predicted" in capsys.readouterr().err
    with pytest.raises(SystemExit) as raised:
        predict.main(["--model", path])  # no images at all: a usage error
    assert raised.value.code == 2


@pytest.mark.usefixtures("float32_policy")  # another test's bf16 run in this worker must not build its network
def test_model_dir_is_predicted_through_a_fresh_export(exported, files, tmp_path, capsys, monkeypatch):
    """A run without an export of its latest checkpoint: restored and exported to a temporary folder."""
    from trainers.run_dir import RunDir

    config = config_lib.Config(model="resnet20", num_classes=4, image_size=8, export_dir=str(tmp_path / "served"))
    model_dir = str(tmp_path / "run")
    os.makedirs(model_dir)
    config_lib.save(config, os.path.join(model_dir, "config.json"))
    np.savez(os.path.join(model_dir, "normalization.npz"), mean=MEAN, class_names=np.array(NAMES))

    def tiny_network(self, config=None):  # the run's network, small (export_model_dir of a ResNet: test_export)
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv")(inputs))
        return keras.Model(inputs, keras.layers.Dense(4, name="predictions")(x))

    monkeypatch.setattr(RunDir, "rebuild_model", tiny_network)
    keras.utils.set_random_seed(2)
    model = tiny_network(None)
    model.get_layer("predictions").kernel.assign(model.get_layer("predictions").kernel * 0.02)
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), os.path.join(model_dir, "checkpoints"), 1).save()

    assert predict.main(["--model-dir", model_dir, files["jpeg"], "--output", str(tmp_path / "p.json")]) == 0
    assert "exported it to a temporary folder" in capsys.readouterr().err
    assert not os.path.exists(config.export_dir)
    with open(tmp_path / "p.json", encoding="utf-8") as f:
        saved = json.load(f)
    assert saved["model"] == model_dir
    with open(files["jpeg"], "rb") as f:
        pixels = preprocessing.eval_pixels(preprocessing.decode(f.read()), "stretch", 8)
    expected = tf.nn.softmax(model(preprocessing.normalize(pixels, MEAN)[None], training=False))[0].numpy()
    top = saved["predictions"][0]["top_k"]
    assert [p["class_id"] for p in top] == np.argsort(-expected).tolist()
    np.testing.assert_allclose([p["probability"] for p in top], np.sort(expected)[::-1], atol=1e-5)

    # With an export of the latest checkpoint, that export is used (find_export's own test is test_export's).
    monkeypatch.setattr("trainers.export.find_export", lambda model_dir: exported[0])
    assert predict.main(["--model-dir", model_dir, files["jpeg"], "--output", str(tmp_path / "q.json")]) == 0
    assert f"using {exported[0]}" in capsys.readouterr().err
    with open(tmp_path / "q.json", encoding="utf-8") as f:
        assert json.load(f)["model"] == exported[0]


def test_help_does_not_import_tensorflow():
    """--help of export and predict answer before TensorFlow (7 s) is imported."""
    code = (
        "import sys\n"
        "from trainers import export, predict\n"
        "for main in (export.main, predict.main):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit as done:\n"
        "        assert done.code == 0\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--model-dir" in done.stdout and "--top-k" in done.stdout and "--name" in done.stdout
