"""The training engine end to end, through its command line, in subprocesses (strategies are per-process)."""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

BIN = pathlib.Path(sys.executable).parent
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
TINY = ["--data", "synthetic", "--model", "resnet20", "--batch-size", "16", "--no-progress", "--log-steps", "1"]


def train(tmp_path, *args, entry="cifar10", timeout=600, check=True):
    cmd = [sys.executable, "-m", f"trainers.{entry}", *TINY, "--export-dir", str(tmp_path / "saved"), *args]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def scalars(log_dir, tag):
    """{step: value} of one scalar tag from a run's TensorBoard event files."""
    values = {}
    for path in sorted(pathlib.Path(log_dir).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def test_two_cpu_replicas_match_one_replica(tmp_path):
    """Same global batch and seed: the first step's loss agrees to 1e-5 with sync BN (the global
    batch's statistics, exactly one device's step) and to 2 % with per-replica BN; both train."""
    losses = {}
    for name, extra in {
        "one": [],
        "two_sync": ["--cpu-replicas", "2", "--sync-bn"],
        "two": ["--cpu-replicas", "2"],
    }.items():
        result = train(tmp_path, "--steps", "8", "--model-dir", str(tmp_path / name), "--no-export", *extra)
        assert ("2 replicas" in result.stderr) == (name != "one")
        losses[name] = scalars(tmp_path / name / "logs" / "train", "loss")
    first = losses["one"][1]
    assert losses["two_sync"][1] == pytest.approx(first, abs=1e-5)
    assert losses["two"][1] == pytest.approx(first, rel=0.02)
    for run in losses.values():
        assert sorted(run) == list(range(1, 9)) and all(np.isfinite(list(run.values())))
        assert run[8] < run[1]  # the running epoch loss falls: it trains


def test_sigkill_after_first_checkpoint_resumes_there(tmp_path):
    model_dir = tmp_path / "run"
    args = ["--steps", "60", "--checkpoint-steps", "4", "--model-dir", str(model_dir), "--no-export"]
    cmd = [sys.executable, "-m", "trainers.cifar10", *TINY, *args]
    process = subprocess.Popen(cmd, env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    index = model_dir / "checkpoints" / "checkpoint"
    deadline = time.time() + 300
    while not index.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert index.exists(), "no checkpoint was written before the deadline"
    saved = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    saved_step = int(tf.train.load_variable(saved, "step/.ATTRIBUTES/VARIABLE_VALUE"))
    assert 4 <= saved_step < 60

    result = train(tmp_path, *args)
    assert f"Resumed from step {saved_step}" in result.stderr
    assert "from scratch" not in result.stderr
    assert json.loads((model_dir / "result.json").read_text())["step"] == 60
    steps = scalars(model_dir / "logs" / "train", "loss")
    assert max(steps) == 60 and saved_step + 1 in steps


def test_export_after_bf16_training_matches_keras(tmp_path):
    import keras

    from trainers import config as config_lib
    from trainers.engine import build_model

    model_dir = tmp_path / "run"
    result = train(tmp_path, "--steps", "3", "--precision", "bf16", "--model-dir", str(model_dir))
    exported = re.search(r"SavedModel:\s+(\S+)", result.stdout).group(1)
    assert pathlib.Path(exported).name == "1"
    # The CLI exports the same run again as the next version.
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainers.export",
            "--model-dir",
            str(model_dir),
            "--export-dir",
            str(tmp_path / "saved"),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert (tmp_path / "saved" / "resnet20" / "2" / "saved_model.pb").exists()

    config = config_lib.read(model_dir / "config.json")
    keras.mixed_precision.set_global_policy("float32")
    model = build_model(config, config.num_classes)
    tf.train.Checkpoint(model=model).restore(
        tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    ).expect_partial()
    mean = np.load(model_dir / "normalization.npz")["mean"]
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    expected = tf.nn.softmax(model(images.astype(np.float32) - mean, training=False)).numpy()

    loaded = tf.saved_model.load(exported)
    for key, arg in (("serving_default", images.astype(np.float32)), ("serve_uint8", images)):
        out = loaded.signatures[key](images=tf.constant(arg))
        assert out["probabilities"].dtype == tf.float32
        np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-4)
    png = tf.stack([tf.io.encode_png(image) for image in images])
    out = loaded.signatures["serve_image_bytes"](image_bytes=png)
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-4)
    np.testing.assert_array_equal(out["top_5"].numpy()[:, 0], expected.argmax(-1))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tensorboard_serves_the_run_scalars(tmp_path):
    model_dir = tmp_path / "run"
    args = ["--steps", "4", "--model-dir", str(model_dir), "--no-export", "--ten-crop", "--profile-steps", "2,3"]
    result = train(tmp_path, *args)
    assert "val_top1" in result.stderr  # the 10-crop evaluation ran
    assert list((model_dir / "logs" / "train" / "plugins" / "profile").glob("*/*.xplane.pb"))
    port = _free_port()
    board = subprocess.Popen(
        [str(BIN / "tensorboard"), "--logdir", str(model_dir / "logs"), "--host", "127.0.0.1", "--port", str(port)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        tags, deadline = {}, time.time() + 120
        while time.time() < deadline:
            try:
                url = f"http://127.0.0.1:{port}/data/plugin/scalars/tags"
                tags = json.loads(urllib.request.urlopen(url, timeout=5).read())
                if "train" in tags and "validation" in tags:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert {"loss", "top1", "top5", "learning_rate", "images_per_second", "skipped_images"} <= set(tags["train"])
        assert {"loss", "top1", "top5"} <= set(tags["validation"])
        series = json.loads(
            urllib.request.urlopen(
                f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run=train&tag=learning_rate", timeout=5
            ).read()
        )
        assert [round(point[2], 6) for point in series] == [0.0125] * 4  # 0.1 x 16/128, before any boundary
    finally:
        board.terminate()
        board.wait(timeout=30)


@pytest.mark.parametrize("entry", ["cifar10", "imagenet"])
def test_help_lists_every_flag_and_default(entry):
    from trainers import config as config_lib
    from trainers import recipes

    out = subprocess.run(
        [sys.executable, "-m", f"trainers.{entry}", "--help"], env=ENV, capture_output=True, text=True, timeout=120
    ).stdout
    text = " ".join(out.split())
    for field in config_lib.Config.__dataclass_fields__:
        assert "--" + field.replace("_", "-") in out, field
    recipe = getattr(recipes, entry.upper())
    assert f"(default: {recipe['model']})" in text and f"(default: {recipe['batch_size']})" in text


def test_gpus_without_gpus_lists_the_devices(tmp_path):
    result = train(tmp_path, "--gpus", "8", "--steps", "1", "--model-dir", str(tmp_path / "r"), check=False)
    assert result.returncode == 2
    assert "--gpus 8 asked for 8 GPUs but TensorFlow found none. Devices found: ['/physical_device:CPU:0']" in (
        result.stderr
    )


@pytest.mark.slow
def test_two_workers_train_with_multi_worker_mirrored_strategy(tmp_path):
    """The same engine under MultiWorkerMirroredStrategy: two processes on localhost, TF_CONFIG."""
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    model_dir = tmp_path / "run"
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        cmd = [sys.executable, "-m", "trainers.cifar10", *TINY, "--steps", "6", "--model-dir", str(model_dir)]
        cmd += ["--export-dir", str(tmp_path / "saved")]
        log = open(tmp_path / f"worker{index}.log", "w")
        processes.append(
            subprocess.Popen(cmd, env={**ENV, "TF_CONFIG": tf_config}, cwd=tmp_path, stdout=log, stderr=log)
        )
    try:
        codes = [p.wait(timeout=600) for p in processes]
    finally:
        for p in processes:
            p.kill()
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "MultiWorkerMirroredStrategy" in logs[0] and "2 replicas" in logs[0]
    assert json.loads((model_dir / "result.json").read_text())["step"] == 6
    assert (tmp_path / "saved" / "resnet20" / "1" / "saved_model.pb").exists()
    assert not list(model_dir.glob(".worker-*"))  # the non-chief's scratch checkpoints are gone
    assert max(scalars(model_dir / "logs" / "train", "loss")) == 6


def test_too_many_corrupt_images_stop_the_run_naming_them(tmp_path):
    for label in ("cat", "dog"):
        folder = tmp_path / "images" / label
        folder.mkdir(parents=True)
        for i in range(30):
            pixels = np.random.default_rng(i).integers(0, 255, (8, 8, 3), dtype=np.uint8)
            (folder / f"{i:03d}.jpg").write_bytes(tf.io.encode_jpeg(pixels).numpy())
    (tmp_path / "images" / "cat" / "000.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "images" / "dog" / "007.jpg").write_bytes(b"")
    result = train(tmp_path, "--data", f"folder:{tmp_path / 'images'}", "--validation-split", "10", "--steps", "1",
                   "--model-dir", str(tmp_path / "run"), check=False)  # fmt: skip
    assert result.returncode == 2
    assert "error:" in result.stderr and "000.jpg" in result.stderr and "007.jpg" in result.stderr


def test_missing_data_folder_shows_the_expected_layout(tmp_path):
    result = train(
        tmp_path, "--data", f"folder:{tmp_path / 'nowhere'}", "--model-dir", str(tmp_path / "r"), check=False
    )
    assert result.returncode == 2
    assert "error:" in result.stderr and "<class" in result.stderr


def test_fp16_loss_scaling_with_xla_on_two_replicas(tmp_path):
    model_dir = tmp_path / "run"
    args = ["--steps", "3", "--cpu-replicas", "2", "--xla", "--precision", "fp16", "--no-export"]
    result = train(tmp_path, *args, "--model-dir", str(model_dir))
    assert "precision fp16" in result.stderr
    losses = scalars(model_dir / "logs" / "train", "loss")
    assert sorted(losses) == [1, 2, 3] and all(np.isfinite(list(losses.values())))


def test_benchmark_prints_a_ratio_table(tmp_path):
    cmd = [sys.executable, "-m", "trainers.benchmark", "--batch-size", "8", "--steps", "1", "--warmup", "1"]
    result = subprocess.run([*cmd, "--variants", "fp32,bf16"], env=ENV, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| fp32 |" in result.stdout and "| 1.00x |" in result.stdout
    assert re.search(r"\| bf16 \| [0-9.]+ \| [0-9.]+x \|", result.stdout)


@pytest.mark.parametrize("text", ["3,2", "0", "a,b", "1,2,3"])
def test_bad_profile_steps_are_refused(text):
    from trainers.engine import _profile_range

    with pytest.raises(ValueError, match="expected A,B with 1 <= A <= B"):
        _profile_range(text)
    assert _profile_range("4") == (4, 4) and _profile_range("2,5") == (2, 5)
