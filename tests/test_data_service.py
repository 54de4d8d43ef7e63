"""--data-service: decoding on tf.data service workers, each example of an epoch once; clear errors."""

import hashlib
import logging
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from trainers import data_service
from trainers.data import open_source

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "text, expected",
    [("grpc://localhost:5050", ("localhost", 5050)), ("10.0.0.2:6000", ("10.0.0.2", 6000))],
)
def test_addresses(text, expected):
    assert data_service.parse_address(text) == expected


@pytest.mark.parametrize("text", ["localhost", "http://h:1", "grpc://h:port", "grpc://:5050", "grpc://h:1/x"])
def test_malformed_addresses_say_the_form(text):
    with pytest.raises(data_service.DataServiceError, match="expected grpc://HOST:PORT"):
        data_service.parse_address(text)


def test_no_dispatcher_says_how_to_start_one():
    port = _free_port()  # nothing listens there
    with pytest.raises(data_service.DataServiceError) as error:
        data_service.check_reachable(f"grpc://localhost:{port}", seconds=2)
    assert f"no tf.data service dispatcher answers at localhost:{port}" in str(error.value)
    assert f"python -m trainers.data_service dispatcher --port {port}" in str(error.value)


def _digests(dataset):
    return sorted(hashlib.sha1(np.asarray(image).tobytes()).hexdigest() for images, _ in dataset for image in images)


def test_two_workers_see_each_example_of_an_epoch_once(caplog, restore_logging):
    """In-process dispatcher and two workers: the served epoch holds exactly the local epoch's images."""
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer(service.DispatcherConfig(port=0))
    address = dispatcher.target.split("://")[1]
    workers = [service.WorkerServer(service.WorkerConfig(dispatcher_address=address)) for _ in range(2)]
    source = open_source("synthetic")  # 1024 training images
    kwargs = dict(global_batch_size=32, image_size=8, augment="none", training=True)
    local = _digests(source.dataset("train", **kwargs))
    served = data_service.service_for(dispatcher.target, "test", "train", 0, 0, 0)
    batches = list(source.dataset("train", service=served, **kwargs))
    assert all(images.shape[0] == 32 for images, _ in batches)  # whole batches, whichever worker made them
    assert _digests(batches) == local and len(local) == 1024
    # A resumed epoch cannot skip what it read (each worker would skip that much of its own share): it
    # starts over, saying so, and still sends each example once.
    resumed = data_service.service_for(dispatcher.target, "test", "train", 0, 10, 0)
    with caplog.at_level(logging.WARNING, logger="trainers.data"):
        again = _digests(source.dataset("train", service=resumed, skip_batches=10, **kwargs))
    assert again == local and "cannot skip the 320 examples it already read" in caplog.text
    del workers


def _start(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "trainers.data_service", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_listening(port, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with socket.create_connection(("localhost", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port} after {seconds} s")


@pytest.mark.slow
def test_a_dispatcher_and_two_workers_feed_a_training_run(tmp_path):
    """The command-line servers on localhost feed `trainers.cifar10 --data-service` epochs of 1024 synthetic
    images. A dispatcher that stops mid-run ends the run (after --data-service-timeout) with a clear error
    and a checkpoint at the step it reached; a run started with no dispatcher is refused with what to do."""
    port = _free_port()
    dispatcher = _start("dispatcher", "--port", str(port))
    workers = []
    args = ["--data", "synthetic", "--model", "resnet8", "--image-size", "8", "--batch-size", "64", "--no-progress"]
    args += ["--no-export", "--data-service", f"grpc://localhost:{port}", "--data-service-timeout", "5"]
    command = [sys.executable, "-m", "trainers.cifar10", *args]
    try:
        _wait_listening(port)
        workers = [_start("worker", "--dispatcher", f"localhost:{port}", "--host", "localhost") for _ in range(2)]
        log = tmp_path / "long.log"
        with open(log, "w") as out:
            long = subprocess.Popen(
                [*command, "--epochs", "500", "--model-dir", str(tmp_path / "long")],
                env=ENV,
                stdout=out,
                stderr=out,
                cwd=tmp_path,
            )
        deadline = time.time() + 300
        while "Epoch 3/" not in log.read_text() and long.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        dispatcher.terminate()
        dispatcher.wait(timeout=60)
        stopped = time.time()
        code = long.wait(timeout=300)
        waited = time.time() - stopped
    finally:
        for process in [dispatcher, *workers]:
            process.terminate()
        for process in [dispatcher, *workers]:
            process.wait(timeout=60)
    text = log.read_text()
    assert "epoch 2 step 32:" in text  # 1024 / 64 = 16 whole batches an epoch, each example once
    assert f"decoded and augmented by the tf.data service at grpc://localhost:{port}" in text
    assert code == 75 and waited < 60, (code, waited, text[-3000:])
    line = next(line for line in text.splitlines() if line.startswith("error: --data-service"))
    assert "the tf.data service dispatcher stopped answering" in line and "Traceback" not in text
    step = int(line.split(" at step ")[1].split(".")[0])
    saved = tf.train.latest_checkpoint(str(tmp_path / "long" / "checkpoints"))
    assert step >= 32 and saved.endswith(f"ckpt-{step}") and saved in line
    assert int(tf.train.load_variable(saved, "step/.ATTRIBUTES/VARIABLE_VALUE")) == step

    assert "tf.data service dispatcher on" in dispatcher.stdout.read()
    refused = subprocess.run(
        [*command, "--epochs", "1", "--model-dir", str(tmp_path / "after")],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert refused.returncode == 2
    assert f"error: --data-service grpc://localhost:{port}: no tf.data service dispatcher answers" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "after").exists()
