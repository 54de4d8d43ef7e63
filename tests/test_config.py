"""Recipes, flags, config files and learning-rate schedules (in process, no training)."""

import json

import numpy as np
import pytest

from trainers import config as config_lib
from trainers import recipes, schedules


def test_cifar_recipe_is_the_papers():
    config = config_lib.resolve(recipes.CIFAR10, [])
    assert (config.batch_size, config.lr, config.momentum, config.weight_decay) == (128, 0.1, 0.9, 1e-4)
    # 64k iterations of 128 on the 45k split, drops at 32k and 48k: as epochs and fractions of the run.
    assert (config.decay_at, config.epochs, config.steps, config.validation_split) == ([0.5, 0.75], 182, None, 5000)
    assert (config.model, config.augment, config.mean) == ("resnet20", "cifar", "per_pixel")


def test_flags_beat_the_config_file_which_beats_the_recipe(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: resnet56\nbatch-size: 64\nepochs: 3\n")
    config = config_lib.resolve(recipes.CIFAR10, ["--config", str(path), "--batch-size", "32", "--no-bn-decay"])
    assert (config.model, config.batch_size, config.epochs, config.steps) == ("resnet56", 32, 3, None)
    assert config.bn_decay is False
    (tmp_path / "c.json").write_text(json.dumps({"nonsense": 1}))
    with pytest.raises(SystemExit, match="unknown fields \\['nonsense'\\]"):
        config_lib.resolve(recipes.CIFAR10, ["--config", str(tmp_path / "c.json")])


def test_epochs_on_the_command_line_replace_the_recipes_steps():
    config = config_lib.resolve(recipes.CIFAR10, ["--epochs", "2"])
    assert (config.epochs, config.steps) == (2, None)


def test_saved_config_reads_back(tmp_path):
    config = config_lib.resolve(recipes.IMAGENET, ["--decay-epochs", "10,20"])
    config_lib.save(config, tmp_path / "config.json")
    assert config_lib.read(tmp_path / "config.json") == config
    assert (config.decay_epochs, config.decay_at) == ([10, 20], None)


def lrs(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


def test_cifar_step_schedule_and_resnet110_warmup():
    config = config_lib.resolve(recipes.CIFAR10, ["--model", "resnet110"])
    schedule = schedules.from_config(config, steps_per_epoch=351, total_steps=64000)
    np.testing.assert_allclose(
        lrs(schedule, [0, 399, 400, 31999, 32000, 48000, 63999]), [0.01, 0.01, 0.1, 0.1, 0.01, 0.001, 0.001], rtol=1e-6
    )
    plain = schedules.from_config(config_lib.resolve(recipes.CIFAR10, []), 351, 64000)
    assert float(plain(0)) == pytest.approx(0.1)


def test_imagenet_linear_scaling_with_warmup_above_256():
    config = config_lib.resolve(recipes.IMAGENET, ["--batch-size", "1024"])
    schedule = schedules.from_config(config, steps_per_epoch=1251, total_steps=90 * 1251)
    peak = 0.4
    np.testing.assert_allclose(
        lrs(schedule, [0, 5 * 1251 - 1, 5 * 1251, 30 * 1251, 60 * 1251, 80 * 1251]),
        [peak / (5 * 1251), peak, peak, peak / 10, peak / 100, peak / 1000],
        rtol=1e-5,
    )
    no_warmup = schedules.from_config(config_lib.resolve(recipes.IMAGENET, []), 5004, 90 * 5004)
    assert float(no_warmup(0)) == pytest.approx(0.1)


def test_cosine_schedule_ends_at_zero():
    config = config_lib.resolve(recipes.IMAGENET, ["--schedule", "cosine"])
    schedule = schedules.from_config(config, 100, 1000)
    np.testing.assert_allclose(lrs(schedule, [0, 500, 1000]), [0.1, 0.05, 0.0], atol=1e-6)
