"""One custom training loop for every strategy (Mirrored, MultiWorkerMirrored, TPU).

Keras 3.15's `model.fit` breaks under MultiWorkerMirroredStrategy (keras-team/keras#20585), so
this is the Model Garden's shape: `strategy.run` + `GradientTape` + a Keras optimizer.
"""

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

import keras_resnet
from trainers import config as config_lib
from trainers import data, replicas, schedules
from trainers.logs import Board, log
from trainers.strategy import make_strategy

POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
IMAGENET_MEAN = np.array([123.68, 116.78, 103.94], np.float32)  # Model Garden's RGB means
MEAN_IMAGES = 50_000  # the whole training split of CIFAR; a shuffled sample of bigger ones


def default_model_dir(recipe_name, config):
    """Deterministic, so rerunning the same command resumes; other training settings, another dir."""
    fields = json.dumps(config_lib.training_fields(config), sort_keys=True, default=str)
    digest = hashlib.sha256(fields.encode()).hexdigest()[:8]
    data_name = config.data.replace(":", "_").replace("/", "_")
    return os.path.join("runs", f"{recipe_name}-{config.model}-{data_name}-{digest}")


def compute_mean(config, source):
    """The paper's per-pixel mean (CIFAR) or the ImageNet RGB means; kept in model_dir for resume/export."""
    if config.mean == "none":
        return np.zeros((3,), np.float32)
    if config.mean == "rgb":
        return IMAGENET_MEAN
    images = source.dataset(
        "train",
        global_batch_size=256,
        image_size=config.image_size,
        augment="none",
        training=False,
        shuffle=True,  # a sample of a big split must hold every class, not the first few folders
        count_bad=False,  # the training epochs count bad images; this pass would count them again
        seed=config.seed,
    )
    total, count = 0.0, 0
    for batch, _ in images:
        total = total + tf.reduce_sum(batch, axis=0).numpy().astype(np.float64)
        count += int(batch.shape[0])
        if count >= MEAN_IMAGES:
            break
    if not count:
        raise data.DataError(f"{config.data}: no readable training images to compute the mean from.")
    return (total / count).astype(np.float32)


def build_model(config, num_classes):
    """The network with a float32 classifier: logits are ranked for top-k, and bf16 would round them."""
    base = keras_resnet.build(
        config.model,
        include_top=False,
        pooling="avg",
        input_shape=(config.image_size, config.image_size, 3),
        shortcut=config.shortcut,
        variant=config.variant,
        zero_init_residual=config.zero_init_residual,
    )
    logits = keras.layers.Dense(num_classes, kernel_initializer="he_normal", dtype="float32", name="predictions")
    model = keras.Model(base.input, logits(base.output), name=base.name)
    if config.sync_bn:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
    return model


def decayed(model, config):
    """Variables under weight decay: all, or (--no-bn-decay) conv/dense kernels only."""
    if config.bn_decay:
        return list(model.trainable_variables)
    return [v for v in model.trainable_variables if len(v.shape) > 1]


class Trainer:
    def __init__(self, config, recipe_name="train"):
        if config.precision == "auto":
            config.precision = "fp32"  # replaced by trainers.hardware's choice
        self.config = config
        _refuse_xla_with_sync_bn(config, config.gpus or config.cpu_replicas or 1)
        self.strategy = make_strategy(config.gpus, config.cpu_replicas)  # before anything touches TF devices
        keras.mixed_precision.set_global_policy(POLICIES[config.precision])
        keras.utils.set_random_seed(config.seed)
        replicas_n = self.strategy.num_replicas_in_sync
        _refuse_xla_with_sync_bn(config, replicas_n)
        if config.batch_size % replicas_n:
            raise ValueError(f"--batch-size {config.batch_size} must divide evenly over {replicas_n} replicas.")
        self.model_dir = config.model_dir or default_model_dir(recipe_name, config)
        config.model_dir = self.model_dir
        self.chief = _is_chief(self.strategy)
        os.makedirs(self.model_dir, exist_ok=True)
        self.source = data.open_source(
            config.data,
            data_dir=config.data_dir,
            validation_split=config.validation_split,
            num_classes=config.num_classes,
            seed=config.seed,
            download=config.download,
        )
        self.source.bad_images.early_stop = not self.strategy.extended._in_multi_worker_mode()
        self.num_classes = config.num_classes or self.source.num_classes
        self.steps_per_epoch = self.source.num_examples("train") // config.batch_size
        if self.steps_per_epoch < 1:
            raise data.DataError(
                f"{config.data} has {self.source.num_examples('train')} training images, fewer than one "
                f"batch of {config.batch_size}: lower --batch-size or add data."
            )
        self.profile = _profile_range(config.profile_steps)  # refuse a bad range before any work
        if config.steps is None and config.epochs is None:
            raise ValueError("Say how long to train: --epochs N or --steps N.")
        self.total_steps = int(config.steps or round(config.epochs * self.steps_per_epoch))
        self.checkpoint_dir = os.path.join(self.model_dir, "checkpoints")
        self._save_config()
        self.mean = self._mean()
        with self.strategy.scope():
            self.model = build_model(config, self.num_classes)
            self.schedule = schedules.from_config(config, self.steps_per_epoch, self.total_steps)
            optimizer = keras.optimizers.SGD(self.schedule, momentum=config.momentum)
            if config.precision == "fp16":
                scale = {} if config.loss_scale is None else {"initial_scale": config.loss_scale}
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer, **scale)
            optimizer.build(self.model.trainable_variables)
            self.optimizer = optimizer
            # Updates applied: the schedule's step (an fp16 step skipped for overflow applies none).
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            # Where the data stands: batches taken, so an epoch and a resume are positions in the data.
            self.batches = tf.Variable(0, dtype=tf.int64, trainable=False, name="batches")
            # The batch position whose end-of-epoch evaluation is done (a crash in between redoes it).
            self.evaluated_at = tf.Variable(0, dtype=tf.int64, trainable=False, name="evaluated_at")
            self.skipped = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_steps")  # fp16 overflows
            # loss sum, top-1 and top-5 hits, examples so far this epoch: a mid-epoch resume keeps them.
            self.epoch_totals = tf.Variable(tf.zeros(4, tf.float64), trainable=False, name="epoch_totals")
        self.decayed = decayed(self.model, config)
        self.moving_statistics = replicas.moving_statistics(self.model)
        self.checkpoint = tf.train.Checkpoint(
            model=self.model,
            optimizer=self.optimizer,
            step=self.step,
            batches=self.batches,
            evaluated_at=self.evaluated_at,
            skipped=self.skipped,
            epoch_totals=self.epoch_totals,
        )
        # Every worker saves (MultiWorkerMirrored needs all of them to); only the chief's copy is kept.
        own_dir = (
            self.checkpoint_dir if self.chief else os.path.join(self.model_dir, f".worker-{_task_id(self.strategy)}")
        )
        self.manager = tf.train.CheckpointManager(self.checkpoint, own_dir, max_to_keep=config.keep_checkpoints)
        self.board = Board(os.path.join(self.model_dir, "logs")) if self.chief else None
        self._train_step = self._make_train_step()
        self._eval_step = self._make_eval_step()

    # -- set-up ---------------------------------------------------------------------------------------
    def _save_config(self):
        """Writes config.json; refuses to resume checkpoints trained under other settings."""
        path = os.path.join(self.model_dir, "config.json")
        effective = dataclasses.replace(self.config, num_classes=self.num_classes)
        if os.path.exists(path) and tf.train.latest_checkpoint(self.checkpoint_dir):
            changed = config_lib.differences(config_lib.read(path), effective)
            if changed:
                raise ValueError(
                    f"{self.model_dir} holds checkpoints trained with other settings ({'; '.join(changed)}). "
                    "Resuming them would mix two runs. Rerun with the saved settings to resume, or pass "
                    "another --model-dir (or none: the default one is named after the settings)."
                )
        if self.chief:
            config_lib.save(effective, path)

    def _mean(self):
        path = os.path.join(self.model_dir, "normalization.npz")
        if os.path.exists(path) and tf.train.latest_checkpoint(self.checkpoint_dir):
            return np.load(path)["mean"]
        mean = compute_mean(self.config, self.source)
        if self.chief:
            np.savez(path, mean=mean, class_names=np.array(self.source.class_names[: self.num_classes]))
        return mean

    # -- steps ----------------------------------------------------------------------------------------
    def _loss(self, labels, logits):
        logits = tf.cast(logits, tf.float32)
        if self.config.label_smoothing:
            eps = self.config.label_smoothing
            targets = tf.one_hot(labels, self.num_classes) * (1 - eps) + eps / self.num_classes
            return tf.nn.softmax_cross_entropy_with_logits(targets, logits)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)

    def _hits(self, labels, scores):
        return top_k_hits(labels, scores, 1), top_k_hits(labels, scores, min(5, self.num_classes))

    def _normalize(self, images):
        return images - self.mean

    def _make_train_step(self):
        config, model, optimizer = self.config, self.model, self.optimizer
        replicas_n = self.strategy.num_replicas_in_sync
        wd = config.weight_decay

        def gradients(images, labels):
            with tf.GradientTape() as tape:
                logits = model(self._normalize(images), training=True)
                per_example = self._loss(labels, logits)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=config.batch_size)
                if wd:
                    # Caffe's weight decay (grad += wd * w), once per global step: each replica adds 1/N.
                    loss += wd * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in self.decayed]) / replicas_n
                scaled = optimizer.scale_loss(loss) if config.precision == "fp16" else loss
            grads = tape.gradient(scaled, model.trainable_variables)
            top1, top5 = self._hits(labels, logits)
            size = tf.cast(tf.shape(labels)[0], tf.float64)
            return grads, tf.stack([tf.reduce_sum(tf.cast(per_example, tf.float64)), top1, top5, size])

        if config.xla:
            # Only the replica's own math: the optimizer's cross-replica all-reduce stays outside XLA,
            # where jit_compile under MirroredStrategy breaks.
            gradients = tf.function(gradients, jit_compile=True)

        def replica_step(images, labels):
            grads, sums = gradients(images, labels)
            replicas.apply_gradients(optimizer, grads, model.trainable_variables)
            replicas.average(self.moving_statistics)
            return sums

        @tf.function
        def train_step(batch):
            sums = self.strategy.run(replica_step, args=batch)
            self.epoch_totals.assign_add(self.strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None))
            updates = tf.cast(tf.convert_to_tensor(optimizer.iterations), tf.int64)
            self.skipped.assign_add(1 - (updates - self.step))
            self.step.assign(updates)
            self.batches.assign_add(1)

        return train_step

    def _make_eval_step(self):
        size = self.config.image_size

        def replica_step(images, labels):
            if self.config.ten_crop:
                # The paper's 10-crop testing: corners, centre and their mirrors of the 256x256 image.
                crops = data.ten_crop_batch(images, size)  # [10 * b, s, s, 3], crop-major
                scores = mean_crop_log_probabilities(self.model(self._normalize(crops), training=False), 10)
                loss = -tf.gather(scores, labels, batch_dims=1)
            else:
                scores = tf.cast(self.model(self._normalize(images), training=False), tf.float32)
                loss = self._loss(labels, scores)
            top1, top5 = self._hits(labels, scores)
            loss = tf.reduce_sum(tf.cast(loss, tf.float64))
            return tf.stack([loss, top1, top5, tf.cast(tf.shape(labels)[0], tf.float64)])

        @tf.function
        def eval_step(batch):
            return self.strategy.reduce(tf.distribute.ReduceOp.SUM, self.strategy.run(replica_step, args=batch), None)

        return eval_step

    # -- loops ----------------------------------------------------------------------------------------
    def _dataset(self, split, epoch=0, skip=0, image_size=None, augment=None):
        config = self.config

        def make(context):
            return self.source.dataset(
                split,
                global_batch_size=config.batch_size,
                image_size=image_size or config.image_size,
                augment=augment or config.augment,
                training=split == "train",
                seed=config.seed,
                epoch=epoch,
                skip_batches=skip,
                input_context=context,
            )

        return self.strategy.distribute_datasets_from_function(make)

    def evaluate(self):
        totals = np.zeros(4)
        crops = dict(image_size=data.eval_short_side(self.config.image_size), augment="center_square")
        for batch in self._dataset("validation", **(crops if self.config.ten_crop else {})):
            totals += self._eval_step(batch).numpy()
        expected = self.source.num_examples("validation")
        self._check_bad_fraction("validation", expected, expected - totals[3])
        n = max(totals[3], 1)
        return {"loss": totals[0] / n, "top1": totals[1] / n, "top5": totals[2] / n, "examples": int(totals[3])}

    def fit(self):
        config = self.config
        restored = tf.train.latest_checkpoint(self.checkpoint_dir)
        if restored:
            self.checkpoint.restore(restored).assert_existing_objects_matched()
        start = int(self.step.numpy())
        if restored:
            log.info("Resumed from step %d (%s)", start, restored)
        else:
            log.info("Starting %s from scratch in %s", config.model, self.model_dir)
            if self.board:
                self.board.hparams(config)
        log.info(
            "%s on %s: %d replicas (%s), %d steps of batch %d (%d steps/epoch), precision %s",
            config.model,
            config.data,
            self.strategy.num_replicas_in_sync,
            type(self.strategy).__name__,
            self.total_steps,
            config.batch_size,
            self.steps_per_epoch,
            config.precision,
        )
        history = {}
        if self._pending_evaluation():  # a crash after the epoch's last step, before its evaluation
            history = self._end_epoch((int(self.batches.numpy()) - 1) // self.steps_per_epoch, 0.0, 0)
        while int(self.step.numpy()) < self.total_steps:
            history = self._run_epoch(self.profile)
        if history.get("validation"):
            final = history.pop("validation")
        else:
            log.info("%s is already trained to step %d: evaluating and exporting only.", self.model_dir, start)
            final = self.evaluate()
        if not self.chief:
            shutil.rmtree(self.manager.directory, ignore_errors=True)
        return {"step": int(self.step.numpy()), "validation": final, "model_dir": self.model_dir, **history}

    def _pending_evaluation(self):
        position = int(self.batches.numpy())
        boundary = position % self.steps_per_epoch == 0 or int(self.step.numpy()) >= self.total_steps
        return position > 0 and boundary and int(self.evaluated_at.numpy()) != position

    def _run_epoch(self, profile):
        config = self.config
        epoch, skip = divmod(int(self.batches.numpy()), self.steps_per_epoch)
        if skip == 0:
            self.epoch_totals.assign(tf.zeros(4, tf.float64))
        remaining = self.steps_per_epoch - skip
        progbar = (
            keras.utils.Progbar(
                min(remaining, self.total_steps - int(self.step.numpy())),
                stateful_metrics=["loss", "top1", "img/s"],
                verbose=1 if config.progress else 0,
            )
            if self.chief
            else None
        )
        log.info("Epoch %d/%d", epoch + 1, -(-self.total_steps // self.steps_per_epoch))
        t0 = time.perf_counter()
        try:
            images_seen, done = self._train_batches(epoch, skip, remaining, profile, progbar, t0)
        except tf.errors.InvalidArgumentError:
            self.source.bad_images.check()  # the pipeline stops early on too many bad images: say which
            raise
        elapsed = time.perf_counter() - t0  # training only, evaluation excluded
        if done < remaining and int(self.step.numpy()) < self.total_steps:
            # Fewer batches than counted (bad images took whole batches, or the count is off): the epoch
            # is over all the same; the next one starts at its own position, never re-reading this one.
            log.warning("Epoch %d ended after %d of %d batches (fewer readable images than counted).",
                        epoch + 1, skip + done, self.steps_per_epoch)  # fmt: skip
            self.batches.assign((epoch + 1) * self.steps_per_epoch)
        return self._end_epoch(epoch, elapsed, images_seen)

    def _end_epoch(self, epoch, elapsed, images_seen):
        """Evaluates at an epoch's end (or the run's), logs, and checkpoints; mid-epoch it only checkpoints."""
        train = self.epoch_totals.numpy()
        in_epoch = int(self.batches.numpy()) - epoch * self.steps_per_epoch
        # A run ending mid-epoch is judged against the whole epoch: a bad image in a short last stretch
        # is not 1 % of the data set.
        bad = in_epoch * self.config.batch_size - train[3]
        self._check_bad_fraction("training", self.steps_per_epoch * self.config.batch_size, bad)
        n = max(train[3], 1)
        summary = {"train_loss": train[0] / n, "train_top1": train[1] / n}
        step, position = int(self.step.numpy()), int(self.batches.numpy())
        val = None
        if position % self.steps_per_epoch == 0 or step >= self.total_steps:
            val = self.evaluate()
            summary.update({"val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"]})
            if self.board:
                self.board.scalars(
                    self.board.validation,
                    step,
                    {
                        "loss": val["loss"],
                        "top1": val["top1"],
                        "top5": val["top5"],
                        "skipped_images": self.source.bad_images.count,
                    },
                )
            if position % self.steps_per_epoch == 0:
                self.epoch_totals.assign(tf.zeros(4, tf.float64))
            self.evaluated_at.assign(position)
        self.manager.save(checkpoint_number=step)
        rate = images_seen / max(elapsed, 1e-9)
        log.info(
            "epoch %d step %d: %s, %.0f img/s, skipped images %d",
            epoch + 1,
            step,
            ", ".join(f"{k} {v:.4f}" for k, v in summary.items()),
            rate,
            self.source.bad_images.count,
        )
        summary["images_per_second"] = rate
        if val is not None:
            summary["validation"] = val
        return summary

    def _check_bad_fraction(self, split, elements, bad):
        """The > 1 % rule on one pass's exact numbers: `bad` of `elements` (whole batch windows). They come
        from the step's all-reduced totals, which the checkpoint keeps, so a resume neither forgets nor
        recounts a bad image, and every worker reaches the same verdict."""
        bad_images = self.source.bad_images
        bad = int(round(bad))
        if elements and bad > bad_images.threshold * elements:
            raise data.DataError(
                f"{bad_images.source}: {bad} of {int(elements)} {split} images ({bad / elements:.1%}) could not "
                f"be decoded, more than the {bad_images.threshold:.0%} allowed; first bad: "
                f"{', '.join(bad_images.names) or 'not named on this worker'}. Re-create or delete the broken "
                "files (zero bytes, truncated or not an image)."
            )

    def _train_batches(self, epoch, skip, remaining, profile, progbar, t0):
        config = self.config
        images_seen, done = 0, 0
        counted = self.epoch_totals.numpy()[3]  # examples so far this epoch, read once per step below
        for batch in self._dataset("train", epoch, skip):
            if done >= remaining:
                break
            if self.board and done == 0 and epoch == 0 and skip == 0:
                self.board.image_grid(self.strategy.experimental_local_results(batch[0])[0], 0)
            step = int(self.step.numpy())
            if profile and step + 1 == profile[0]:
                tf.profiler.experimental.start(os.path.join(self.model_dir, "logs", "train"))
            self._train_step(batch)
            done += 1
            step = int(self.step.numpy())
            if profile and step == profile[-1]:
                tf.profiler.experimental.stop()
            sums = self.epoch_totals.numpy()
            images_seen += int(sums[3] - counted)
            counted = sums[3]
            rate = images_seen / (time.perf_counter() - t0)
            n = max(sums[3], 1)
            if progbar:
                progbar.update(done, [("loss", sums[0] / n), ("top1", sums[1] / n), ("img/s", rate)])
            if self.board and (step % config.log_steps == 0 or done == remaining):
                self.board.scalars(
                    self.board.train,
                    step,
                    {
                        "loss": sums[0] / n,
                        "top1": sums[1] / n,
                        "top5": sums[2] / n,
                        "learning_rate": float(self.schedule(max(step - 1, 0))),
                        "images_per_second": rate,
                        "skipped_images": self.source.bad_images.count,
                        **self._loss_scale(),
                    },
                )
            if config.checkpoint_steps and step % config.checkpoint_steps == 0:
                self.manager.save(checkpoint_number=step)
            if step >= self.total_steps:
                break
        return images_seen, done

    def _loss_scale(self):
        """fp16: the dynamic loss scale and the batches whose update was skipped for overflow so far."""
        if self.config.precision != "fp16":
            return {}
        return {"loss_scale": float(self.optimizer.dynamic_scale.numpy()), "skipped_steps": int(self.skipped.numpy())}

    def export(self):
        """Export the last checkpoint, the same path as `python -m trainers.export --model-dir`."""
        from trainers.export import export_model_dir

        path = export_model_dir(self.model_dir, self.config.export_dir)
        log.info("Exported SavedModel to %s", path)
        return path


def mean_crop_log_probabilities(logits, crops):
    """log of the softmax averaged over crops ([crops * b, classes] crop-major in, [b, classes] out),
    computed in log space in float32: an underflowed probability keeps its rank instead of tying at 0."""
    logits = tf.cast(logits, tf.float32)
    log_probs = tf.reshape(tf.nn.log_softmax(logits), [crops, -1, tf.shape(logits)[-1]])
    return tf.reduce_logsumexp(log_probs, axis=0) - math.log(crops)


def top_k_hits(labels, scores, k):
    """Examples whose label is among the k best float32 scores; ties go to the lower class id, never
    all of them (tf.math.in_top_k counts every tied class as a hit: an untrained model scores 1.0)."""
    _, best = tf.math.top_k(tf.cast(scores, tf.float32), k=k)
    hit = tf.reduce_any(tf.equal(best, tf.cast(labels, best.dtype)[:, None]), axis=1)
    return tf.reduce_sum(tf.cast(hit, tf.float64))


def _refuse_xla_with_sync_bn(config, replicas):
    if config.xla and config.sync_bn and replicas > 1:
        raise ValueError(
            f"--xla with --sync-bn on {replicas} replicas: synchronized BatchNorm all-reduces inside the "
            "step, which XLA cannot compile under MirroredStrategy. Drop --xla or --sync-bn."
        )


def _profile_range(text):
    """--profile-steps "A,B" (or "A"): profile global steps A..B inclusive, counting from 1."""
    if not text:
        return None
    try:
        steps = [int(v) for v in str(text).split(",")]
    except ValueError:
        steps = []
    if len(steps) not in (1, 2) or steps[0] < 1 or steps[-1] < steps[0]:
        raise ValueError(f"--profile-steps {text!r}: expected A,B with 1 <= A <= B (e.g. 10,20), or one step A.")
    return steps[0], steps[-1]


def _cluster(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None, None, {}
    return resolver.task_type, resolver.task_id, resolver.cluster_spec().as_dict()


def _is_chief(strategy):
    """The chief, or worker 0 of a cluster without one, writes logs, config and checkpoints."""
    task_type, task_id, cluster = _cluster(strategy)
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0 and "chief" not in cluster)


def _task_id(strategy):
    return _cluster(strategy)[1] or 0


def run(config, recipe_name):
    """Train, evaluate, export; print where everything is."""
    trainer = Trainer(config, recipe_name)
    result = trainer.fit()
    if not trainer.chief:
        return result
    if config.export:
        result["saved_model"] = trainer.export()
    val = result.get("validation", {})
    print(
        f"\nDone: {config.model} step {result['step']}, validation top-1 {val.get('top1', float('nan')):.4f} "
        f"({val.get('examples', 0)} images)"
    )
    if result.get("saved_model"):
        print(f"SavedModel:  {result['saved_model']}")
    print(f"Checkpoints: {os.path.join(trainer.model_dir, 'checkpoints')}")
    print(f"TensorBoard: tensorboard --logdir {os.path.join(trainer.model_dir, 'logs')}")
    with open(os.path.join(trainer.model_dir, "result.json"), "w") as f:
        json.dump(result, f, indent=2, default=float)
    return result
