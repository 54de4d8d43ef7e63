"""The engine in process, on tiny synthetic or generated data: the numbers it reports are the true ones."""

import dataclasses
import json
import os
import pathlib
import shutil
import signal
import threading
import time
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf
from events import scalars

import trainers
from trainers import config as config_lib
from trainers import data, logs, loop, recipes, run_dir
from trainers.config import Config
from trainers.tasks import Task, classification

TRAIN = 1024  # synthetic training examples
BATCH = 64
STEPS_PER_EPOCH = TRAIN // BATCH


def tiny(tmp_path, name="run", **overrides):
    values = dict(
        recipes.CIFAR10,
        model="resnet8",  # the 6n+2 family's smallest: a third of resnet20's tracing time, the same code
        data="synthetic",
        image_size=8,
        batch_size=BATCH,
        epochs=None,
        steps=2,
        model_dir=str(tmp_path / name),
        export=False,
        progress=False,
        log_steps=1,
    )
    values.update(overrides)
    return Config(**values)


def weights(trainer):
    return [v.numpy() for v in trainer.model.weights]


# -- metrics ------------------------------------------------------------------------------------------


def test_top_k_breaks_ties_instead_of_counting_them():
    labels = tf.constant([0, 3, 9, 2])
    flat = tf.zeros([4, 10])  # an untrained model: every class tied
    assert float(classification.top_k_hits(labels, flat, 5)) == 3  # labels 0, 3 and 2: the first five ids, not all ten
    assert float(classification.top_k_hits(labels, flat, 1)) == 1
    scores = tf.constant([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]])
    assert float(classification.top_k_hits(tf.constant([1, 2]), scores, 1)) == 1
    assert float(classification.top_k_hits(tf.constant([1, 2]), scores, 2)) == 2


def test_ten_crop_scores_keep_underflowed_classes_apart():
    logits = np.full((10, 2, 10), -1000.0, np.float32)  # crop-major: 10 crops of 2 images
    logits[:, :, 0] = 0.0  # class 0 certain; exp(-1000) underflows to 0 for the rest
    logits[:, 0, 7] = -200.0  # image 0: class 7 a distant second
    logits[:, 1, 4] = -300.0  # image 1: class 4 a distant second
    scores = classification.mean_crop_log_probabilities(tf.reshape(logits, [20, 10]), 10)
    assert np.isfinite(scores.numpy()).all()
    hits = classification.top_k_hits(tf.constant([7, 7]), scores, 5)
    assert float(hits) == 1  # only image 0 has class 7 among its top five
    np.testing.assert_allclose(scores.numpy()[:, 0], 0.0, atol=1e-6)


def test_logits_are_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = classification.build_model(Config(model="resnet20", image_size=8), 10)
    assert model.get_layer("predictions").compute_dtype == "float32"
    assert model.get_layer("conv1_conv").compute_dtype == "bfloat16"
    # Two classes whose logits differ below bf16's resolution are still told apart.
    out = model(np.zeros((1, 8, 8, 3), np.float32))
    assert out.dtype == "float32"


# -- data statistics ----------------------------------------------------------------------------------


def test_per_pixel_mean_samples_every_class(tmp_path, monkeypatch):
    """A capped sample of a folder in class order must not be the first classes' mean."""
    colours = {"a_red": (255, 0, 0), "b_green": (0, 255, 0), "c_blue": (0, 0, 255)}
    for name, colour in colours.items():
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(30):
            pixels = np.broadcast_to(np.array(colour, np.uint8), (8, 8, 3))
            (tmp_path / "images" / name / f"{i:02d}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    config = Config(data=f"folder:{tmp_path / 'images'}", image_size=8, validation_split=9, mean="per_pixel")
    source = data.open_source(config.data, validation_split=9)
    full = classification.compute_mean(config, source)
    assert source.bad_images.seen == 0  # a statistics pass is not a training epoch: it counts nothing
    true = np.zeros(3)
    for name, colour in colours.items():
        kept = sum(str(p).split("/")[-2] == name for p in source._files["train"][0])
        true += np.array(colour) * kept / 81
    np.testing.assert_allclose(full.mean(axis=(0, 1)), true, atol=0.01)  # the whole split: exact
    monkeypatch.setattr(classification, "MEAN_IMAGES", 27)
    sample = classification.compute_mean(config, source).mean(axis=(0, 1))
    assert np.all(np.abs(sample - true) < 50), sample  # in class order it was [255, 51, 0]


# -- resume and rerun ---------------------------------------------------------------------------------


def test_a_diverged_run_stops_naming_the_step_and_saves_no_nan_weights(tmp_path):
    """Two steps at lr 0.01, then 1e12 sends the weights to NaN/inf: the loop stops at the end of the device
    loop that did it, says what to change, and saves nothing after the last finite checkpoint (step 2)."""
    config = tiny(tmp_path, steps=12, lr=1e12, warmup_lr=0.01, warmup_lr_steps=2, decay_at=None, steps_per_loop=2,
                  checkpoint_steps=2)  # fmt: skip
    with pytest.raises(loop.Diverged, match=r"training diverged by step (4|6): .* Lower --lr \(now 1e\+12") as error:
        loop.Loop(config).fit()
    assert "the last checkpoint, " in str(error.value) and "-2, is from before it" in str(error.value)
    saved = tf.train.latest_checkpoint(config.model_dir + "/checkpoints")
    assert saved.endswith("-2")
    for name, _ in tf.train.list_variables(saved):
        value = tf.train.load_variable(saved, name)
        if np.issubdtype(np.asarray(value).dtype, np.floating):
            assert np.isfinite(value).all(), name


def test_a_crash_in_the_epoch_end_evaluation_is_redone_on_resume(tmp_path):
    steps = 2 * STEPS_PER_EPOCH
    reference = loop.Loop(tiny(tmp_path, "reference", steps=steps)).fit()

    config = tiny(tmp_path, steps=steps, checkpoint_steps=STEPS_PER_EPOCH)  # one falls on the boundary
    crashing = loop.Loop(config)

    def crash():
        raise RuntimeError("evaluation crashed")

    crashing.evaluate = crash
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        crashing.fit()
    assert tf.train.latest_checkpoint(config.model_dir + "/checkpoints").endswith(f"-{STEPS_PER_EPOCH}")

    resumed = loop.Loop(dataclasses.replace(config)).fit()
    # Epoch 2's running totals start from zero, not from the crashed epoch's.
    assert resumed["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-4)
    assert resumed["train_top1"] == pytest.approx(reference["train_top1"], rel=1e-4)
    # Epoch 1's evaluation happened after all, and was logged once, at its step.
    ours = scalars(tmp_path / "run" / "logs" / "validation", "loss")
    theirs = scalars(tmp_path / "reference" / "logs" / "validation", "loss")
    assert sorted(ours) == sorted(theirs) == [STEPS_PER_EPOCH, steps]
    assert ours[STEPS_PER_EPOCH] == pytest.approx(theirs[STEPS_PER_EPOCH], rel=1e-4)


def test_sigterm_during_the_epoch_end_evaluation_stops_it_and_the_rerun_evaluates_again(tmp_path):
    """A preemption's grace period is seconds: the loop does not finish a long evaluation first. It saves the
    step, unevaluated, exits 143, and the rerun evaluates that epoch as an uninterrupted run did."""
    steps = 2 * STEPS_PER_EPOCH
    reference = loop.Loop(tiny(tmp_path, "reference", steps=steps, steps_per_loop=1)).fit()

    config = tiny(tmp_path, steps=steps, steps_per_loop=1)  # the evaluation runs in 4 chunks of a batch
    stopped = loop.Loop(config)
    eval_loop, chunks = stopped._eval_loop, []

    def then_sigterm(*args):
        chunks.append(1)
        if len(chunks) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return eval_loop(*args)

    stopped._eval_loop = then_sigterm
    with pytest.raises(loop.Interrupted, match=f"SIGTERM: interrupted at step {STEPS_PER_EPOCH}") as stop:
        stopped.fit()
    assert stop.value.exit_code == 143 and len(chunks) == 1  # not the 4 the whole evaluation takes
    assert checkpoint_step(config.model_dir) == STEPS_PER_EPOCH
    assert not scalars(tmp_path / "run" / "logs" / "validation", "loss")

    resumed = loop.Loop(dataclasses.replace(config)).fit()
    assert resumed["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-4)
    ours = scalars(tmp_path / "run" / "logs" / "validation", "loss")
    theirs = scalars(tmp_path / "reference" / "logs" / "validation", "loss")
    assert sorted(ours) == sorted(theirs) == [STEPS_PER_EPOCH, steps]
    assert ours[STEPS_PER_EPOCH] == pytest.approx(theirs[STEPS_PER_EPOCH], rel=1e-4)


def test_the_final_evaluation_is_the_last_epochs(tmp_path):
    trainer = loop.Loop(tiny(tmp_path, steps=2 * STEPS_PER_EPOCH))
    calls = []
    evaluate = trainer.evaluate
    trainer.evaluate = lambda: calls.append(1) or evaluate()
    result = trainer.fit()
    assert len(calls) == 2  # once per epoch, not a third time at the end
    assert result["validation"]["loss"] == pytest.approx(result["val_loss"])
    # Rerunning a finished run trains nothing and evaluates once.
    again = loop.Loop(tiny(tmp_path, steps=2 * STEPS_PER_EPOCH))
    again_calls = []
    evaluate = again.evaluate
    again.evaluate = lambda: again_calls.append(1) or evaluate()
    assert again.fit()["validation"]["loss"] == pytest.approx(result["val_loss"], rel=1e-5)
    assert len(again_calls) == 1


def test_a_rerun_with_other_settings_is_refused_not_resumed(tmp_path):
    loop.Loop(tiny(tmp_path)).fit()
    saved = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(ValueError, match=r"other settings \(lr: 0\.1 -> 0\.05; seed: 0 -> 3\)"):
        loop.Loop(tiny(tmp_path, lr=0.05, seed=3))
    assert (tmp_path / "run" / "config.json").read_text() == saved  # untouched
    # Where files go and how often to log may change: that is the same run.
    loop.Loop(tiny(tmp_path, log_steps=5, keep_checkpoints=1, export_dir=str(tmp_path / "elsewhere")))


def test_init_from_starts_the_network_from_another_runs_weights_and_the_rest_afresh(tmp_path):
    first = loop.Loop(tiny(tmp_path, "first"))
    first.fit()
    trained = weights(first)
    second = loop.Loop(tiny(tmp_path, "second", init_from=str(tmp_path / "first"), lr=0.05))
    assert second.kept_initialisation == []
    assert all(np.array_equal(a, b) for a, b in zip(trained, weights(second), strict=True))
    assert int(second.step.numpy()) == 0 and int(second.optimizer.iterations.numpy()) == 0
    fresh = loop.Loop(tiny(tmp_path, "fresh", lr=0.05))
    assert not all(np.array_equal(a, b) for a, b in zip(trained, weights(fresh), strict=True))

    # Another number of classes: everything but the classifier is copied, which keeps its initialisation.
    other = loop.Loop(tiny(tmp_path, "other", init_from=str(tmp_path / "first"), num_classes=5))
    assert other.kept_initialisation == ["predictions"]
    for layer in other.model.layers:
        if layer.weights and layer.name != "predictions":
            source = first.model.get_layer(layer.name).get_weights()
            assert all(np.array_equal(a, b) for a, b in zip(source, layer.get_weights(), strict=True))

    # A resume takes the run's own checkpoint and never reads --init-from again (here: gone).
    second.fit()
    own = weights(second)
    shutil.rmtree(tmp_path / "first" / "checkpoints")
    again = loop.Loop(tiny(tmp_path, "second", init_from=str(tmp_path / "first"), lr=0.05))
    again.fit()
    assert all(np.array_equal(a, b) for a, b in zip(own, weights(again), strict=True))


def test_init_from_what_is_not_a_run_of_the_same_network_is_refused_by_name(tmp_path):
    loop.Loop(tiny(tmp_path, "first")).fit()
    with pytest.raises(
        ValueError,
        match=r"--init-from .*first: a classification run of resnet8; give a "
        r"classification run of resnet14",
    ):
        loop.Loop(tiny(tmp_path, "deeper", model="resnet14", init_from=str(tmp_path / "first")))
    with pytest.raises(ValueError, match=r"nowhere has no config.json: it is not a trainer's --model-dir"):
        loop.Loop(tiny(tmp_path, "lost", init_from=str(tmp_path / "nowhere")))
    shutil.rmtree(tmp_path / "first" / "checkpoints")
    with pytest.raises(ValueError, match=r"--init-from .*first: no checkpoint in"):
        loop.Loop(tiny(tmp_path, "early", init_from=str(tmp_path / "first")))


def test_init_from_an_export_starts_from_the_exported_weights(tmp_path):
    from trainers.export import export_model_dir

    first = loop.Loop(tiny(tmp_path, "first"))
    first.fit()
    trained = weights(first)
    version = export_model_dir(str(tmp_path / "first"), str(tmp_path / "exported"), name="tiny")
    for path in (str(version), str(tmp_path / "exported" / "tiny")):  # a version, or the newest of a model's
        second = loop.Loop(tiny(tmp_path, f"second{len(path)}", init_from=path))
        assert second.kept_initialisation == []
        assert all(np.array_equal(a, b) for a, b in zip(trained, weights(second), strict=True))
        assert int(second.step.numpy()) == 0
    with pytest.raises(ValueError, match=r"--init-from .*1: an export of resnet8; give an export \(or a run\) of"):
        loop.Loop(tiny(tmp_path, "deeper", model="resnet14", init_from=str(version)))


def test_a_detector_backbone_takes_a_classification_runs_weights_by_layer_name(tmp_path):
    import keras_resnet

    source = loop.Loop(tiny(tmp_path, "classifier"))
    source.fit()
    backbone = keras_resnet.build("resnet8", include_top=False, input_shape=(None, None, 3))
    kept = run_dir.RunDir(str(tmp_path / "classifier")).copy_weights_into(backbone, "resnet8", "--backbone-weights")
    assert kept == []
    for layer in backbone.layers:
        if layer.weights:
            expected = source.model.get_layer(layer.name).get_weights()
            assert all(np.array_equal(a, b) for a, b in zip(expected, layer.get_weights(), strict=True))


def test_the_default_model_dir_is_named_after_the_settings():
    base = tiny(pathlib.Path("unused"), model_dir=None)
    name = run_dir.default_model_dir("cifar10", base)
    assert name.startswith("runs/cifar10-resnet8-synthetic-")
    assert run_dir.default_model_dir("cifar10", dataclasses.replace(base, lr=0.05)) != name
    assert run_dir.default_model_dir("cifar10", dataclasses.replace(base, seed=1)) != name
    assert run_dir.default_model_dir("cifar10", dataclasses.replace(base, log_steps=7, progress=True)) == name
    assert config_lib.differences(base, dataclasses.replace(base, export_dir="x", cpu_replicas=2)) == []
    assert run_dir.default_model_dir("cifar10", dataclasses.replace(base, random_erasing=0.5)) != name


def test_a_setting_added_later_does_not_move_an_older_commands_run_dir():
    # The name this command had before --init-from and --random-erasing existed: rerunning it still resumes.
    config = Config(model="resnet8", data="synthetic", steps=2)
    assert run_dir.default_model_dir("cifar10", config) == "runs/cifar10-resnet8-synthetic-626b9914"


# -- fp16 ---------------------------------------------------------------------------------------------


def test_fp16_skipped_steps_do_not_move_the_schedule_off_the_updates(tmp_path):
    config = tiny(tmp_path, precision="fp16", steps=6, decay_steps=[3], decay_at=None, loss_scale=2.0**40)
    trainer = loop.Loop(config)  # a loss scale that overflows for the first few steps
    result = trainer.fit()
    skipped = int(trainer.skipped.numpy())
    assert skipped > 0, "the test needs at least one overflow"
    updates = int(trainer.optimizer.iterations.numpy())
    assert result["step"] == updates == 6  # six updates, however many batches it took
    assert int(trainer.batches.numpy()) == 6 + skipped
    logged = scalars(tmp_path / "run" / "logs" / "train", "learning_rate")
    for step, lr in logged.items():  # the lr logged at a step is the one its update used
        assert lr == pytest.approx(0.05 if step <= 3 else 0.005), (step, lr)
    assert scalars(tmp_path / "run" / "logs" / "train", "skipped_steps")


def test_xla_with_sync_bn_on_several_replicas_is_refused_before_any_work(tmp_path):
    config = tiny(tmp_path, xla=True, sync_bn=True, cpu_replicas=2)
    with pytest.raises(ValueError, match=r"--xla with --sync-bn on 2 replicas: .* Drop --xla or --sync-bn"):
        loop.Loop(config)
    assert not (tmp_path / "run").exists()


# -- device loops and preemption ----------------------------------------------------------------------


def checkpoint_step(model_dir):
    path = tf.train.latest_checkpoint(str(pathlib.Path(model_dir) / "checkpoints"))
    return int(tf.train.load_variable(path, "step/.ATTRIBUTES/VARIABLE_VALUE"))


def test_steps_per_loop_changes_nothing_and_sigterm_mid_epoch_resumes_exactly(tmp_path):
    """Runs of 8 steps per device loop, stopped by SIGTERM at a step inside the 8-step grid and resumed,
    train the same weights as one uninterrupted run of single steps: the signal saves at the last
    completed step, and the rerun continues from exactly there."""
    steps = STEPS_PER_EPOCH + 4  # into the second epoch
    one = loop.Loop(tiny(tmp_path, "one", steps=steps, steps_per_loop=1, log_steps=1000))
    one.fit()

    config = tiny(tmp_path, "stopped", steps=steps, steps_per_loop=8, checkpoint_steps=5, log_steps=1000)
    stopped = loop.Loop(config)
    train_loop, calls = stopped._train_loop, []

    def then_sigterm(*args):
        done = train_loop(*args)
        calls.append(1)
        if len(calls) == 2:  # steps 1-5, then 6-10: the signal arrives during the second loop
            os.kill(os.getpid(), signal.SIGTERM)
        return done

    stopped._train_loop = then_sigterm
    with pytest.raises(loop.Interrupted, match="SIGTERM: interrupted at step 10") as stop:
        stopped.fit()
    assert stop.value.exit_code == 143 and checkpoint_step(config.model_dir) == 10
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the run
    resumed = loop.Loop(dataclasses.replace(config))
    assert resumed.fit()["step"] == steps
    # 11-15 (to the checkpoint step), 16 (the epoch's end), then 8 at a time.
    assert [images // BATCH for _, images, _ in resumed.timings] == [5, 1, 4]
    for a, b in zip(weights(one), weights(resumed), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


class Regression(Task):
    """A toy task defined outside the package: fit y = x . w with a Dense layer, mean squared error."""

    metric_names = ("squared_error",)
    true_w = np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32)

    def examples(self, split):
        return 256

    def build_model(self):
        inputs = keras.Input((4,), name="x")  # a float32 output, as Task.build_model asks (bf16 where auto picks it)
        return keras.Model(inputs, keras.layers.Dense(1, use_bias=False, dtype="float32", name="w")(inputs))

    def dataset(self, split, *, epoch=0, skip_batches=0, input_context=None):
        x = np.random.default_rng(epoch if split == "train" else 99).normal(size=(256, 4)).astype(np.float32)
        batch = (
            self.config.batch_size
            if input_context is None
            else input_context.get_per_replica_batch_size(self.config.batch_size)
        )
        return tf.data.Dataset.from_tensor_slices((x, x @ self.true_w)).batch(batch).skip(skip_batches)

    def _sums(self, model, batch, training):
        x, y = batch
        error = tf.reduce_sum(tf.square(model(x, training=training) - y), axis=1)
        count = tf.cast(tf.shape(x)[0], tf.float64)
        return tf.reduce_sum(error), tf.stack([tf.reduce_sum(tf.cast(error, tf.float64)), count])

    def train_loss(self, model, batch):
        return self._sums(model, batch, True)

    def eval_sums(self, model, batch):
        return self._sums(model, batch, False)[1]


def test_a_task_defined_outside_trains_through_the_public_api(tmp_path):
    settings = dict(batch_size=32, lr=0.2, lr_batch=32, momentum=0.0, steps=64, weight_decay=0.0, steps_per_loop=4)
    config = tiny(tmp_path, "toy", **settings)
    result = trainers.train(config, task=Regression(config), export=False)  # the public API
    assert result["step"] == 64 and result["validation"]["examples"] == 256
    assert result["validation"]["squared_error"] < 1e-3  # from about 14: it learned w
    assert checkpoint_step(config.model_dir) == 64
    saved = json.loads((tmp_path / "toy" / "result.json").read_text())
    assert saved["validation"]["squared_error"] == pytest.approx(result["validation"]["squared_error"])


class LowPrecisionRegression(Regression):
    def build_model(self):
        inputs = keras.Input((4,), name="x")
        return keras.Model(inputs, keras.layers.Dense(1, use_bias=False, name="w")(inputs), name="toy")


def test_a_model_with_bf16_outputs_is_named_before_its_loss_fails_on_the_dtype(tmp_path, caplog):
    config = tiny(tmp_path, "bf16", batch_size=32, lr_batch=32, steps=4, precision="bf16")
    with caplog.at_level("WARNING", logger="trainers"):
        loop.Loop(config, task=LowPrecisionRegression(config))
    assert "--precision bf16: toy outputs" in caplog.text and "(bfloat16)" in caplog.text
    assert 'dtype="float32"' in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="trainers"):
        loop.Loop(config, task=Regression(config))
    assert "outputs" not in caplog.text


class Listed(keras.Model):
    """Two Dense layers in a plain list: Keras trains them, tf.train.Checkpoint would not save them."""

    def __init__(self):
        super().__init__(name="listed")
        self.blocks = [keras.layers.Dense(1, use_bias=False, name=f"w{i}") for i in range(2)]

    def call(self, x, training=False):
        return self.blocks[0](x) + self.blocks[1](x)


class ListedRegression(Regression):
    def build_model(self):
        model = Listed()
        model(np.zeros((1, 4), np.float32))
        return model


def test_a_model_whose_weights_a_checkpoint_would_not_save_is_refused(tmp_path):
    config = tiny(tmp_path, "listed", batch_size=32, lr_batch=32, steps=4)
    with pytest.raises(ValueError, match=r"listed: 2 weights would be trained but never checkpointed \(.*w0"):
        loop.Loop(config, task=ListedRegression(config))


# -- what a run says ----------------------------------------------------------------------------------


def test_the_start_log_says_what_the_run_will_really_do_and_speed_has_one_definition(tmp_path, caplog):
    config = tiny(tmp_path, lr=0.05, steps=STEPS_PER_EPOCH, decay_steps=[32000, 48000], decay_at=None, log_steps=1000)
    with caplog.at_level("INFO", logger="trainers"):
        result = loop.Loop(config).fit()
    text = caplog.text
    assert "lr 0.025 (0.05 x 64/128 linear scaling)" in text  # config.json says 0.05: the log says what runs
    assert "every lr drop (32000, 48000) lies at or past the run's last step 16: the lr never decays" in text
    assert "10 classes: class_0, class_1, class_2" in text and f"{TRAIN} training, 256 validation images" in text
    # The console's and TensorBoard's images/s are one number: images over the training steps' wall time.
    logged = scalars(tmp_path / "run" / "logs" / "train", "images_per_second")
    assert logged[STEPS_PER_EPOCH] == pytest.approx(result["images_per_second"], rel=1e-6)
    assert f"{logs.rate(result['images_per_second'])} img/s" in text


def test_a_run_refused_at_set_up_leaves_no_directory(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        loop.Loop(tiny(tmp_path, data=f"folder:{tmp_path / 'missing'}"))
    with pytest.raises(ValueError, match="fewer than one batch"):
        loop.Loop(tiny(tmp_path, num_classes=3, batch_size=2048))
    assert not (tmp_path / "run").exists()


# -- spent iterators ------------------------------------------------------------------------------------


class SlowToDelete:
    """Stands in for a tf.data iterator whose destructor waits on the pipeline's autotuning thread."""

    def __init__(self, seconds, deleted_on):
        self.seconds, self.deleted_on = seconds, deleted_on

    def __del__(self):
        time.sleep(self.seconds)
        self.deleted_on.append(threading.current_thread().name)


def test_a_spent_iterator_is_deleted_off_the_main_thread_and_joined_at_the_end():
    deleted_on = []
    releaser = loop.Releaser()
    box = [SlowToDelete(1.0, deleted_on)]
    alive = weakref.ref(box[0])
    started = time.perf_counter()
    releaser.release(box)
    assert time.perf_counter() - started < 0.5  # the loop goes on while it is deleted
    releaser.join()
    assert alive() is None and deleted_on == ["release-tf-data-iterator"]
    assert releaser.threads == []


class SlowIterator(SlowToDelete):
    """An iterator over `items` whose deletion is slow, like a tf.data iterator's."""

    def __init__(self, items, seconds, deleted_on):
        super().__init__(seconds, deleted_on)
        self.items = iter(items)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.items)


@pytest.mark.parametrize("stop_after", [None, 1])
def test_a_tasks_own_evaluation_hands_its_spent_iterator_to_the_releaser(stop_after):
    """Detection's mAP evaluation iterates `Task.batches`: run to the end or stopped early (SIGTERM's
    EvaluationStopped), the iterator is deleted on the releaser's thread, not the loop's."""
    deleted_on = []
    made = []

    class Counting(Task):
        def dataset(self, split, **kwargs):
            made.append(SlowIterator([1, 2, 3], 0.5, deleted_on))
            return made[-1]

    task = Counting(None)
    task.releaser = loop.Releaser()
    alive = []
    seen = []
    started = time.perf_counter()
    for batch in task.batches("validation"):
        if not alive:
            alive.append(weakref.ref(made.pop()))
        seen.append(batch)
        if stop_after and len(seen) == stop_after:
            break
    assert time.perf_counter() - started < 0.4  # not waiting for the deletion
    assert seen == [1, 2, 3][:stop_after]
    task.releaser.join()
    assert alive[0]() is None and deleted_on == ["release-tf-data-iterator"]


def test_fit_releases_every_training_and_evaluation_iterator_it_made(tmp_path, released_iterators):
    trainer = loop.Loop(tiny(tmp_path, steps=2 * STEPS_PER_EPOCH))
    trainer.fit()
    assert len(released_iterators) == 4  # two epochs, each a training and an evaluation iterator
    assert all(ref() is None for ref in released_iterators)  # deleted, and fit waited for it
    assert trainer.releaser.threads == []


@pytest.mark.parametrize("how", ["error", "sigterm"])
def test_fit_waits_for_the_released_iterators_on_every_way_out(tmp_path, released_iterators, how):
    """A run that ends in an error or SIGTERM exits the process next: a helper thread still inside TF's
    iterator destructor then was killed in C++ (seen: "terminate called after throwing an instance of ''",
    an abort instead of the exit code). fit joins them before the exception leaves it."""
    trainer = loop.Loop(tiny(tmp_path, steps=2 * STEPS_PER_EPOCH))
    evaluate = trainer.evaluate

    def failing():
        result = evaluate()  # the evaluation's iterator is released, then the epoch's end fails
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            return result
        raise RuntimeError("disk full")

    trainer.evaluate = failing
    with pytest.raises(trainers.Interrupted if how == "sigterm" else RuntimeError):
        trainer.fit()
    assert len(released_iterators) >= 2 and all(ref() is None for ref in released_iterators)
    assert trainer.releaser.threads == []
