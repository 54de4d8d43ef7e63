"""`python -m trainers.tune`: a 2-trial search through the loop, and a training from its best.yaml."""

import pytest
import yaml

import trainers
from trainers import config as config_lib
from trainers import recipes, tune

FLAGS = ["--data", "synthetic", "--model", "resnet8", "--image-size", "8", "--batch-size", "64", "--steps", "1",
         "--no-progress"]  # fmt: skip

pytestmark = pytest.mark.usefixtures("float32_policy")  # their runs set Keras' process-wide policy


@pytest.mark.slow
@pytest.mark.usefixtures("restore_logging")  # the tuner sets up logging as its command line does
def test_a_two_trial_search_writes_a_best_config_that_trains(tmp_path, capsys):
    out = tmp_path / "tune"
    argv = ["--tuner", "random", "--max-trials", "2", "--space", "lr,weight_decay", "--out", str(out), *FLAGS]
    assert tune.main(argv) == 0
    said = capsys.readouterr().out
    assert "Best trial" in said
    trials = sorted(p.name for p in (out / "trials").iterdir())
    assert len(trials) == 2 and all((out / "trials" / t / "result.json").is_file() for t in trials)
    assert all((out / "trials" / t / "logs" / "train").is_dir() for t in trials)  # TensorBoard, HParams included
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert 0.01 <= best["lr"] <= 0.4 and 1e-5 <= best["weight_decay"] <= 1e-3 and best["model"] == "resnet8"

    config = config_lib.resolve(recipes.CIFAR10, ["--config", str(out / "best.yaml"), "--model-dir",
                                                  str(tmp_path / "best"), "--no-export"])  # fmt: skip
    assert (config.lr, config.weight_decay, config.steps) == (best["lr"], best["weight_decay"], 1)
    assert trainers.train(config)["step"] == 1

    assert tune.main(argv) == 0  # the oracle's state is reloaded: no trial runs again
    assert "Reloading Tuner" in capsys.readouterr().out
    assert len(list((out / "trials").iterdir())) == 2


@pytest.mark.usefixtures("restore_logging")
def test_an_unknown_search_dimension_is_refused(capsys):
    assert tune.main(["--space", "lr,dropout", *FLAGS]) == 2
    assert "unknown dropout" in capsys.readouterr().err
