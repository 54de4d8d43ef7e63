"""The Task protocol: the loop calls these, in this order, and nothing else of a task."""


class EvaluationStopped(Exception):
    """SIGTERM/SIGINT arrived during a task's own evaluation: the loop saves the step and exits; the rerun
    evaluates again."""


class Task:
    """One problem. Subclass and fill in; the loop owns strategy, steps, checkpoints, logs and preemption.

    Sums: a train or eval step returns a float64 vector, one entry per name in `metric_names` followed by
    the number of examples it saw; the loop adds them up over replicas and steps (and keeps the training
    epoch's in its checkpoint), and `summarize` turns totals into the numbers reported.
    """

    metric_names = ("loss",)
    # What evaluation reports; the loop logs val_<name> for each (default: the training sums' names).
    eval_metric_names = None
    # The name the TensorBoard HParams and the start log use.
    name = "task"
    # A uint8 [H, W, 3] picture the last evaluation drew (detection's sample detections), or None; the loop
    # logs it to TensorBoard beside the evaluation's scalars.
    picture = None
    # The loop's Releaser (trainers.loop.Releaser), set by the loop: `batches` hands it the spent iterator of a
    # task's own evaluation, so the end of one does not wait on tf.data's autotuner. None: dropped here.
    releaser = None

    def __init__(self, config):
        self.config = config

    # -- set-up, in the loop's order, before anything is written ------------------------------------
    def open(self, replicas_in_multi_worker=False):
        """Opens the data; refuses bad input before the loop writes a file. Sets nothing on the loop."""

    def examples(self, split):
        """Examples in `split` per pass (training: the loop takes floor(examples / batch) steps an epoch)."""
        raise NotImplementedError

    def effective_config(self):
        """The config as run (defaults the data decided filled in); what config.json records."""
        return self.config

    def prepare(self, run_dir, resuming):
        """Statistics the model needs (a mean image); read back from `run_dir` when `resuming`."""

    def save(self, run_dir):
        """Writes what `prepare` computed into `run_dir` (chief only, after all checks passed)."""

    def describe(self):
        """Lines for the start log: classes, counts, what the data is."""
        return []

    # -- the model and its steps (inside the strategy's scope / replica context) ---------------------
    def build_model(self):
        """The Keras model, built under the run's precision policy: under --precision bf16/fp16 (auto picks bf16
        on CPUs with AVX512-BF16) its layers compute in that dtype, so give the output layer dtype="float32"
        (as Keras' mixed-precision guide does) or cast the outputs in the loss; the loop warns otherwise."""
        raise NotImplementedError

    def dataset(self, split, *, epoch=0, skip_batches=0, input_context=None):
        """A tf.data.Dataset of per-replica batches of `split` ("train" or "validation")."""
        raise NotImplementedError

    def train_loss(self, model, batch):
        """(loss summed over this replica's examples, sums) for one replica's batch, training=True."""
        raise NotImplementedError

    def eval_sums(self, model, batch):
        """Sums for one replica's validation batch, training=False."""
        raise NotImplementedError

    def evaluate(self, model):
        """Evaluation that is no sum of `eval_sums` (detection's mAP): {name: value, "examples": n} computed
        on this host. None: the loop sums `eval_sums` over the validation split. A long one calls
        `self.check_stop()` between batches, so a preemption's grace period is not spent evaluating."""
        return None

    def batches(self, split):
        """The batches of `split` one by one, for a task's own evaluation; the spent iterator goes to `releaser`
        (even when the caller stops early), never deleted on this thread while one is set."""
        box = [iter(self.dataset(split))]  # the only reference to the iterator
        try:
            while True:
                try:
                    batch = next(box[0])
                except StopIteration:
                    return
                yield batch
        finally:
            if self.releaser is not None:
                self.releaser.release(box)

    def check_stop(self):
        """Raises EvaluationStopped once the loop was asked to stop (it sets `stop_requested` on one machine;
        a cluster's workers finish the evaluation together, then stop)."""
        if self.stop_requested():
            raise EvaluationStopped()

    @staticmethod
    def stop_requested():
        return False

    def summarize(self, totals):
        """{name: total / examples} and the example count."""
        n = max(float(totals[-1]), 1.0)
        values = {name: float(totals[i]) / n for i, name in enumerate(self.metric_names)}
        values["examples"] = int(totals[-1])
        return values

    def check_pass(self, split, elements, examples):
        """Called after each pass over `elements` windowed inputs of which `examples` were used."""

    def sample_images(self, batch):
        """Images of a training batch to show in TensorBoard (pixels 0..255), or None."""
        return None

    def export(self, run_dir, export_dir, name=None):
        """Writes what a server loads; returns its path. None: this task exports nothing."""
        return None
