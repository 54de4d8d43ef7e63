"""`python -m trainers.evaluate`: a run's checkpoint scored again gives the numbers the run reported."""

import subprocess
import sys

import pytest

import trainers
from trainers import recipes
from trainers.config import Config
from trainers.evaluate import evaluate


def test_evaluating_a_classification_run_gives_its_final_numbers(tmp_path):
    config = Config(
        **dict(
            recipes.CIFAR10,
            model="resnet8",
            data="synthetic",
            image_size=8,
            batch_size=64,
            epochs=None,
            steps=3,
            model_dir=str(tmp_path / "run"),
            export=False,
            progress=False,
        )  # fmt: skip
    )
    final = trainers.train(config)["validation"]
    again = evaluate(config.model_dir)
    for key in ("loss", "top1", "top5"):
        assert again[key] == pytest.approx(final[key], rel=1e-5, abs=1e-6), key
    assert again["examples"] == final["examples"]


def test_evaluate_refuses_a_run_of_another_task_and_a_missing_dir(tmp_path):
    (tmp_path / "run").mkdir()
    from trainers import config as config_lib

    config_lib.save(Config(steps=1), str(tmp_path / "run" / "config.json"))
    cmd = [sys.executable, "-m", "trainers.evaluate", "--model-dir", str(tmp_path / "run")]
    wrong = subprocess.run([*cmd, "--task", "detection"], capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "--task detection: " in wrong.stderr and "classification run" in wrong.stderr
    empty = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert empty.returncode == 2 and "holds no checkpoint yet" in empty.stderr, empty.stderr[-2000:]
    missing = subprocess.run([*cmd[:-1], str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "has no config.json" in missing.stderr
