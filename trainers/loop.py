"""The one training loop, for every task and every strategy (Mirrored, MultiWorkerMirrored, TPU).

Keras 3.15's `model.fit` breaks under MultiWorkerMirroredStrategy (keras-team/keras#20585), so this is
the Model Garden's shape: `strategy.run` + `GradientTape` + a Keras optimizer, `steps_per_loop` steps
inside one tf.function so the devices never wait on the host between steps. The host reads the step
and the metrics once per loop, and logs, checkpoints and honours SIGTERM/SIGINT at loop ends.
"""

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import sys
import threading
import time

import keras
import numpy as np
import tensorflow as tf

from trainers import config as config_lib
from trainers import data_service, hardware, logs, replicas, schedules
from trainers import strategy as strategy_lib
from trainers.logs import Board, Progress, log
from trainers.run_dir import RunDir, copy_weights, default_model_dir
from trainers.strategy import make_strategy
from trainers.tasks.base import EvaluationStopped

POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
# Steps per device loop when --steps-per-loop is not given: enough to hide the host's work between
# steps on an accelerator, few enough that the CPU's progress bar still moves.
DEFAULT_STEPS_PER_LOOP = {"CPU": 10, "GPU": 100, "TPU": 500}
EXIT_CODES = {"SIGTERM": 143, "SIGINT": 130}


class Releaser:
    """Drops spent tf.data iterators on helper threads. TF 2.21's iterator destructor joins the pipeline's
    autotuning thread, which does not wake on cancellation but at its next optimisation, up to a minute
    apart on a long epoch: dropped on the main thread, that stalled an epoch end (or an evaluation's) by
    0-60 s, about 30 % of a CIFAR-10 epoch on 2 cores. TF lets go of the GIL while it waits, so the loop
    goes on; `join` waits for the last ones (the end of a run)."""

    def __init__(self):
        self.threads = []

    def release(self, box):
        """Empties `box` (a list holding the only reference to an iterator) on a helper thread."""
        thread = threading.Thread(target=box.clear, name="release-tf-data-iterator", daemon=True)
        thread.start()
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]

    def join(self):
        for thread in self.threads:
            thread.join()
        self.threads = []


class Interrupted(Exception):
    """SIGTERM or SIGINT stopped the run after saving a checkpoint at `step`; rerunning resumes there."""

    def __init__(self, signal_name, step, checkpoint, model_dir):
        self.signal_name, self.step, self.checkpoint, self.model_dir = signal_name, step, checkpoint, model_dir
        self.exit_code = EXIT_CODES.get(signal_name, 1)
        super().__init__(
            f"{signal_name}: interrupted at step {step}; checkpoint {checkpoint}. "
            "Rerun the same command to resume from there."
        )


class Diverged(ValueError):
    """The weights are no longer finite (a NaN or infinite update): training stops before saving them, so
    the last checkpoint is the last finite state. A ValueError: the command line prints it as an error."""

    def __init__(self, step, checkpoint, config):
        where = f"the last checkpoint, {checkpoint}, is from before it" if checkpoint else "no checkpoint was saved"
        super().__init__(
            f"training diverged by step {step}: the weights are NaN or infinite ({where}). Lower --lr "
            f"(now {config.lr:g} at batch {config.lr_batch}), warm up with --warmup-epochs, or train in "
            f"--precision fp32 (now {config.precision}); a rerun resumes from the last checkpoint, with the new "
            "settings only under a new --model-dir."
        )


class LostWorker(RuntimeError):
    """Another worker of a multi-worker run is gone (killed, crashed, its machine lost): this one stops too,
    naming it. Exit status 75 (EX_TEMPFAIL): rerunning every worker resumes from the last checkpoint."""

    exit_code = 75


# What TensorFlow raises in the survivors when a peer stops answering: its coordination service's heartbeat
# timeout or an aborted collective, naming the task ("/job:worker/replica:0/task:1") where it knows it.
_PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
    tf.errors.InternalError,
    tf.errors.UnknownError,
)
_TASK = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")


def untracked_weights(model):
    """Paths of `model`'s weights that tf.train.Checkpoint would not save: Keras trains the layers a
    model keeps in a plain list, but TensorFlow's checkpoint dependency graph does not reach them."""
    tracked = {id(t) for t in tf.train.TrackableView(model).descendants()}
    return [w.path for w in model.weights if id(w) not in tracked]


def resolve_precision(name, device=None):
    """`auto` -> the precision `device` ("CPU", "GPU", "TPU") computes fastest (trainers.hardware decides)."""
    return hardware.auto_precision(device) if name == "auto" else name


def decayed(model, config):
    """Variables under weight decay: all, or (--no-bn-decay) conv/dense kernels only."""
    if config.bn_decay:
        return list(model.trainable_variables)
    return [v for v in model.trainable_variables if len(v.shape) > 1]


def _warn_low_precision_outputs(model, config):
    """A functional model's bf16/fp16 outputs, met by float32 labels in a task's loss, fail deep inside
    TensorFlow ("Input 'y' of 'Sub' Op has type float32 that does not match type bfloat16"): say it first."""
    low = [
        f"{tensor.name} ({tensor.dtype})"
        for tensor in getattr(model, "outputs", None) or []
        if str(tensor.dtype) in ("bfloat16", "float16")
    ]
    if low:
        log.warning(
            "--precision %s: %s outputs %s; a loss that meets float32 labels fails on the dtype. Give the "
            'output layer dtype="float32" (Keras\' mixed-precision guide), cast in the loss, or train with '
            "--precision fp32.", config.precision, model.name, ", ".join(low),
        )  # fmt: skip


class Loop:
    """Trains `task` under `config`: set-up checks everything before writing a file into the run dir."""

    def __init__(self, config, task=None, recipe_name="train"):
        from trainers.tasks import task_for

        config_lib.validate(config)  # again: a config built in code never went through the flags' checks
        _refuse_xla_with_sync_bn(config, config.gpus or config.cpu_replicas or 1)
        self.strategy = make_strategy(**config_lib.strategy_settings(config))  # before anything touches TF devices
        config = dataclasses.replace(config, precision=resolve_precision(config.precision, _device_type(self.strategy)))
        keras.mixed_precision.set_global_policy(POLICIES[config.precision])
        keras.utils.set_random_seed(config.seed)
        replicas_n = self.strategy.num_replicas_in_sync
        _refuse_xla_with_sync_bn(config, replicas_n)
        if config.batch_size % replicas_n:
            raise ValueError(f"--batch-size {config.batch_size} must divide evenly over {replicas_n} replicas.")
        if config.steps is None and config.epochs is None:
            raise ValueError("Say how long to train: --epochs N or --steps N.")
        self.profile = _profile_range(config.profile_steps)  # refuse a bad range before any work
        config.model_dir = config.model_dir or default_model_dir(recipe_name, config)
        self.model_dir = config.model_dir
        self.run_dir = RunDir(self.model_dir)
        self.multi_worker = self.strategy.extended._in_multi_worker_mode()
        self.chief = _is_chief(self.strategy)
        self.task = task or task_for(config)
        self.task.config = config
        self.task.open(self.multi_worker)
        self.config = config = self.task.effective_config()
        self.task.config = config
        train_examples = self.task.examples("train")
        self.steps_per_epoch = train_examples // config.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{config.data} has {train_examples} training examples, fewer than one batch of "
                f"{config.batch_size}: lower --batch-size or add data."
            )
        self.total_steps = int(config.steps or round(config.epochs * self.steps_per_epoch))
        self.steps_per_loop = config.steps_per_loop or _default_steps_per_loop(self.strategy)
        self.run_dir.check_resumable(config)
        resuming = self.run_dir.has_checkpoint()
        self.task.prepare(self.run_dir, resuming)
        with self.strategy.scope():
            self.model = self.task.build_model()
            self.kept_initialisation = None
            if config.init_from and not resuming:  # a resume's checkpoint holds the run's own weights
                self.kept_initialisation = copy_weights(config.init_from, self.model, config.model, "--init-from")
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
            # The batch position whose epoch end (evaluation, when due) is done (a crash in between redoes it).
            self.evaluated_at = tf.Variable(0, dtype=tf.int64, trainable=False, name="evaluated_at")
            self.skipped = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_steps")  # fp16 overflows
            # The task's sums and the examples so far this epoch: a mid-epoch resume keeps them.
            width = len(self.task.metric_names) + 1
            self.epoch_totals = tf.Variable(tf.zeros(width, tf.float64), trainable=False, name="epoch_totals")
        _warn_low_precision_outputs(self.model, config)
        self.decayed = decayed(self.model, config)
        self.moving_statistics = replicas.moving_statistics(self.model)
        unsaved = untracked_weights(self.model)
        if unsaved:
            raise ValueError(
                f"{self.model.name}: {len(unsaved)} weights would be trained but never checkpointed "
                f"({', '.join(unsaved[:3])}{', ...' if len(unsaved) > 3 else ''}): hold each layer in an "
                "attribute of its own, not in a list or dict, so a resume or an export finds its weights."
            )
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
            self.run_dir.checkpoint_dir
            if self.chief
            else os.path.join(self.model_dir, f".worker-{_task_id(self.strategy)}")
        )
        self.manager = tf.train.CheckpointManager(self.checkpoint, own_dir, max_to_keep=config.keep_checkpoints)
        self._train_loop = self._make_train_loop()
        self._eval_loop = self._make_eval_loop()
        self._weights_finite = self._make_finite_check()
        self._agree = self._make_agreement()
        self.releaser = Releaser()
        self.task.releaser = self.releaser  # a task's own evaluation drops its iterators here too
        self.timings = []  # (step, images, seconds) per device loop: what the benchmark reads
        self._signal = None
        # One machine stops a long evaluation at SIGTERM/SIGINT (a rerun evaluates again); a cluster's
        # workers evaluate in step with each other and stop together after it.
        self.task.stop_requested = lambda: self._signal is not None and not self.multi_worker
        # Everything is checked: only now does the run dir get its files.
        if self.chief:
            self.run_dir.write_config(config)
            self.task.save(self.run_dir)
        self.board = Board(self.run_dir.log_dir) if self.chief else None

    # -- steps ----------------------------------------------------------------------------------------
    def _make_train_loop(self):
        config, model, optimizer, task = self.config, self.model, self.optimizer, self.task
        replicas_n = self.strategy.num_replicas_in_sync
        wd = config.weight_decay

        def gradients(batch):
            with tf.GradientTape() as tape:
                loss_sum, sums = task.train_loss(model, batch)
                loss = tf.cast(loss_sum, tf.float32) / config.batch_size
                if wd:
                    # Caffe's weight decay (grad += wd * w), once per global step: each replica adds 1/N.
                    loss += wd * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in self.decayed]) / replicas_n
                scaled = optimizer.scale_loss(loss) if config.precision == "fp16" else loss
            return tape.gradient(scaled, model.trainable_variables), sums

        if config.xla:
            # Only the replica's own math: the optimizer's cross-replica all-reduce stays outside XLA,
            # where jit_compile under MirroredStrategy breaks.
            gradients = tf.function(gradients, jit_compile=True)

        def replica_step(batch):
            grads, sums = gradients(batch)
            replicas.apply_gradients(optimizer, grads, model.trainable_variables)
            replicas.average(self.moving_statistics)
            return sums

        @tf.function
        def train_loop(iterator, steps):
            """Up to `steps` steps without leaving the device; returns how many the data allowed."""
            done = tf.constant(0, tf.int64)
            for _ in tf.range(steps):
                batch = iterator.get_next_as_optional()
                if not batch.has_value():
                    break
                sums = self.strategy.run(replica_step, args=(batch.get_value(),))
                self.epoch_totals.assign_add(self.strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None))
                updates = tf.cast(tf.convert_to_tensor(optimizer.iterations), tf.int64)
                self.skipped.assign_add(1 - (updates - self.step))
                self.step.assign(updates)
                self.batches.assign_add(1)
                done += 1
            return done

        return train_loop

    def _make_finite_check(self):
        variables = self.model.trainable_variables

        @tf.function
        def weights_finite():
            return tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in variables])

        return weights_finite

    def _make_eval_loop(self):
        width = len(self.task.metric_names) + 1

        @tf.function
        def eval_loop(iterator, steps):
            totals = tf.zeros(width, tf.float64)
            done = tf.constant(0, tf.int64)
            for _ in tf.range(steps):
                batch = iterator.get_next_as_optional()
                if not batch.has_value():
                    break
                sums = self.strategy.run(self.task.eval_sums, args=(self.model, batch.get_value()))
                totals += self.strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)
                done += 1
            return totals, done

        return eval_loop

    def _make_agreement(self):
        """Under MultiWorkerMirrored a signal reaches one worker: all must stop (and save) together."""
        if not self.multi_worker:
            return lambda flag: flag

        @tf.function
        def any_worker(flag):
            per_replica = self.strategy.run(lambda f: f, args=(flag,))
            return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        return lambda flag: bool(any_worker(tf.constant(1.0 if flag else 0.0)).numpy() > 0)

    def _distributed(self, split, epoch=0, skip=0):
        def make(context):
            return self.task.dataset(split, epoch=epoch, skip_batches=skip, input_context=context)

        return self.strategy.distribute_datasets_from_function(make)

    # -- public ---------------------------------------------------------------------------------------
    def evaluate(self):
        own = self.task.evaluate(self.model)
        if own is not None:
            return own
        totals = np.zeros(len(self.task.metric_names) + 1)
        box = [iter(self._distributed("validation"))]  # the only reference, for self.releaser
        chunk = tf.constant(max(self.steps_per_loop, 1), tf.int64)
        try:
            while True:
                self.task.check_stop()
                try:
                    sums, done = self._eval_loop(box[0], chunk)
                except tf.errors.InvalidArgumentError:
                    self._explain_pipeline_error()
                    raise
                totals += sums.numpy()
                if int(done) < int(chunk):
                    break
        finally:
            self.releaser.release(box)
        self.task.check_pass("validation", self.task.examples("validation"), totals[-1])
        return self.task.summarize(totals)

    def fit(self):
        config = self.config
        restored = self.run_dir.latest_checkpoint()
        if restored:
            self.checkpoint.restore(restored).assert_existing_objects_matched()
        start = int(self.step.numpy())
        if restored:
            log.info("Resumed from step %d (%s)", start, restored)
        else:
            if self.kept_initialisation is None:
                log.info("Starting %s from scratch in %s", config.model, self.model_dir)
            else:
                kept = ", ".join(self.kept_initialisation) or "none"
                log.info(
                    "Starting %s from %s's weights (newly initialised: %s) in %s",
                    config.model,
                    config.init_from,
                    kept,
                    self.model_dir,
                )
            if self.board:
                self.board.hparams(config)
        self._log_start()
        history = {}
        watch = data_service.watch(config.data_service, config.data_service_timeout, self._abandon_for_the_data_service)
        try:
            with self._signals(), watch:
                if self._pending_evaluation():  # a crash after the epoch's last step, before its evaluation
                    history = self._end_epoch((int(self.batches.numpy()) - 1) // self.steps_per_epoch, 0.0, 0)
                while int(self.step.numpy()) < self.total_steps:
                    history = self._run_epoch()
            if history.get("validation"):
                final = history.pop("validation")
            else:
                log.info("%s is already trained to step %d: evaluating only.", self.model_dir, start)
                final = self.evaluate()
        finally:
            # On every way out, SIGTERM and errors too: a helper still inside TF's iterator destructor when the
            # interpreter exits is killed in C++ ("terminate called after throwing an instance of ''": abort).
            self.releaser.join()
        if not self.chief:
            shutil.rmtree(self.manager.directory, ignore_errors=True)
        return {"step": int(self.step.numpy()), "validation": final, "model_dir": self.model_dir, **history}

    def lost_worker(self, error):
        """A LostWorker naming the peer `error` (raised by a collective or the coordination service) says is
        gone; None when this is no multi-worker run or the error names no other task."""
        if not self.multi_worker:
            return None
        task_type, task_id, cluster = _cluster(self.strategy)
        message = error.message or ""
        peers = {(job, int(i)) for job, i in _TASK.findall(message)}
        if "coordination service" in message and "leader" in message:  # the leader is task 0: chief, else worker
            peers.add(("chief", 0) if "chief" in cluster else ("worker", 0))
        peers = sorted(peers - {(task_type, task_id)})
        if not peers and not isinstance(error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError)):
            return None
        names = [f"{job} {i}" + (f" ({cluster[job][i]})" if i < len(cluster.get(job, ())) else "") for job, i in peers]
        try:
            step = f"at step {int(self.step.numpy())}"
        except (tf.errors.OpError, ValueError):
            step = "mid-step"
        saved = self.run_dir.latest_checkpoint()
        resume = f"its last checkpoint, {saved}" if saved else "the start: no checkpoint was saved yet"
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        # "Collective ops is aborted by: recvmsg:Connection reset by peer" or a heartbeat timeout says what
        # happened; "Graph execution error:" and the op's Python traceback before it say nothing.
        said = next((line for line in lines if re.search(r"abort|heartbeat|unavailable|timed? ?out", line, re.I)), "")
        log.debug("the error that stopped this worker: %s", message)
        return LostWorker(
            f"lost {' and '.join(names) or 'another worker'} of the cluster: {task_type} {task_id} stopped {step}. "
            f"Restart every worker with the same command; the run resumes from {resume}. "
            f"(TensorFlow: {said[:300] or type(error).__name__})"
        )

    def export(self):
        """Export the last checkpoint, the same path as `python -m trainers.export --model-dir`."""
        path = self.task.export(self.run_dir, self.config.export_dir, self.config.export_name)
        if path and getattr(path, "reused", False):
            log.info("Already exported: %s holds this checkpoint; no new version.", path)
        elif path:
            log.info("Exported SavedModel to %s", path)
        return path

    # -- epochs ---------------------------------------------------------------------------------------
    def _log_start(self):
        config = self.config
        machines = strategy_lib.describe(self.strategy, config.batch_size, self.schedule.peak_lr)
        log.info(
            "%s on %s: %s; %d steps (%d an epoch, %d per device loop), precision %s",
            config.model,
            config.data,
            machines,
            self.total_steps,
            self.steps_per_epoch,
            self.steps_per_loop,
            config.precision,
        )
        log.info("%s", hardware.onednn().line)
        hardware.warn_if_slow(config.precision, _device_type(self.strategy))
        for line in self.task.describe():
            log.info("%s", line)
        described, warning = schedules.describe(self.schedule, config)
        log.info("Schedule: %s", described)
        if warning:
            log.warning("%s", warning)

    def _pending_evaluation(self):
        position = int(self.batches.numpy())
        boundary = position % self.steps_per_epoch == 0 or int(self.step.numpy()) >= self.total_steps
        return position > 0 and boundary and int(self.evaluated_at.numpy()) != position

    def _run_epoch(self):
        epoch, skip = divmod(int(self.batches.numpy()), self.steps_per_epoch)
        if skip == 0:
            self.epoch_totals.assign(tf.zeros_like(self.epoch_totals))
        remaining = self.steps_per_epoch - skip
        progress = (
            Progress(min(remaining, self.total_steps - int(self.step.numpy())), enabled=self.config.progress)
            if self.chief
            else None
        )
        log.info("Epoch %d/%d", epoch + 1, -(-self.total_steps // self.steps_per_epoch))
        if self.board and epoch == 0 and skip == 0:
            self._image_grid()
        try:
            images_seen, seconds, done = self._train_batches(epoch, skip, remaining, progress)
        except tf.errors.InvalidArgumentError:
            self._explain_pipeline_error()
            raise
        finally:
            if progress:
                progress.close()
        if done < remaining and int(self.step.numpy()) < self.total_steps:
            # Fewer batches than counted (bad images took whole batches, or the count is off): the epoch
            # is over all the same; the next one starts at its own position, never re-reading this one.
            log.warning("Epoch %d ended after %d of %d batches (fewer readable examples than counted).",
                        epoch + 1, skip + done, self.steps_per_epoch)  # fmt: skip
            self.batches.assign((epoch + 1) * self.steps_per_epoch)
        return self._end_epoch(epoch, seconds, images_seen)

    def _explain_pipeline_error(self):
        """A task's data may stop the pipeline on purpose (bad images, a wrong count): its own message."""
        if hasattr(self.task, "on_pipeline_error"):
            self.task.on_pipeline_error()

    def _image_grid(self):
        sample = getattr(self.task, "sample_images", lambda batch: None)
        images = sample(next(iter(self.task.dataset("train"))))
        if images is not None:
            self.board.image_grid(images, 0)

    def _loop_length(self, step, done, remaining):
        """Steps in the next device loop: it ends where the host must act (log, checkpoint, profile, end)."""
        n = min(self.steps_per_loop, remaining - done, self.total_steps - step)
        for every in (self.config.log_steps, self.config.checkpoint_steps):  # the same on every worker
            if every:
                n = min(n, every - step % every)
        if self.profile:
            first, last = self.profile
            if step < first - 1:
                n = min(n, first - 1 - step)
            elif step < last:
                n = min(n, last - step)
        return max(n, 1)

    def _train_batches(self, epoch, skip, remaining, progress):
        box = [iter(self._distributed("train", epoch, skip))]  # the only reference, for self.releaser
        try:
            return self._train_steps(box[0], remaining, progress)
        finally:
            self.releaser.release(box)

    def _train_steps(self, iterator, remaining, progress):
        config = self.config
        images_seen, seconds, done = 0, 0.0, 0
        counted = self.epoch_totals.numpy()[-1]
        step = int(self.step.numpy())
        while done < remaining and step < self.total_steps:
            n = self._loop_length(step, done, remaining)
            if self.profile and step + 1 == self.profile[0]:
                tf.profiler.experimental.start(os.path.join(self.run_dir.log_dir, "train"))
            t0 = time.perf_counter()
            ran = int(self._train_loop(iterator, tf.constant(n, tf.int64)))
            sums = self.epoch_totals.numpy()  # waits for the loop: the time below is the steps'
            elapsed = time.perf_counter() - t0
            previous, step = step, int(self.step.numpy())
            if self.profile and previous < self.profile[-1] <= step:
                tf.profiler.experimental.stop()
            if not bool(self._weights_finite()):
                raise Diverged(step, self.manager.latest_checkpoint, config)  # before anything saves them
            done += ran
            images = int(sums[-1] - counted)
            counted = sums[-1]
            images_seen += images
            seconds += elapsed
            self.timings.append((step, images, elapsed))
            rate = images_seen / max(seconds, 1e-9)
            values = self.task.summarize(sums)
            if progress:
                progress.update(done, {**{k: values[k] for k in self.task.metric_names[:2]}, "img/s": rate})
            if self.chief and not config.progress and config.log_steps and step % config.log_steps == 0:
                # No bar (a log file, a batch job): a line per --log-steps, so a long epoch shows its progress.
                shown = ", ".join(f"{k} {values[k]:.4f}" for k in self.task.metric_names[:2])
                log.info("step %d/%d: %s (this epoch), %s img/s", step, self.total_steps, shown, logs.rate(rate))
            if self.board and (step % config.log_steps == 0 or done >= remaining or ran < n):
                scalars = {k: values[k] for k in self.task.metric_names}
                scalars.update(learning_rate=float(self.schedule(max(step - 1, 0))), images_per_second=rate)
                scalars.update(self._task_counters(), **self._loss_scale())
                self.board.scalars(self.board.train, step, scalars)
            if config.checkpoint_steps and step % config.checkpoint_steps == 0 and previous != step:
                self.manager.save(checkpoint_number=step)
            self._honour_signal(step)
            if ran < n:
                break
        return images_seen, seconds, done

    def _task_counters(self):
        count = getattr(self.task, "bad_image_count", None)
        return {} if count is None else {"skipped_images": count}

    def _end_epoch(self, epoch, seconds, images_seen):
        """Evaluates at an epoch's end (or the run's), logs, and checkpoints; mid-epoch it only checkpoints."""
        train = self.epoch_totals.numpy()
        in_epoch = int(self.batches.numpy()) - epoch * self.steps_per_epoch
        # A run ending mid-epoch is judged against the whole epoch: a bad image in a short last stretch
        # is not 1 % of the data set.
        elements = self.steps_per_epoch * self.config.batch_size
        self.task.check_pass("training", elements, elements - (in_epoch * self.config.batch_size - train[-1]))
        values = self.task.summarize(train)
        summary = {f"train_{k}": values[k] for k in self.task.metric_names[:2]}
        step, position = int(self.step.numpy()), int(self.batches.numpy())
        val = None
        if position % self.steps_per_epoch == 0 or step >= self.total_steps:
            if step >= self.total_steps or (position // self.steps_per_epoch) % self.config.eval_every == 0:
                try:
                    val = self.evaluate()
                except EvaluationStopped:
                    self._honour_signal(step)  # saves this step unevaluated and raises Interrupted
                    raise
                names = self.task.eval_metric_names or self.task.metric_names
                summary.update({f"val_{k}": val[k] for k in names})
                if self.board:
                    scalars = {k: val[k] for k in names}
                    self.board.scalars(self.board.validation, step, {**scalars, **self._task_counters()})
                    if self.task.picture is not None:
                        self.board.picture(self.board.validation, step, self.task.picture, f"{self.task.name}_samples")
            if position % self.steps_per_epoch == 0:
                self.epoch_totals.assign(tf.zeros_like(self.epoch_totals))
            self.evaluated_at.assign(position)  # this boundary is done, evaluated or not (--eval-every)
        self.manager.save(checkpoint_number=step)
        rate = images_seen / max(seconds, 1e-9)
        log.info(
            "epoch %d step %d: %s, %s img/s%s",
            epoch + 1,
            step,
            ", ".join(f"{k} {v:.4f}" for k, v in summary.items()),
            logs.rate(rate),
            "".join(f", {k.replace('_', ' ')} {v}" for k, v in self._task_counters().items()),
        )
        summary["images_per_second"] = rate
        if val is not None:
            summary["validation"] = val
        self._honour_signal(step)
        return summary

    def _loss_scale(self):
        """fp16: the dynamic loss scale and the batches whose update was skipped for overflow so far."""
        if self.config.precision != "fp16":
            return {}
        return {"loss_scale": float(self.optimizer.dynamic_scale.numpy()), "skipped_steps": int(self.skipped.numpy())}

    # -- preemption -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _signals(self):
        """SIGTERM (schedulers, spot VMs) and SIGINT (Ctrl-C) ask for a save at the next loop end."""
        if not _in_main_thread():
            yield
            return
        previous = {}

        def handler(number, frame):
            name = signal.Signals(number).name
            if self._signal == name == "SIGINT":
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
            self._signal = name
            log.warning("%s received: saving a checkpoint at the end of this device loop.", name)

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _abandon_for_the_data_service(self, address):
        """The dispatcher is gone and the steps are stuck inside TensorFlow: saves what it can, says what
        happened and how to go on, and ends the process (status 75)."""
        step = int(self.step.numpy())
        saved = None
        if self.chief and not self.multi_worker:  # a cluster's save is collective, and the others are stuck too
            try:
                saved = self.manager.save(checkpoint_number=step)  # the variables hold the last whole step
            except Exception:  # noqa: BLE001 - the exit below must happen whatever the save did
                saved = None
        saved = saved or self.run_dir.latest_checkpoint()
        print(
            f"error: --data-service {address}: the tf.data service dispatcher stopped answering (nothing for "
            f"{self.config.data_service_timeout:g} s) at step {step}. Restart it and its workers, then rerun the same "
            f"command: the run resumes from {saved or 'the start (no checkpoint was saved yet)'}.",
            file=sys.stderr,
            flush=True,
        )
        os._exit(LostWorker.exit_code)

    def _honour_signal(self, step):
        if not self._agree(self._signal is not None):
            return
        path = self.manager.save(checkpoint_number=step)
        if not self.chief:
            path = self.run_dir.checkpoint_dir
        name = self._signal or "SIGTERM"  # another worker got it
        log.warning("%s: interrupted at step %d; checkpoint %s. Rerun the same command to resume.", name, step, path)
        raise Interrupted(name, step, path, self.model_dir)


def train(config, task=None, recipe_name="train", export=None):
    """Train `task` (classification by default) under `config`; returns the result dict.

    Raises `Interrupted` after saving when SIGTERM/SIGINT arrives. `export` (default: config.export)
    writes the task's SavedModel from the chief.
    """
    loop = Loop(config, task, recipe_name)
    try:
        result = loop.fit()
    except _PEER_ERRORS as error:
        lost = loop.lost_worker(error)
        if lost is None:
            raise
        raise lost from None
    result["timings"] = loop.timings
    result["chief"] = loop.chief
    if loop.chief and (config.export if export is None else export):
        result["saved_model"] = loop.export()
    if loop.chief:
        loop.run_dir.write_result({k: v for k, v in result.items() if k not in ("timings", "chief")})
    return result


def run(config, recipe_name):
    """The command line's run: train, evaluate, export; print where everything is."""
    try:
        result = train(config, recipe_name=recipe_name)
    except Interrupted as stop:
        print(f"\nInterrupted ({stop.signal_name}) at step {stop.step}: rerun the same command to resume.")
        return stop.exit_code
    except LostWorker as lost:
        print(f"error: {lost}", file=sys.stderr, flush=True)
        return lost.exit_code
    model_dir = result["model_dir"]
    if not result["chief"]:
        return 0
    val = result.get("validation", {})
    if "top1" in val or not val:
        shown = f"top-1 {val.get('top1', float('nan')):.4f}"
    else:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in val.items() if isinstance(v, float))
    print(f"\nDone: {config.model} step {result['step']}, validation {shown} ({val.get('examples', 0)} images)")
    if result.get("saved_model"):
        print(f"SavedModel:  {result['saved_model']}")
    print(f"Checkpoints: {os.path.join(model_dir, 'checkpoints')}")
    print(f"TensorBoard: tensorboard --logdir {os.path.join(model_dir, 'logs')}")
    return 0


def _device_type(strategy):
    return (tf.DeviceSpec.from_string(strategy.extended.worker_devices[0]).device_type or "CPU").upper()


def _default_steps_per_loop(strategy):
    return DEFAULT_STEPS_PER_LOOP.get(_device_type(strategy), 1)


def _in_main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()


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
