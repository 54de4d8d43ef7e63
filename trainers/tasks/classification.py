"""Image classification: the paper's task, and the first one the loop runs."""

import dataclasses
import itertools
import math

import keras
import numpy as np
import tensorflow as tf

import keras_resnet
from trainers import data, data_service, preprocessing
from trainers.tasks.base import Task

IMAGENET_MEAN = preprocessing.IMAGENET_MEAN
MEAN_IMAGES = 50_000  # the whole training split of CIFAR; a shuffled sample of bigger ones


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


class ClassificationTask(Task):
    """Softmax cross-entropy, top-1/top-5, optional 10-crop or flip evaluation, a TF Serving export."""

    metric_names = ("loss", "top1", "top5")
    name = "classification"

    def __init__(self, config):
        super().__init__(config)
        self.source = None
        self.num_classes = config.num_classes
        self.mean = None

    def open(self, replicas_in_multi_worker=False):
        config = self.config
        self.source = data.open_source(
            config.data,
            data_dir=config.data_dir,
            validation_split=config.validation_split,
            num_classes=config.num_classes,
            seed=config.seed,
            download=config.download,
            num_examples=config.num_examples,
        )
        # One worker stopping early on bad images would leave the others waiting in a collective.
        self.source.bad_images.early_stop = not replicas_in_multi_worker
        self.num_classes = config.num_classes or self.source.num_classes
        if config.data_service:
            data_service.check_reachable(config.data_service)
            self.run_token = data_service.new_run_token()
            self.jobs = itertools.count()  # every dataset its own job: a peek at a batch takes no epoch's examples

    def examples(self, split):
        return self.source.num_examples(split)

    @property
    def bad_image_count(self):
        """Bad files met so far, each once (a file bad every epoch is one file)."""
        return self.source.bad_images.distinct

    def effective_config(self):
        return dataclasses.replace(self.config, num_classes=self.num_classes)

    def prepare(self, run_dir, resuming):
        import os

        if resuming and os.path.exists(run_dir.normalization_path):
            self.mean = run_dir.read_normalization()["mean"]
        else:
            self.mean = compute_mean(self.config, self.source)

    def save(self, run_dir):
        run_dir.write_normalization(self.mean, self.source.class_names[: self.num_classes])

    def describe(self):
        names = self.source.class_names[: self.num_classes]
        shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
        validation = self.source.num_examples("validation")
        lines = [
            f"{self.num_classes} classes: {shown}",
            f"{self.examples('train')} training, {validation} validation images",
        ]
        if self.config.data_service:
            lines.append(
                f"training images decoded and augmented by the tf.data service at {self.config.data_service} "
                "(each epoch one job, every example once); evaluation decodes here"
            )
        return lines

    def build_model(self, num_classes=None):
        return build_model(self.config, num_classes or self.num_classes)

    # -- steps ------------------------------------------------------------------------------------------
    def _loss(self, labels, logits):
        logits = tf.cast(logits, tf.float32)
        if self.config.label_smoothing:
            eps = self.config.label_smoothing
            targets = tf.one_hot(labels, self.num_classes) * (1 - eps) + eps / self.num_classes
            return tf.nn.softmax_cross_entropy_with_logits(targets, logits)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)

    def _sums(self, labels, scores, per_example_loss):
        top1 = top_k_hits(labels, scores, 1)
        top5 = top_k_hits(labels, scores, min(5, self.num_classes))
        loss = tf.reduce_sum(tf.cast(per_example_loss, tf.float64))
        return tf.stack([loss, top1, top5, tf.cast(tf.shape(labels)[0], tf.float64)])

    def train_loss(self, model, batch):
        images, labels = batch
        logits = model(preprocessing.normalize(images, self.mean), training=True)
        per_example = self._loss(labels, logits)
        return tf.reduce_sum(per_example), self._sums(labels, logits, per_example)

    def scores(self, model, images):
        """float32 class scores of a validation batch: logits, or the mean log-probabilities over views:
        (--ten-crop) the paper's 10-crop testing's corners, centre and their mirrors of the 256x256 image;
        (--flip-test) the image and its mirror image, mirrored before the mean is taken off, as in training."""
        if self.config.ten_crop:
            crops = data.ten_crop_batch(images, self.config.image_size)  # [10 * b, s, s, 3], crop-major
            return mean_crop_log_probabilities(model(preprocessing.normalize(crops, self.mean), training=False), 10)
        if self.config.flip_test:
            views = tf.concat([images, tf.reverse(images, axis=[2])], axis=0)  # [2 * b, s, s, 3], view-major
            return mean_crop_log_probabilities(model(preprocessing.normalize(views, self.mean), training=False), 2)
        return tf.cast(model(preprocessing.normalize(images, self.mean), training=False), tf.float32)

    def eval_sums(self, model, batch):
        images, labels = batch
        scores = self.scores(model, images)
        averaged = self.config.ten_crop or self.config.flip_test  # scores are log-probabilities already
        loss = -tf.gather(scores, labels, batch_dims=1) if averaged else self._loss(labels, scores)
        return self._sums(labels, scores, loss)

    def dataset(self, split, *, epoch=0, skip_batches=0, input_context=None):
        config = self.config
        image_size, augment = config.image_size, config.augment
        if split == "validation" and config.ten_crop:
            image_size, augment = data.eval_short_side(config.image_size), "center_square"
        service = None
        if config.data_service and split == "train":  # evaluation stays here: exact, in order, small
            pipeline_id = input_context.input_pipeline_id if input_context else 0
            service = data_service.service_for(
                config.data_service, f"{self.run_token}-{next(self.jobs)}", split, epoch, skip_batches, pipeline_id
            )
        return self.source.dataset(
            split,
            global_batch_size=config.batch_size,
            image_size=image_size,
            augment=augment,
            training=split == "train",
            seed=config.seed,
            erasing=config.random_erasing,
            epoch=epoch,
            skip_batches=skip_batches,
            input_context=input_context,
            service=service,
        )

    def check_pass(self, split, elements, examples):
        """The > 1 % rule on one pass's exact numbers: of `elements` (whole batch windows) `examples` were
        read. They come from the step's all-reduced totals, which the checkpoint keeps, so a resume neither
        forgets nor recounts a bad image, and every worker reaches the same verdict."""
        bad_images = self.source.bad_images
        bad = int(round(elements - examples))
        if elements and bad > bad_images.threshold * elements:
            raise data.DataError(
                f"{bad_images.source}: {bad} of {int(elements)} {split} images ({bad / elements:.1%}) could not "
                f"be decoded, more than the {bad_images.threshold:.0%} allowed; first bad: "
                f"{', '.join(bad_images.names) or 'not named on this worker'}. Re-create or delete the broken "
                "files (zero bytes, truncated or not an image)."
            )

    def on_pipeline_error(self):
        """The pipeline stopped early: a count that does not match the data, or too many bad images: say which."""
        self.source.check_counts()
        self.source.bad_images.check()

    def sample_images(self, batch):
        return batch[0]

    def export(self, run_dir, export_dir, name=None):
        from trainers.export import export_model_dir

        return export_model_dir(run_dir.path, export_dir, name=name)
