"""The console and TensorBoard side of a run: log set-up, the progress display, HParams (in process)."""

import glob
import io
import logging
import os
import re

import pytest

from trainers import logs

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING|ERROR) .*$")


pytestmark = pytest.mark.usefixtures("restore_logging")  # cli.main and setup_logging change process-wide logging


def test_a_rate_is_readable_from_a_detector_to_resnet_20():
    assert [logs.rate(r) for r in (0.634, 7.25, 12.34, 99.96, 123.4, 4567.8)] == [
        "0.634",
        "7.25",
        "12.3",
        "100",
        "123",
        "4568",
    ]


def test_setup_logging_formats_trainers_lines_and_quiets_tensorflow(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    stream = io.StringIO()
    logs.setup_logging(stream=stream)
    logs.setup_logging(stream=stream)  # a second call replaces the handler: still one line per message
    logs.log.info("Epoch %d/%d", 1, 3)
    logging.getLogger("trainers.data").warning("folder: 2 unreadable images")
    logging.getLogger("tensorflow").info("Assets written to: /tmp/x")
    logging.getLogger("tensorflow").warning("contains input name(s) with unsupported characters")
    logging.getLogger("absl").info("Sharding callback duration: 12 microseconds")
    lines = stream.getvalue().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == ["INFO Epoch 1/3", "WARNING folder: 2 unreadable images"]
    assert all(LOG_LINE.match(line) for line in lines), lines
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert logging.getLogger("tensorflow").getEffectiveLevel() == logging.ERROR
    assert logging.getLogger("absl").getEffectiveLevel() == logging.ERROR


def test_setup_logging_keeps_the_users_tf_level_and_tf_logs_lets_tensorflow_through(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    logs.setup_logging(stream=io.StringIO())
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    logs.setup_logging(tf_logs=True, stream=io.StringIO())
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    assert logging.getLogger("tensorflow").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("absl").getEffectiveLevel() == logging.INFO


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def clock(monkeypatch):
    """time.monotonic under the test's control: clock[0] seconds."""
    now = [1000.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
    return now


def test_progress_on_a_terminal_redraws_one_line(clock):
    stream = Terminal()
    progress = logs.Progress(10, stream=stream)
    for done in range(1, 11):
        clock[0] += 1
        progress.update(done, {"loss": 1.23456, "top1": 0.5, "img/s": 120.0})
    progress.close()
    text = stream.getvalue()
    assert text.count("\r") == 10 and text.endswith("\n") and text.count("\n") == 1
    assert "\x1b" not in text
    last = text.rsplit("\r", 1)[1]
    assert last.startswith("10/10 [==============================] - 0:10 1.0s/step")
    assert "loss: 1.2346 - top1: 0.5000 - img/s: 120.0" in last
    first = text.split("\r")[1]
    assert first.startswith(" 1/10 [===>") and "ETA 0:09" in first


def test_progress_in_a_file_writes_plain_lines_every_interval_and_at_the_end(clock):
    stream = io.StringIO()
    progress = logs.Progress(100, stream=stream, interval=30.0)
    for done in range(1, 101):
        clock[0] += 1  # a step a second: lines after 30, 60 and 90 s, and at step 100
        progress.update(done, {"loss": 2.5, "img/s": 64.0})
    progress.close()  # the end is shown already: nothing more
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()
    assert [re.search(r" (\d+)/100 ", line)[1] for line in lines] == ["30", "60", "90", "100"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d 30/100 \(30%\) - ETA 1:10 - loss: 2\.5000 - img/s: 64\.0000",
                        lines[0])  # fmt: skip
    assert lines[-1].endswith("100/100 (100%) - 1:40 1.0s/step - loss: 2.5000 - img/s: 64.0000")


def test_progress_close_shows_a_short_epochs_last_state_once(clock):
    stream = io.StringIO()
    progress = logs.Progress(50, stream=stream)
    clock[0] += 5
    progress.update(20, {"loss": 1.0})  # fewer batches than counted; within the interval: nothing yet
    assert stream.getvalue() == ""
    progress.close()
    progress.close()
    assert stream.getvalue().count("\n") == 1 and " 20/50 (40%) " in stream.getvalue()
    silent = io.StringIO()
    quiet = logs.Progress(5, enabled=False, stream=silent)
    quiet.update(5, {"loss": 1.0})
    quiet.close()
    assert silent.getvalue() == ""


def _hparams(run_dir):
    import tensorflow as tf
    from tensorboard.plugins.hparams import plugin_data_pb2

    for path in glob.glob(os.path.join(run_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    if data.HasField("session_start_info"):
                        info = data.session_start_info
                        values = {
                            k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
                            for k, v in info.hparams.items()
                        }
                        return info.group_name, values  # fmt: skip
    return None


def test_hparams_go_to_both_runs_with_unset_values_as_auto(tmp_path):
    from trainers.config import Config

    board = logs.Board(str(tmp_path / "run" / "logs"))
    board.hparams(Config(model="resnet56", num_classes=10, decay_at=[0.5, 0.75]))  # as the engine passes it
    found = {split: _hparams(tmp_path / "run" / "logs" / split) for split in ("train", "validation")}
    assert found["train"] and found["validation"], found
    for split, (group, values) in found.items():
        assert group == f"run/{split}"  # one trial per run: train and validation metrics are never averaged
        assert values["split"] == split and values["model"] == "resnet56" and values["num_classes"] == 10
        assert values["decay_at"] == "0.5,0.75" and values["shortcut"] == "auto" and values["steps"] == "auto"
