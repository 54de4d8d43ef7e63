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
from events import scalars

BIN = pathlib.Path(sys.executable).parent
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
TINY = ["--data", "synthetic", "--model", "resnet8", "--batch-size", "16", "--no-progress", "--log-steps", "1"]


def train(tmp_path, *args, entry="cifar10", timeout=600, check=True):
    cmd = [sys.executable, "-m", f"trainers.{entry}", *TINY, "--export-dir", str(tmp_path / "saved"), *args]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def checkpoint_values(model_dir):
    """{name: array} of every variable in a run's latest checkpoint (model, optimizer, counters)."""
    path = tf.train.latest_checkpoint(str(pathlib.Path(model_dir) / "checkpoints"))
    skip = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter")
    names = [name for name, _ in tf.train.list_variables(path) if not name.startswith(skip)]
    return {name: tf.train.load_variable(path, name) for name in names}


@pytest.mark.slow
def test_two_cpu_replicas_match_one_replica(tmp_path):
    """Same global batch and seed: with sync BN two replicas compute one device's steps (to float noise), so the
    weights after 8 updates agree (a loss averaged per replica or an undivided weight decay would not).
    Per-replica BN's evaluation and export: test_sigterm_and_ctrl_c_save_the_step_and_the_rerun_resumes_there."""
    losses = {}
    for name, extra in {
        "one": ["--sync-bn"],  # the batch's statistics in the same (one-pass) arithmetic as two_sync
        "two_sync": ["--cpu-replicas", "2", "--sync-bn"],
    }.items():
        # fp32: auto picks bf16 on CPUs with AVX512-BF16, whose rounding is far above 1e-5
        args = ["--steps", "8", "--precision", "fp32", "--model-dir", str(tmp_path / name), "--no-export"]
        result = train(tmp_path, *args, *extra)
        assert ("2 replicas" in result.stderr) == (name != "one")
        losses[name] = scalars(tmp_path / name / "logs" / "train", "loss")
    assert losses["two_sync"][1] == pytest.approx(losses["one"][1], abs=1e-5)
    for run in (losses["one"], losses["two_sync"]):
        # Synthetic labels are random: 8 steps have nothing to learn (whether the loss falls is chance).
        assert sorted(run) == list(range(1, 9)) and all(np.isfinite(list(run.values())))
    # Weights, BN statistics, momentum and counters (Keras checkpoints trainable weights under optimizer/).
    # The first step's gradients agree to 2e-4 (float sums in another order); 8 noisy steps of batch 16
    # grow that to ~3 %. A loss averaged per replica (twice the gradients) puts the momentum 50-100 % off.
    one, two = checkpoint_values(tmp_path / "one"), checkpoint_values(tmp_path / "two_sync")
    assert one.keys() == two.keys() and len(one) > 50
    for name in one:
        a, b = np.asarray(one[name], np.float64), np.asarray(two[name], np.float64)
        assert np.linalg.norm(b - a) <= 0.1 * np.linalg.norm(a), name


def assert_evaluation_matches_the_export(model_dir, exported):
    """With per-replica BN, evaluation, checkpoint and export must all use the replicas' mean moving
    statistics: the run's reported validation numbers equal the SavedModel's on the same images."""
    from trainers import data

    reported = json.loads((model_dir / "result.json").read_text())["validation"]
    source = data.open_source("synthetic")
    batches = source.dataset("validation", global_batch_size=64, image_size=32, augment="cifar", training=False)
    serve = tf.saved_model.load(str(exported)).signatures["serving_default"]
    losses, hits = [], []
    for images, labels in batches:
        probabilities = serve(images=images)["probabilities"].numpy()
        losses += list(-np.log(probabilities[np.arange(len(labels)), labels.numpy()]))
        hits += list(probabilities.argmax(-1) == labels.numpy())
    assert reported["examples"] == len(losses) == 256
    np.testing.assert_allclose(np.mean(losses), reported["loss"], rtol=1e-4)
    assert np.mean(hits) == reported["top1"]


def training_order(folder, pipelines):
    """The files input pipeline 0 of `pipelines` reads in epoch 1 of a seed-0 run (validation split 8)."""
    from trainers.data import open_source, pipeline
    from trainers.data.base import Request
    from trainers.data.splits import epoch_order

    files = open_source(f"folder:{folder}", validation_split=8)._files["train"][0]
    request = Request("train", True, True, 16, pipeline.derive_seed(0, 0, "shuffle"), pipelines, 0)
    return [files[i] for i in epoch_order(len(files), request)]


def make_image_folder(root, per_class=40):
    for label in ("cat", "dog"):
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.random.default_rng([len(label), i]).integers(0, 255, (8, 8, 3), dtype=np.uint8)
            (folder / f"{i:03d}.jpg").write_bytes(tf.io.encode_jpeg(pixels).numpy())
    return root


@pytest.mark.slow
def test_a_run_killed_at_a_random_step_resumes_to_the_same_weights(tmp_path):
    """SIGKILL after a random number of checkpoints; the rerun ends where an uninterrupted run ends:
    the same weights, optimizer state and metrics (one device, same data, with a bad image in it)."""
    folder = make_image_folder(tmp_path / "images", per_class=60)
    # 1 of 112 training images (under the 1 % limit), in the first batch of epoch 1: before the fix every
    # batch after it shifted by one image, so a resume in epoch 1 trained on other batches.
    first_epoch = training_order(folder, pipelines=1)
    pathlib.Path(first_epoch[2]).write_bytes(b"not a jpeg at all")
    args = ["--steps", "24", "--checkpoint-steps", "3", "--no-export", "--batch-size", "8", "--image-size", "16"]
    args += ["--data", f"folder:{folder}", "--validation-split", "8"]
    train(tmp_path, *args, "--model-dir", str(tmp_path / "straight"))

    model_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "trainers.cifar10", *TINY, *args, "--model-dir", str(model_dir)]
    process = subprocess.Popen(cmd, env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = 3 * int(np.random.default_rng().integers(1, 5))  # a checkpoint at step 3..12 (epoch 1 has 14)
    deadline = time.time() + 300
    saved_step = 0
    while saved_step < target and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
        latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
        saved_step = int(latest.rsplit("-", 1)[1]) if latest else 0
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    saved_step = int(tf.train.load_variable(saved, "step/.ATTRIBUTES/VARIABLE_VALUE"))
    assert 3 <= saved_step < 24, "killed too late: the run had finished"

    result = train(tmp_path, *args, "--model-dir", str(model_dir))
    assert f"Resumed from step {saved_step}" in result.stderr and "from scratch" not in result.stderr
    resumed, straight = checkpoint_values(model_dir), checkpoint_values(tmp_path / "straight")
    assert resumed.keys() == straight.keys()
    for name in straight:
        np.testing.assert_allclose(resumed[name], straight[name], rtol=1e-6, atol=1e-7, err_msg=name)
    ours, theirs = (json.loads((d / "result.json").read_text()) for d in (model_dir, tmp_path / "straight"))
    assert ours["step"] == theirs["step"] == 24
    for key in ("loss", "top1", "top5", "examples"):
        assert ours["validation"][key] == pytest.approx(theirs["validation"][key], rel=1e-6)
    for key in ("train_loss", "train_top1"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-6)
    steps = scalars(model_dir / "logs" / "train", "loss")
    assert max(steps) == 24 and saved_step + 1 in steps


@pytest.mark.slow
def test_export_after_bf16_training_matches_keras(tmp_path):
    import keras

    from trainers import config as config_lib
    from trainers.tasks.classification import build_model

    model_dir = tmp_path / "run"
    result = train(tmp_path, "--steps", "3", "--precision", "bf16", "--image-size", "16", "--model-dir", str(model_dir))
    exported = re.search(r"SavedModel:\s+(\S+)", result.stdout).group(1)
    assert pathlib.Path(exported).name == "1"
    # Exporting the same checkpoint again writes no new version: TF Serving keeps serving version 1.
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
    assert "Already exported" in cli.stdout + cli.stderr
    assert exported.endswith("saved/run/1") and not (tmp_path / "saved" / "run" / "2").exists()

    config = config_lib.read(model_dir / "config.json")
    keras.mixed_precision.set_global_policy("float32")
    model = build_model(config, config.num_classes)
    tf.train.Checkpoint(model=model).restore(
        tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    ).expect_partial()
    mean = np.load(model_dir / "normalization.npz")["mean"]
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3)).astype(np.uint8)
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


@pytest.mark.slow
def test_tensorboard_serves_the_run_scalars(tmp_path):
    model_dir = tmp_path / "run"
    args = ["--steps", "4", "--model-dir", str(model_dir), "--no-export", "--ten-crop", "--profile-steps", "2,3"]
    args += ["--image-size", "16"]
    result = train(tmp_path, *args)
    assert "val_top1" in result.stderr  # the 10-crop evaluation ran
    # No bar (--no-progress): a text line per --log-steps, which is what a log file of a long run shows.
    assert re.findall(r"INFO step (\d)/4: loss [\d.]+, top1 [\d.]+ \(this epoch\)", result.stderr) == list("1234")
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
        # 0.1 x 16/128, divided by 10 at 1/2 and 3/4 of the run (the recipe's drops, whatever its length).
        assert [round(point[2], 6) for point in series] == [0.0125, 0.0125, 0.00125, 0.000125]
    finally:
        board.terminate()
        board.wait(timeout=30)


@pytest.mark.parametrize("entry", ["cifar10", "imagenet", "detection"])
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


# Runs a trainer's command line (argv[2:]) after wrapping Loop.fit to save the model's final weights to
# argv[1]: each worker's own copy, which a non-chief otherwise keeps only in scratch checkpoints it removes.
SAVING_FINAL_WEIGHTS = """
import runpy, sys
import numpy as np
from trainers import loop

fit, path = loop.Loop.fit, sys.argv[1]

def fit_then_save_weights(self):
    result = fit(self)
    np.savez(path, **{v.path: v.numpy() for v in self.model.weights})
    return result

loop.Loop.fit = fit_then_save_weights
sys.argv = sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def start_two_workers(tmp_path, *args, name="worker", hosts=None, save_weights=False):
    """Two `trainers.cifar10` workers, `--worker-hosts localhost:P1,localhost:P2 --task-index i` (free ports
    unless `hosts`): (processes, log paths, hosts). `save_weights`: each also writes its final model weights
    to tmp_path/weights<i>.npz."""
    hosts = hosts or ",".join(f"localhost:{_free_port()}" for _ in range(2))
    env = {k: v for k, v in ENV.items() if k != "TF_CONFIG"}
    processes, logs = [], []
    for index in range(2):
        saving = ["-c", SAVING_FINAL_WEIGHTS, str(tmp_path / f"weights{index}.npz")] if save_weights else ["-m"]
        cmd = [sys.executable, *saving, "trainers.cifar10", *TINY, *args]
        cmd += ["--worker-hosts", hosts, "--task-index", str(index)]
        logs.append(tmp_path / f"{name}{index}.log")
        with open(logs[-1], "w") as log:
            processes.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=log))
    return processes, logs, hosts


def run_two_workers(tmp_path, *args, timeout=600, save_weights=False):
    """Two workers run to their end: (exit codes, logs)."""
    processes, logs, _ = start_two_workers(tmp_path, *args, save_weights=save_weights)
    try:
        codes = [p.wait(timeout=timeout) for p in processes]
    finally:
        for p in processes:
            p.kill()
    return codes, [log.read_text() for log in logs]


@pytest.mark.slow
def test_two_workers_train_with_multi_worker_mirrored_strategy(tmp_path):
    """The same engine under MultiWorkerMirroredStrategy: two processes on localhost from --worker-hosts and
    --task-index, 2 epochs of a generated image folder; both finish with the same weights, the chief exports."""
    model_dir = tmp_path / "run"
    folder = make_image_folder(tmp_path / "images", per_class=16)  # 32 images: 24 to train, 8 to validate
    args = ["--data", f"folder:{folder}", "--validation-split", "8", "--image-size", "16", "--batch-size", "8"]
    args += ["--epochs", "2", "--model-dir", str(model_dir), "--export-dir", str(tmp_path / "saved")]
    codes, logs = run_two_workers(tmp_path, *args, save_weights=True)
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    for text in logs:
        assert re.search(r"(MultiWorkerMirrored|CollectiveAllReduce)Strategy", text) and "2 replicas" in text
        assert re.search(r"epoch 2 step 6: .*val_top1", text), text[-3000:]
    assert json.loads((model_dir / "result.json").read_text())["step"] == 6  # 3 steps of 8 an epoch
    assert (tmp_path / "saved" / "run" / "1" / "saved_model.pb").exists()
    assert not list(model_dir.glob(".worker-*"))  # the non-chief's scratch checkpoints are gone
    assert max(scalars(model_dir / "logs" / "train", "loss")) == 6
    chief, other = (np.load(tmp_path / f"weights{i}.npz") for i in range(2))
    assert sorted(chief.files) == sorted(other.files) and len(chief.files) > 30
    different = [name for name in chief.files if not np.array_equal(chief[name], other[name])]
    assert not different, different  # every weight and BN statistic, bit for bit
    saved = list(checkpoint_values(model_dir).values())  # the chief's kept checkpoint holds those final weights
    kernels = [chief[name] for name in chief.files if name.endswith("/kernel")]
    assert len(kernels) == 8 and all(  # resnet8: 7 convolutions and the classifier
        any(np.array_equal(k, v) for v in saved if np.shape(v) == k.shape) for k in kernels
    )


@pytest.mark.slow
def test_a_killed_worker_stops_the_other_naming_it_and_a_rerun_resumes(tmp_path):
    """SIGKILL to worker 1 mid-run: the chief stops within 60 s with one line naming worker 1 and its address
    (status 75), its files intact; rerunning both workers resumes from the last checkpoint and finishes."""
    model_dir = tmp_path / "run"
    folder = make_image_folder(tmp_path / "images", per_class=40)  # 72 to train (9 steps of 8), 8 to validate
    args = ["--data", f"folder:{folder}", "--validation-split", "8", "--image-size", "16", "--batch-size", "8"]
    args += ["--steps", "16", "--checkpoint-steps", "2", "--model-dir", str(model_dir), "--no-export"]
    processes, logs, hosts = start_two_workers(tmp_path, *args)
    try:
        deadline, saved = time.time() + 300, None
        while saved is None and time.time() < deadline and all(p.poll() is None for p in processes):
            time.sleep(0.05)
            saved = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
        assert saved, logs[0].read_text()[-3000:]
        processes[1].send_signal(signal.SIGKILL)
        killed_at = time.time()
        code = processes[0].wait(timeout=120)
        stopped_after = time.time() - killed_at
    finally:
        for p in processes:
            p.kill()
    chief_log = logs[0].read_text()
    assert code == 75 and stopped_after < 60, (code, stopped_after, chief_log[-3000:])
    lost = [line for line in chief_log.splitlines() if line.startswith("error: lost worker 1")]
    assert len(lost) == 1 and f"({hosts.split(',')[1]})" in lost[0], chief_log[-3000:]
    assert "Restart every worker with the same command" in lost[0] and "Traceback" not in chief_log
    last = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    step = int(tf.train.load_variable(last, "step/.ATTRIBUTES/VARIABLE_VALUE"))
    assert 2 <= step < 16 and last in lost[0]
    config = (model_dir / "config.json").read_text()

    processes, logs, _ = start_two_workers(tmp_path, *args, name="rerun", hosts=hosts)  # the same command
    try:
        codes = [p.wait(timeout=600) for p in processes]
    finally:
        for p in processes:
            p.kill()
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], texts[0][-3000:] + texts[1][-3000:]
    assert f"Resumed from step {step}" in texts[0] and "from scratch" not in texts[0]
    assert (model_dir / "config.json").read_text() == config
    assert json.loads((model_dir / "result.json").read_text())["step"] == 16


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


@pytest.mark.slow
def test_fp16_loss_scaling_with_xla_on_two_replicas(tmp_path):
    """An initial loss scale that overflows: the first steps are skipped on both replicas, the scale
    halves until the gradients are finite, then exactly --steps updates are applied."""
    model_dir = tmp_path / "run"
    args = ["--steps", "3", "--cpu-replicas", "2", "--xla", "--precision", "fp16", "--no-export"]
    result = train(tmp_path, *args, "--loss-scale", "1e8", "--model-dir", str(model_dir))
    assert "precision fp16" in result.stderr
    skipped = scalars(model_dir / "logs" / "train", "skipped_steps")
    assert max(skipped.values()) > 0, "the test needs a non-finite step"
    values = checkpoint_values(model_dir)
    assert all(np.isfinite(v).all() for v in values.values() if np.issubdtype(np.asarray(v).dtype, np.floating))
    assert values["step/.ATTRIBUTES/VARIABLE_VALUE"] == 3
    assert values["batches/.ATTRIBUTES/VARIABLE_VALUE"] == 3 + max(skipped.values())
    assert json.loads((model_dir / "result.json").read_text())["step"] == 3


@pytest.mark.parametrize("text", ["3,2", "0", "a,b", "1,2,3"])
def test_bad_profile_steps_are_refused(text):
    from trainers.loop import _profile_range

    with pytest.raises(ValueError, match="expected A,B with 1 <= A <= B"):
        _profile_range(text)
    assert _profile_range("4") == (4, 4) and _profile_range("2,5") == (2, 5)


@pytest.mark.slow
def test_bad_images_stop_every_worker_not_just_the_one_that_read_them(tmp_path):
    """Two workers; 2 of 112 training images only the decoder can tell are broken. The > 1 % verdict
    comes from all-reduced counts, so both workers stop with the same error; neither waits forever."""
    folder = make_image_folder(tmp_path / "images", per_class=60)
    # Both in worker 0's share of epoch 1: before the fix, worker 0 stopped alone and worker 1 hung.
    jpeg = (folder / "cat" / "000.jpg").read_bytes()
    for path in training_order(folder, pipelines=2)[:2]:
        pathlib.Path(path).write_bytes(jpeg[:3] + bytes(300) + b"\xff\xd9")  # passes the cheap checks
    args = ["--data", f"folder:{folder}", "--validation-split", "8", "--batch-size", "8", "--steps", "20"]
    codes, logs = run_two_workers(
        tmp_path, *args, "--image-size", "16", "--model-dir", str(tmp_path / "run"), "--no-export", timeout=300
    )
    assert codes == [2, 2], logs[0][-3000:] + logs[1][-3000:]
    for text in logs:
        assert "error:" in text and "2 of 112 training images (1.8%) could not be decoded" in text, text[-3000:]


@pytest.mark.slow
def test_sigterm_and_ctrl_c_save_the_step_and_the_rerun_resumes_there(tmp_path):
    """Two CPU replicas: SIGTERM (a scheduler's preemption) and then Ctrl-C each save a checkpoint at the
    last completed step and exit with a line saying so; the third run resumes there, finishes and exports,
    and with per-replica BN its evaluation and its SavedModel agree."""
    model_dir = tmp_path / "run"
    args = ["--cpu-replicas", "2", "--steps", "40", "--checkpoint-steps", "2"]
    args += ["--model-dir", str(model_dir)]
    cmd = [sys.executable, "-m", "trainers.cifar10", *TINY, *args]
    stopped_at = 0
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        process = subprocess.Popen(
            cmd, env=ENV, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline, saved = time.time() + 300, stopped_at
        while saved < stopped_at + 2 and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
            latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
            saved = int(latest.rsplit("-", 1)[1]) if latest else 0
        process.send_signal(sig)
        out, err = process.communicate(timeout=300)
        assert process.returncode == code, out[-2000:] + err[-3000:]
        name = signal.Signals(sig).name
        found = re.search(rf"{name}: interrupted at step (\d+); checkpoint (\S+)\.", err)
        assert found, err[-3000:]
        step = int(found.group(1))
        assert stopped_at < step < 40 and f"Interrupted ({name}) at step {step}: rerun the same command" in out
        assert "Traceback" not in err
        latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
        assert (
            latest == found.group(2) and int(tf.train.load_variable(latest, "step/.ATTRIBUTES/VARIABLE_VALUE")) == step
        )
        if stopped_at:
            assert f"Resumed from step {stopped_at}" in err
        stopped_at = step
    result = train(tmp_path, *args)
    assert f"Resumed from step {stopped_at}" in result.stderr
    assert json.loads((model_dir / "result.json").read_text())["step"] == 40
    assert_evaluation_matches_the_export(model_dir, tmp_path / "saved" / "run" / "1")  # named after the run
