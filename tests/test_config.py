"""Recipes, flags, config files and learning-rate schedules (in process, no training)."""

import dataclasses
import json
import re

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


def test_recipe_fast_swaps_the_defaults_and_flags_still_beat_it(capsys):
    named = dict(variants=recipes.CIFAR10_RECIPES, prog="python -m trainers.cifar10")
    fast = config_lib.resolve(recipes.CIFAR10, ["--recipe", "fast"], **named)
    expected = ("cosine", None, 90, 5e-4, 0.1)
    assert (fast.schedule, fast.decay_at, fast.epochs, fast.weight_decay, fast.label_smoothing) == expected
    paper = dict(schedule="step", decay_at=[0.5, 0.75], epochs=182, weight_decay=1e-4, label_smoothing=0.0)
    assert dataclasses.replace(fast, **paper) == (
        config_lib.resolve(recipes.CIFAR10, ["--recipe", "paper"], **named)
    )  # the rest is the paper's
    assert config_lib.resolve(recipes.CIFAR10, ["--epochs", "30", "--recipe", "fast"], **named).epochs == 30
    assert config_lib.resolve(recipes.CIFAR10, [], **named).epochs == 182
    with pytest.raises(SystemExit):
        config_lib.resolve(recipes.CIFAR10, ["--recipe", "quick"], **named)
    err = capsys.readouterr().err
    assert "python -m trainers.cifar10: error: argument --recipe: invalid choice: 'quick'" in err and "'fast'" in err


def refused(recipe, argv, capsys):
    """The error line a bad setting gets: argparse style, exit status 2, no traceback."""
    with pytest.raises(SystemExit) as stop:
        config_lib.resolve(recipe, argv, prog="python -m trainers.cifar10")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_validation_split_takes_a_count_or_a_fraction(tmp_path, capsys):
    assert config_lib.resolve(recipes.CIFAR10, ["--validation-split", "0.1"]).validation_split == 0.1
    for given in ("5000", "5000.0"):
        split = config_lib.resolve(recipes.CIFAR10, ["--validation-split", given]).validation_split
        assert split == 5000 and type(split) is int
    # An int stays an int, so the settings (and the run directory named after their hash) do not change.
    fields = config_lib.training_fields(config_lib.resolve(recipes.CIFAR10, []))
    assert '"validation_split": 5000,' in json.dumps(fields, sort_keys=True)
    path = tmp_path / "c.yaml"
    path.write_text("validation_split: 0.05\n")
    config = config_lib.resolve(recipes.CIFAR10, ["--config", str(path)])
    assert config.validation_split == 0.05
    assert config_lib.differences(config_lib.resolve(recipes.CIFAR10, []), config) == ["validation_split: 5000 -> 0.05"]
    for bad in ("1.5", "-1", "tenth"):
        assert refused(recipes.CIFAR10, ["--validation-split", bad], capsys) == (
            "python -m trainers.cifar10: error: argument --validation-split: expected a count of images (e.g. 5000) "
            f"or a fraction in (0, 1) (e.g. 0.1), got '{bad}'"
        )


def test_config_file_values_are_converted_like_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text('batch_size: "64"\ndecay_steps: "30,40"\nlr: 1e-3\nprofile_steps: [3, 5]\nbn_decay: "no"\n')
    config = config_lib.resolve(recipes.CIFAR10, ["--config", str(path)])
    assert (config.batch_size, config.decay_steps, config.decay_at, config.lr) == (64, [30, 40], None, 0.001)
    assert (config.profile_steps, config.bn_decay) == ("3,5", False)
    path.write_text("decay_epochs: 30\nwarmup_epochs: null\n")  # YAML reads a one-item list as a number
    config = config_lib.resolve(recipes.IMAGENET, ["--config", str(path)])
    assert (config.decay_epochs, config.warmup_epochs) == ([30], None)
    (tmp_path / "c.json").write_text(json.dumps({"decay-at": [0.5, 0.75], "epochs": 3}))
    config = config_lib.resolve(recipes.IMAGENET, ["--config", str(tmp_path / "c.json")])
    assert (config.decay_at, config.epochs, config.steps) == ([0.5, 0.75], 3, None)


@pytest.mark.parametrize(
    "text, problem",
    [
        ('batch_size: "64"\nepochs: two\n', "field epochs: expected a number, got 'two'"),
        ("batch_size: 6.5\n", "field batch_size: expected a whole number, got 6.5"),
        ("batch_size: [64]\n", "field batch_size: expected a whole number, got [64]"),
        ('decay_steps: "30,x"\n', "field decay_steps: expected numbers separated by commas, e.g. 30,60,80, got '30,x'"),
        ("augment: flp\n", "field augment: expected one of cifar, pad_crop, scale, inception, flip_scale, flip, "
         "none, got 'flp'; did you mean flip?"),
        ("model: null\n", "field model: expected a value, got null (this setting cannot be left unset)"),
        ("epoch: 3\n", "field epoch: unknown setting; did you mean epochs?"),
        ("learning_rate: 0.1\nnum_epochs: 3\n", "field learning_rate: unknown setting; did you mean lr?; "
         "field num_epochs: unknown setting; did you mean epochs?"),
        ("weight-decay: 0.1\nweightDecay: 1\nwd: 1\n",
         "field weightDecay: unknown setting; did you mean weight_decay?; "
         "field wd: unknown setting; did you mean weight_decay?"),
        ("nonsense: 1\n", "field nonsense: unknown setting; see --help for the settings"),
        ("batch_size: [64\nepochs: 3\n", "not valid YAML: expected ',' or ']', but got ':' at line 2, column 7"),
        ("- epochs: 3\n", "expected a mapping of settings (e.g. 'epochs: 90' or {\"epochs\": 90}), got list"),
    ],
)  # fmt: skip
def test_bad_config_file_values_say_which_field_and_what_is_expected(tmp_path, capsys, text, problem):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    line = refused(recipes.CIFAR10, ["--config", str(path)], capsys)
    assert line == f"python -m trainers.cifar10: error: --config {path}: {problem}"


def test_malformed_json_and_a_missing_file(tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text('{"batch_size": 64,}')
    assert refused(recipes.CIFAR10, ["--config", str(path)], capsys).endswith(
        f"--config {path}: not valid JSON: Expecting property name enclosed in double quotes at line 1, column 19"
    )
    assert refused(recipes.CIFAR10, ["--config", str(tmp_path / "nope.yaml")], capsys).endswith(
        f"--config {tmp_path / 'nope.yaml'}: no such file"
    )


def test_an_unknown_flag_suggests_the_field(capsys):
    assert refused(recipes.CIFAR10, ["--learning-rate", "0.1"], capsys).endswith(
        "error: unrecognized arguments: --learning-rate 0.1; did you mean --lr?"
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-size", "0"], "--batch-size 0: must be at least 1 (e.g. --batch-size 128)"),
        (["--epochs", "0"], "--epochs 0.0: must be greater than 0 (e.g. --epochs 90)"),
        (["--lr", "-0.1"], "--lr -0.1: must be greater than 0 (e.g. --lr 0.1)"),
        (["--steps", "0"], "--steps 0: must be at least 1 (e.g. --steps 64000)"),
        (["--steps-per-loop", "0"], "--steps-per-loop 0: must be at least 1"),
        (["--image-size", "4"], "--image-size 4: must be at least 8 (CIFAR uses 32, ImageNet 224)"),
        (["--num-classes", "0"], "--num-classes 0: must be at least 1"),
        (["--label-smoothing", "1"], "--label-smoothing 1.0: must be in [0, 1) (e.g. 0.1; 0 turns it off)"),
        (["--random-erasing", "1.5"], "--random-erasing 1.5: a probability: must be in [0, 1] (e.g. 0.5; 0 turns"),
        (["--task", "detection", "--augment", "flip", "--random-erasing", "0.5"], "--random-erasing 0.5: "
         "classification only"),
        (["--decay-at", "50,75"], "--decay-at 50,75: fractions of the run must be in (0, 1), e.g. 0.5,0.75"),
        (["--decay-epochs", "60,30"], "--decay-epochs 60,30: boundaries must increase"),
        (["--gpus", "2", "--cpu-replicas", "2"], "--gpus and --cpu-replicas are exclusive"),
        (["--cpu-replicas", "3"], "--batch-size 128 does not divide evenly over --cpu-replicas 3"),
        (["--data", "imagenet"], "--data imagenet: unknown data spec; valid forms: tfds:NAME, tfrecord:DIR"),
        (["--data", "folder"], "did you mean folder:DIR?"),
        (["--profile-steps", "5,2"], "--profile-steps 5,2: expected A,B with 1 <= A <= B"),
        (["--augment", "flip"], "--augment flip: detection's; classification takes cifar, pad_crop, scale, inception"),
        (["--schedule", "cosin"], "--schedule: expected one of step, cosine, got 'cosin'; did you mean cosine?"),
        (["--model", "resnet21"], "--model resnet21: did you mean resnet20 or resnet18? Unknown model 'resnet21'"),
        (["--model", "resnt56"], "--model resnt56: did you mean resnet56"),
        (["--shortcut", "D"], "--shortcut D: Unknown shortcut 'D'. Valid choices: 'A', 'B', 'C'."),
        (["--model", "plain20", "--shortcut", "B"], "--shortcut B: plain20 is a plain network: it has no shortcuts"),
        (["--variant", "v3"], "argument --variant: expected one of v1, v1.5, v2, got 'v3'"),
        (["--flip-test", "--ten-crop"], "--flip-test and --ten-crop: the 10 crops include the mirror images"),
        (["--task", "detection", "--augment", "flip", "--flip-test"], "--flip-test: test-time averaging is for "
         "classification"),
    ],
)  # fmt: skip
def test_settings_that_cannot_work_are_refused_naming_the_flag(capsys, argv, message):
    assert message in refused(recipes.CIFAR10, argv, capsys)


def test_validate_checks_a_config_built_in_code():
    config_lib.validate(config_lib.Config(epochs=1))
    with pytest.raises(config_lib.ConfigError, match=r"--batch-size '64': expected a whole number"):
        config_lib.validate(config_lib.Config(epochs=1, batch_size="64"))
    with pytest.raises(config_lib.ConfigError, match=r"say how long to train: --epochs N or --steps N"):
        config_lib.validate(config_lib.Config())
    with pytest.raises(config_lib.ConfigError, match=r"--mean rgbb: expected one of per_pixel, rgb, none") as error:
        config_lib.validate(config_lib.Config(steps=1, mean="rgbb"))
    assert error.value.field == "mean"


def test_a_bad_value_from_the_config_file_says_so(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("batch_size: 0\n")
    assert refused(recipes.CIFAR10, ["--config", str(path)], capsys).endswith(
        f"--batch-size 0: must be at least 1 (e.g. --batch-size 128) (set in --config {path})"
    )


@pytest.mark.parametrize("recipe", [recipes.CIFAR10, recipes.IMAGENET, recipes.DIGITS_DEMO, recipes.DETECTION])
def test_help_shows_each_default_once(recipe):
    text = config_lib.parser(recipe, "prog", "description").format_help()
    blocks = re.split(r"\n(?=  -)", text.split("options:", 1)[1])
    flags = [block for block in blocks if block.strip().startswith("--") and not block.strip().startswith("--config")]
    assert len(flags) == len(dataclasses.fields(config_lib.Config))
    for block in flags:
        assert " ".join(block.split()).count("(default:") == 1, block
    flat = " ".join(text.split())
    assert "(default: None)" not in flat
    assert "(default: runs/<recipe>-<model>-<data>-<hash of the settings>)" in flat
    assert f"(default: {recipe['model']})" in flat and f"(default: {recipe['batch_size']})" in flat


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
