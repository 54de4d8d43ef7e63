"""The command line as people type it: what a mistake prints, its exit code, and what it leaves behind.

In process (cli.main with settings that fail before training), except one run logged to a file.
"""

import logging
import os
import re
import subprocess
import sys

import pytest
from test_data import make_folder

from trainers import cli, data, recipes
from trainers import config as config_lib

pytestmark = pytest.mark.usefixtures("restore_logging")  # cli.main and setup_logging change process-wide logging


def cifar10(*argv):
    """`python -m trainers.cifar10 ARGV`, in process: the exit code."""
    try:
        return cli.main(recipes.CIFAR10, "cifar10", "CIFAR-10", list(argv))
    except SystemExit as stop:
        return stop.code


def test_a_typo_in_the_model_name_writes_nothing_and_suggests_names(tmp_path, capsys):
    run = tmp_path / "run"
    assert cifar10("--model", "resnet21", "--model-dir", str(run)) == 2
    err = capsys.readouterr().err
    assert "error: --model resnet21: did you mean resnet20 or resnet18? Unknown model 'resnet21'" in err
    assert "Traceback" not in err and not run.exists()
    assert cifar10("--shortcut", "D", "--model-dir", str(run)) == 2
    assert "error: --shortcut D: Unknown shortcut 'D'. Valid choices: 'A', 'B', 'C'" in capsys.readouterr().err
    assert not run.exists()


def test_bad_config_file_values_name_the_file_and_field(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text('batch_size: "64"\nepochs: two\n')
    assert cifar10("--config", str(path), "--model-dir", str(tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert f"error: --config {path}: field epochs: expected a number, got 'two'" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_setting_up_logging_quiets_tensorflow_unless_tf_logs(monkeypatch, capsys):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    assert cifar10("--batch-size", "0") == 2
    assert "error: --batch-size 0: must be at least 1" in capsys.readouterr().err
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    trainers_log = logging.getLogger("trainers")
    assert [h.get_name() for h in trainers_log.handlers] == ["trainers-console"] and not trainers_log.propagate
    assert logging.getLogger("tensorflow").getEffectiveLevel() == logging.ERROR
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    assert cifar10("--batch-size", "0", "--tf-logs") == 2
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    assert logging.getLogger("tensorflow").getEffectiveLevel() == logging.INFO


def test_the_cifar_recipe_on_a_small_folder_says_what_split_to_pass(tmp_path, capsys):
    make_folder(tmp_path / "pets", per_class=10)
    args = ["--data", f"folder:{tmp_path / 'pets'}", "--steps", "1", "--no-export", "--model-dir", str(tmp_path / "r")]
    assert cifar10(*args) == 2
    err = capsys.readouterr().err
    assert (
        "cannot hold out 5000 of only 30 examples for validation; pass --validation-split 0.1 (a tenth: 3 of 30)" in err
    )
    assert "or a count from 1 to 29, e.g. --validation-split 3" in err
    # The advice works: the fraction is a valid flag, and holds out a tenth.
    config = config_lib.resolve(recipes.CIFAR10, [*args, "--validation-split", "0.1"])
    source = data.open_source(config.data, validation_split=config.validation_split)
    assert (source.num_examples("train"), source.num_examples("validation")) == (27, 3)


def test_a_run_logged_to_a_file_is_plain_text_without_tensorflow_chatter(tmp_path):
    """`python -m trainers.demo ... > train.log 2>&1` (nohup, Slurm): timestamped lines, a progress line instead
    of a redrawn bar, and none of TensorFlow's INFO lines. Also: --help does not import TensorFlow."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    helped = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "trainers.cifar10", "--help"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert helped.returncode == 0 and "--model-dir" in helped.stdout
    assert not re.search(r"\| +(tensorflow|keras)\b", helped.stderr)
    log_file = tmp_path / "train.log"
    cmd = [sys.executable, "-m", "trainers.demo", "--steps", "2", "--model-dir", str(tmp_path / "run"), "--no-export",
           "--model", "resnet8"]  # fmt: skip
    with open(log_file, "w") as out:
        done = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, timeout=600)
    text = log_file.read_text()
    assert done.returncode == 0, text[-3000:]
    assert "\r" not in text and "\x1b" not in text and "\b" not in text, repr(text[-2000:])
    assert not re.search(r"^[IWE]\d{4} ", text, re.M), text[:2000]  # TensorFlow's C++ log lines
    # TensorFlow's own lines; the loop's "oneDNN CPU kernels: ..." line is ours and belongs in the log.
    for noise in ("absl::InitializeLog", "oneDNN custom operations", "Sharding callback duration", "cpu_feature_guard"):
        assert noise not in text, text[:3000]
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO Epoch 1/1$", text, re.M), text
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d 2/2 \(100%\) - .* - loss: ", text, re.M), text
