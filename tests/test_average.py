"""trainers.average: the averaged network is the mean of its snapshots, and its BatchNorm statistics are the
exact mean of the training batches' statistics."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_engine import tiny as engine_tiny

from trainers import average, loop
from trainers.export import export_model_dir
from trainers.run_dir import RunDir
from trainers.tasks import task_for

pytestmark = pytest.mark.usefixtures("float32_policy")  # runs set Keras' process-wide policy


def tiny(tmp_path, name="run", **overrides):
    """test_engine's tiny run, with a checkpoint a step: three snapshots."""
    return engine_tiny(tmp_path, name, **{"steps": 3, "checkpoint_steps": 1, "keep_checkpoints": 5, **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("average")
    keras.mixed_precision.set_global_policy("float32")
    loop.Loop(tiny(tmp_path)).fit()
    return tmp_path / "run"


def checkpoints(run_path):
    return list(tf.train.get_checkpoint_state(str(run_path / "checkpoints")).all_model_checkpoint_paths)


def weights_of(run_path, checkpoint=None):
    """The network of a run with `checkpoint` (default: its newest) restored, read the plain way."""
    run = RunDir(str(run_path))
    model = run.rebuild_model()
    tf.train.Checkpoint(model=model).restore(checkpoint or run.latest_checkpoint()).expect_partial()
    return model


def is_moving_statistic(variable):
    return "moving_" in variable.path


def test_the_average_of_a_runs_checkpoints_is_their_mean(trained, tmp_path, monkeypatch):
    kept = checkpoints(trained)
    assert len(kept) == 3
    monkeypatch.chdir(trained.parent)  # a relative run directory, as on the command line
    record = average.average(["run"], str(tmp_path / "mean"), bn_update=False)
    assert record["snapshots"] == [os.path.join("run", "checkpoints", os.path.basename(c)) for c in kept]
    assert record["batch_norm"]["updated"] is False
    expected = [np.mean([v.numpy() for v in group], axis=0)
                for group in zip(*[weights_of(trained, c).weights for c in kept], strict=True)]  # fmt: skip
    got = weights_of(tmp_path / "mean").weights
    assert len(got) == len(expected)
    for variable, value in zip(got, expected, strict=True):
        np.testing.assert_allclose(variable.numpy(), value, rtol=1e-6, atol=1e-7, err_msg=variable.path)
    # The snapshots differ, so their mean is none of them.
    first = weights_of(trained, kept[0]).weights
    assert any(not np.allclose(a.numpy(), b.numpy()) for a, b in zip(first, got, strict=True))

    # --last 2: the two newest only.
    average.average([str(trained)], str(tmp_path / "last2"), last=2, bn_update=False)
    last2 = [np.mean([v.numpy() for v in group], axis=0)
             for group in zip(*[weights_of(trained, c).weights for c in kept[1:]], strict=True)]  # fmt: skip
    for variable, value in zip(weights_of(tmp_path / "last2").weights, last2, strict=True):
        np.testing.assert_allclose(variable.numpy(), value, rtol=1e-6, atol=1e-7, err_msg=variable.path)


def test_batch_norm_statistics_are_the_mean_of_the_training_batches_statistics(trained, tmp_path):
    record = average.average([str(trained)], str(tmp_path / "bn"), bn_batches=3)
    assert record["batch_norm"] == {
        "updated": True, "batches": 3, "images": 192, "augment": "cifar", "random_erasing": 0.0,
    }  # fmt: skip
    averaged = weights_of(tmp_path / "bn")
    unmeasured = average.average([str(trained)], str(tmp_path / "no-bn"), bn_update=False)
    assert unmeasured["batch_norm"]["updated"] is False
    reference = weights_of(tmp_path / "no-bn")
    for a, b in zip(averaged.weights, reference.weights, strict=True):  # only the moving statistics changed
        if not is_moving_statistic(a):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)

    # The same three batches of the training pipeline, each BatchNorm layer's input in training mode (which
    # normalises with the batch's own statistics, so the moving ones play no part), the plain way.
    config = RunDir(str(trained)).read_config()
    task = task_for(config)
    task.open()
    task.mean = RunDir(str(trained)).read_normalization()["mean"]
    layers = list(average.batch_norm_layers(reference))
    assert len(layers) > 3
    probe = keras.Model(reference.inputs, [layer.input for layer in layers])
    means, variances = [], []
    for images, _ in list(task.dataset("train"))[:3]:
        inputs = probe(images - task.mean, training=True)
        means.append([np.mean(x.numpy().astype(np.float64), axis=(0, 1, 2)) for x in inputs])
        variances.append([np.var(x.numpy().astype(np.float64), axis=(0, 1, 2)) for x in inputs])
    for i, layer in enumerate(average.batch_norm_layers(averaged)):
        np.testing.assert_allclose(layer.moving_mean.numpy(), np.mean([m[i] for m in means], axis=0),
                                   rtol=1e-4, atol=1e-5, err_msg=layer.name)  # fmt: skip
        np.testing.assert_allclose(layer.moving_variance.numpy(), np.mean([v[i] for v in variances], axis=0),
                                   rtol=1e-4, atol=1e-5, err_msg=layer.name)  # fmt: skip
    for mine, theirs in zip(average.batch_norm_layers(averaged), layers, strict=True):
        assert isinstance(mine.momentum, float) and mine.momentum == theirs.momentum  # put back after the pass


@pytest.mark.usefixtures("restore_logging")
def test_an_export_and_a_checkpoint_average_and_the_result_is_scored_and_exported(trained, tmp_path, capsys):
    version = export_model_dir(str(trained), str(tmp_path / "exports"), name="tiny")  # the newest checkpoint
    oldest = checkpoints(trained)[0]
    code = average.main([str(version), oldest, "--out", str(tmp_path / "mixed"), "--no-bn-update",
                         "--export-dir", str(tmp_path / "exports"), "--export-name", "tiny"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "Averaged 2 snapshots" in printed and "Validation (256 images): top1" in printed
    assert str(tmp_path / "exports" / "tiny" / "2") in printed  # the next version of the same model name
    pairs = zip(weights_of(trained).weights, weights_of(trained, oldest).weights, strict=True)
    expected = [(a.numpy() + b.numpy()) / 2 for a, b in pairs]
    for variable, value in zip(weights_of(tmp_path / "mixed").weights, expected, strict=True):
        np.testing.assert_allclose(variable.numpy(), value, rtol=1e-6, atol=1e-7, err_msg=variable.path)
    record = json.loads((tmp_path / "mixed" / "averaged.json").read_text())
    assert record["snapshots"] == [str(version), oldest]
    from trainers.evaluate import evaluate

    assert record["validation"]["top1"] == evaluate(str(tmp_path / "mixed"))["top1"]
    served = tf.saved_model.load(str(tmp_path / "exports" / "tiny" / "2"))
    assert "serve_image_bytes" in served.signatures

    # It is no training to resume, but a start for one.
    with pytest.raises(ValueError, match=r"mixed holds an average of snapshots .* --init-from .*mixed and another"):
        loop.Loop(tiny(tmp_path, "mixed"))
    again = loop.Loop(tiny(tmp_path, "on", init_from=str(tmp_path / "mixed")))
    assert again.kept_initialisation == []
    for a, b in zip(again.model.weights, weights_of(tmp_path / "mixed").weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


@pytest.mark.usefixtures("restore_logging")  # main() sets up logging as the command line does
def test_what_cannot_be_averaged_is_refused_by_name(trained, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"1 snapshot in .*: averaging needs two or more"):
        average.average([checkpoints(trained)[0]], str(tmp_path / "one"))
    with pytest.raises(ValueError, match=r"nowhere: not a run directory \(config.json\), a checkpoint"):
        average.average([str(tmp_path / "nowhere"), str(trained)], str(tmp_path / "x"))
    loop.Loop(tiny(tmp_path, "deeper", model="resnet14", steps=1)).fit()
    with pytest.raises(ValueError, match=r"deeper/checkpoints/ckpt-1 has model 'resnet14', .* 'resnet8'"):
        average.average([str(trained), str(tmp_path / "deeper")], str(tmp_path / "y"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("work")
    with pytest.raises(ValueError, match=r"--out .*full exists and is not empty"):
        average.average([str(trained)], str(tmp_path / "full"))
    assert (tmp_path / "full" / "keep.txt").read_text() == "work"
    assert average.main([str(trained), "--out", str(tmp_path / "z"), "--data", "digits"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: digits:") and "Traceback" not in error  # the data's own check, no traceback
    assert average.main([str(trained), "--out", str(tmp_path / "z"), "--last", "0"]) == 2
    assert "--last 0: give 1 or more" in capsys.readouterr().err
