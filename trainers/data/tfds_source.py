"""tensorflow-datasets, read with image decoding skipped so bad images are handled like every other source.

Downloads only when asked (`download=True`, the trainers' --download): training machines are often
offline, where tfds retries for minutes before failing, and a multi-hour download must not hide inside a
training run. Data sets that need manual files (imagenet2012) are prepared from data_dir's tarballs.
"""

import logging
import os

import tensorflow as tf
import tensorflow_datasets as tfds

from trainers.data.bad_images import LOGGER_NAME
from trainers.data.base import Source, class_names_for
from trainers.data.errors import DataError
from trainers.data.pipeline import Stream
from trainers.data.splits import holdout_count

SHUFFLE_BUFFER = 10_000
NAME_FEATURES = ("file_name", "filename", "image/filename", "id")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
EXAMPLES = "e.g. cifar10, cifar100, imagenet2012, imagenette"


def _first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _image_and_label_keys(features, spec):
    """(image feature, label feature) names when a data set declares no supervised keys: the first of each."""
    images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    if not images or not labels:
        raise DataError(f"{spec}: needs an Image and a ClassLabel feature, has {list(features.keys())}")
    return images[0], labels[0]


class TFDSSource(Source):
    """A tensorflow-datasets image classification data set, already prepared in data_dir."""

    def __init__(self, name, *, data_dir=None, validation_split=0, num_classes=None, seed=0, download=False):
        spec = f"tfds:{name}"
        if not name:
            raise DataError(f"{spec}: give a data set name after 'tfds:', {EXAMPLES}")
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.DatasetNotFoundError:
            raise DataError(f"{spec}: unknown tensorflow-datasets name {name!r} ({EXAMPLES})") from None
        except (AssertionError, ValueError) as e:
            raise DataError(f"{spec}: {_first_line(e)}") from None
        self._builder = builder
        features = builder.info.features
        keys = builder.info.supervised_keys
        if keys and len(keys) == 2 and all(isinstance(k, str) for k in keys):
            self._image_key, self._label_key = keys
        else:
            self._image_key, self._label_key = _image_and_label_keys(features, spec)
        self._name_key = next((k for k in NAME_FEATURES if k in features), None)
        self._decoders = {self._image_key: tfds.decode.SkipDecoding()}
        super().__init__(spec, class_names_for(features[self._label_key].names, num_classes, spec))
        self._prepare_from_manual_files(data_dir)
        if download and not builder.is_prepared():
            self._download()
        try:
            self._splits = self._split_names(validation_split)
            builder.as_dataset(split=self._splits["train"], decoders=self._decoders)
        except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as e:
            where = data_dir or os.path.dirname(os.path.dirname(builder.data_dir))
            raise DataError(
                f"{spec}: no prepared data for {name!r} in {where} ({_first_line(e)}). Pass --download "
                f"to fetch it now (needs internet), or prepare it elsewhere (`tfds build {name} --data_dir "
                "DIR`) and pass --data-dir DIR; for imagenet2012 put ILSVRC2012_img_train.tar and "
                "ILSVRC2012_img_val.tar in DIR/downloads/manual."
            ) from None

    def _download(self):
        logging.getLogger(LOGGER_NAME).warning("%s: downloading and preparing (needs internet)", self.spec)
        try:
            self._builder.download_and_prepare()
        except Exception as e:  # network, disk, checksum: all mean "no data"; say which
            raise DataError(
                f"{self.spec}: download failed ({type(e).__name__}: {_first_line(e)}). Without internet, "
                "prepare it elsewhere (`tfds build NAME --data_dir DIR`), copy DIR here and pass --data-dir DIR."
            ) from e

    def _prepare_from_manual_files(self, data_dir):
        """Builds a manual-download data set (imagenet2012) offline from archives found in data_dir."""
        builder = self._builder
        if not data_dir or not getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None) or builder.is_prepared():
            return
        for manual_dir in (os.path.join(data_dir, "downloads", "manual"), data_dir):
            if os.path.isdir(manual_dir) and any(n.endswith(ARCHIVE_SUFFIXES) for n in os.listdir(manual_dir)):
                logging.getLogger(LOGGER_NAME).warning("%s: preparing from %s, this takes hours", self.spec, manual_dir)
                config = tfds.download.DownloadConfig(manual_dir=manual_dir)
                try:
                    builder.download_and_prepare(download_config=config)
                except Exception as e:  # anything tfds raises while preparing is a data problem here
                    raise DataError(f"{self.spec}: preparing from {manual_dir} failed: {_first_line(e)}") from e
                return

    def _split_names(self, validation_split):
        """tfds split strings: validation is 'validation', else 'test', else held out of 'train'."""
        known = self._builder.info.splits
        if validation_split:
            total = known["train"].num_examples if "train" in known else self._cardinality("train")
            holdout = holdout_count(validation_split, total, self.spec)
            return {"train": f"train[:-{holdout}]", "validation": f"train[-{holdout}:]"}
        validation = "test" if "validation" not in known and "test" in known else "validation"
        return {"train": "train", "validation": validation}

    def _cardinality(self, tfds_split):
        ds = self._builder.as_dataset(split=tfds_split, decoders=self._decoders)
        count = int(ds.cardinality())
        return count if count >= 0 else int(ds.reduce(0, lambda n, _: n + 1))

    def _count(self, split):
        tfds_split = self._splits[split]
        try:
            return self._builder.info.splits[tfds_split].num_examples
        except (KeyError, ValueError):  # split sizes unknown (e.g. under tfds.testing.mock_data)
            return self._cardinality(tfds_split)

    def _num_files(self, tfds_split):
        try:
            return len(self._builder.info.splits[tfds_split].file_instructions)
        except (KeyError, ValueError):
            return 0

    def _stream(self, request):
        tfds_split = self._splits[request.split]
        n, i = request.num_pipelines, request.pipeline_id
        by_file = n > 1 and self._num_files(tfds_split) >= n
        read_config = tfds.ReadConfig(
            shuffle_seed=request.shuffle_seed,
            input_context=tf.distribute.InputContext(n, i, n) if by_file else None,
        )
        ds = self._builder.as_dataset(
            split=tfds_split, shuffle_files=request.shuffle, decoders=self._decoders, read_config=read_config
        )
        if n > 1 and not by_file:
            ds = ds.shard(n, i)
        if request.shuffle:
            ds = ds.shuffle(SHUFFLE_BUFFER, seed=request.shuffle_seed + i)
        image_key, label_key, name_key = self._image_key, self._label_key, self._name_key

        def parse(example):
            return {
                "data": example[image_key],
                "label": example[label_key],
                "name": example[name_key] if name_key else "",
                "bbox": tf.zeros([0, 4]),
            }

        split = request.split
        return Stream(ds, parse, lambda k: f"{self.spec} {split} example #{k}")
