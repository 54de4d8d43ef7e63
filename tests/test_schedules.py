"""The lr schedule a recipe and its flags produce: the same training at any batch size and length."""

import pytest

from trainers import config as config_lib
from trainers import recipes, schedules

CIFAR_TRAIN = 45_000


def cifar(*argv):
    config = config_lib.resolve(recipes.CIFAR10, list(argv))
    steps_per_epoch = CIFAR_TRAIN // config.batch_size
    total = int(config.steps or round(config.epochs * steps_per_epoch))
    return config, steps_per_epoch, total, schedules.from_config(config, steps_per_epoch, total)


def test_the_cifar_recipe_is_the_papers_64k_iterations():
    config, spe, total, schedule = cifar()
    assert spe == 351 and abs(total - 64_000) < 200  # 182 epochs of 351 steps
    assert schedule.boundaries == [round(total / 2), round(total * 3 / 4)]  # 32k and 48k
    assert schedule.peak_lr == 0.1


@pytest.mark.parametrize("batch", [64, 512])
def test_a_bigger_batch_keeps_the_epochs_and_the_drops(batch):
    _, _, base_total, base = cifar()
    config, spe, total, schedule = cifar("--batch-size", str(batch))
    assert schedule.peak_lr == pytest.approx(0.1 * batch / 128)
    assert total * batch == pytest.approx(base_total * 128, rel=0.01)  # same examples seen
    epochs = [b / spe for b in schedule.boundaries]
    assert epochs == pytest.approx([b / 351 for b in base.boundaries], abs=0.05)  # drops at epochs 91, 136.5


def test_a_shorter_run_still_decays():
    config, spe, total, schedule = cifar("--epochs", "30")
    assert total == 30 * spe
    assert [b / spe for b in schedule.boundaries] == pytest.approx([15, 22.5], abs=0.01)
    assert float(schedule(total - 1)) == pytest.approx(0.001)


def test_explicit_boundaries_replace_the_recipes():
    config, spe, total, schedule = cifar("--decay-steps", "100,200", "--steps", "300")
    assert (config.decay_at, schedule.boundaries) == (None, [100, 200])
    config, spe, total, schedule = cifar("--decay-epochs", "2")
    assert schedule.boundaries == [2 * spe]
    imagenet = config_lib.resolve(recipes.IMAGENET, ["--epochs", "45"])
    assert schedules.boundaries_of(imagenet, 100, 4500) == [1500, 3000, 4000]


@pytest.mark.parametrize(
    "name", ["resnet110", "ResNet-110", "resnet_110", "RESNET1202", "resnet56", "plain56", "plain110"]
)
def test_the_deep_cifar_warmup_follows_the_network_not_the_spelling(name):
    config, _, _, schedule = cifar("--model", name)
    assert schedule.constant_lr == pytest.approx(0.01) and schedule.constant_steps == 400
    assert float(schedule(0)) == pytest.approx(0.01) and float(schedule(400)) == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["resnet20", "plain44", "resnet44"])
def test_no_warmup_for_other_networks(name):
    assert cifar("--model", name)[3].constant_steps == 0
