"""What every data source offers the training engine, and the checks common to all of them."""

import dataclasses

import tensorflow as tf

from trainers.data import pipeline
from trainers.data.augment import AUGMENTATIONS
from trainers.data.bad_images import BadImages
from trainers.data.errors import DataError

SPLITS = ("train", "validation")


@dataclasses.dataclass(frozen=True)
class Request:
    """What a source needs to list one epoch of one input pipeline.

    shuffle: list this epoch in a (shuffle_seed) random order; training asks for it, a statistics pass may.
    """

    split: str
    training: bool
    shuffle: bool
    image_size: int
    shuffle_seed: int
    num_pipelines: int
    pipeline_id: int


def class_names_for(found, num_classes, spec):
    """The found class names, padded when the caller asked for a bigger head; too few is an error."""
    if num_classes is None:
        return list(found)
    if num_classes < len(found):
        raise DataError(
            f"{spec}: found {len(found)} classes but num_classes={num_classes}; labels would be out of "
            f"range. Pass num_classes={len(found)} or more."
        )
    return list(found) + [f"class_{i}" for i in range(len(found), num_classes)]


def _positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")


class Source:
    """A labelled image data set with a train and a validation split.

    Subclasses set num_classes and class_names and implement _stream (and _count).
    """

    label_hint = "labels must lie in 0..num_classes-1"

    def __init__(self, spec, class_names):
        self.spec = spec
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.bad_images = BadImages(spec)
        self._counts = {}
        self.count_problem = None  # a pipeline found a split's record count wrong: the DataError's text

    def __repr__(self):
        return f"<{type(self).__name__} {self.spec!r}: {self.num_classes} classes>"

    def _check_split(self, split):
        if split not in SPLITS:
            raise DataError(f"Unknown split {split!r}. Valid choices: {', '.join(map(repr, SPLITS))}")

    def num_examples(self, split):
        """Examples in `split` (before any bad ones are skipped); counted once where it has to be."""
        self._check_split(split)
        if split not in self._counts:
            self._counts[split] = int(self._count(split))
        return self._counts[split]

    def _count(self, split):
        raise NotImplementedError

    def check_counts(self):
        """Raises DataError when a pipeline found more or fewer records than num_examples said.

        The pipeline raises it too, but wrapped in a tf.errors.InvalidArgumentError; this gives it back plain.
        """
        if self.count_problem:
            raise DataError(self.count_problem)

    def _stream(self, request):
        raise NotImplementedError

    def _require(self, split):
        """Raises DataError when `split` has no data at all; sources override when counting is costly."""
        if self.num_examples(split) == 0:
            raise DataError(f"{self.spec}: the {split} split is empty; pass validation_split to hold some out.")

    def dataset(
        self,
        split,
        *,
        global_batch_size,
        image_size,
        augment,
        training,
        seed=0,
        erasing=0.0,
        epoch=0,
        skip_batches=0,
        input_context=None,
        shuffle=None,
        count_bad=True,
        service=None,
    ):
        """One epoch of (images float32 [n, s, s, 3] in 0..255 RGB, labels int32 [n]), n <= b.

        b is the per-replica batch when input_context is given (distribute_datasets_from_function), and
        then only this input pipeline's share of the data is read. Batch k of a pipeline is always its
        elements [k*b, (k+1)*b) minus the bad images among them (so n < b there), whatever came before;
        a batch of bad images only is left out. training=True augments and leaves out the last partial
        batch, and any batches after the last whole group of the replicas this pipeline feeds (so every
        step is whole); training=False keeps them.

        skip_batches counts global batches (training steps) already done this epoch: each pipeline skips
        skip_batches * global_batch_size / num_input_pipelines of its elements, i.e. skip_batches times
        its share of a global batch (skip_batches * b with one replica per pipeline), which ends on a batch
        boundary, so a resumed epoch yields exactly the batches the uninterrupted one would have, bad
        images or not. Skipped elements are never read or decoded.

        shuffle: None shuffles when training; True/False forces it (a shuffled, unaugmented pass gives an
        unbiased sample of a split). count_bad=False keeps this dataset's bad and good images out of
        source.bad_images, for a statistics pass over images the training epochs count anyway.

        erasing: with training=True, the probability of random erasing (augment.random_erasing) per image.

        service: a trainers.data_service.Service: decode and augment on its workers (see pipeline.build).
        """
        self._check_split(split)
        if augment not in AUGMENTATIONS:
            raise ValueError(f"Unknown augment {augment!r}. Valid choices: {', '.join(map(repr, AUGMENTATIONS))}")
        _positive_int(global_batch_size, "global_batch_size")
        _positive_int(image_size, "image_size")
        if isinstance(skip_batches, bool) or not isinstance(skip_batches, int) or skip_batches < 0:
            raise ValueError(f"skip_batches must be an int >= 0, got {skip_batches!r}")
        if shuffle not in (None, True, False):
            raise ValueError(f"shuffle must be None, True or False, got {shuffle!r}")
        self._require(split)
        pipelines, pipeline_id, replicas = 1, 0, 1
        batch_size = global_batch_size
        if input_context is not None:
            pipelines, pipeline_id = input_context.num_input_pipelines, input_context.input_pipeline_id
            replicas = input_context.num_replicas_in_sync
            batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        request = Request(
            split=split,
            training=bool(training),
            shuffle=bool(training) if shuffle is None else bool(shuffle),
            image_size=image_size,
            shuffle_seed=pipeline.derive_seed(seed, epoch, "shuffle"),
            num_pipelines=pipelines,
            pipeline_id=pipeline_id,
        )
        ds = pipeline.build(
            self._stream(request),
            bad_images=self.bad_images if count_bad else BadImages(self.spec, quiet=True),
            batch_size=batch_size,
            image_size=image_size,
            augment=augment,
            training=bool(training),
            erasing=erasing,
            aug_seed=pipeline.derive_seed(seed, epoch, split, "augment"),
            # Exact: the global batch is a multiple of the replicas, which are a multiple of the pipelines.
            skip=skip_batches * global_batch_size // pipelines,
            num_classes=self.num_classes,
            label_hint=self.label_hint,
            batches_per_step=replicas // pipelines,
            service=service,
        )
        if input_context is not None:
            # Already sharded here; tf.distribute must not shard a second time.
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
            ds = ds.with_options(options)
        return ds
