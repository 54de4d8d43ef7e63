"""The input pipelines: every source, bad-image bookkeeping, sharding, resuming and the errors people hit.

Data is generated in tmp_path, tiny, so the whole file runs in seconds on two cores.
"""

import hashlib
import io
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from trainers import data
from trainers.data import DataError

SIZE = 16  # generated images are SIZE x SIZE
GOOD_PER_CLASS = 34  # 3 classes: 102 good files, so one bad file stays under 1 %


def _pixels(seed, size=SIZE, value=None):
    if value is not None:
        return np.full((size, size, 3), value, np.uint8)
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _encode(pixels, fmt="JPEG"):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _bad_bytes(kind):
    """The kinds of broken image files found in the wild."""
    jpeg = _encode(_pixels(99))
    return {
        "zero_bytes": b"",
        "truncated": jpeg[: len(jpeg) // 2],
        "random": np.random.default_rng(5).integers(0, 256, 500, dtype=np.uint8).tobytes(),
        "text": b"<html>404 Not Found</html>" * 4,
        # Passes the cheap byte checks, so only the decoder finds out: the ignore_errors path.
        "garbage_between_markers": jpeg[:3] + bytes(300) + b"\xff\xd9",
    }[kind]


def make_folder(root, classes=("cat", "dog", "eel"), per_class=GOOD_PER_CLASS, bad=(), fmt="JPEG", flat=False):
    """root/<class>/<i>.jpg for each class; `bad` is [(relative path, bytes)]. Returns the good paths."""
    paths = []
    for c, name in enumerate(classes):
        os.makedirs(root / name, exist_ok=True)
        for i in range(per_class):
            path = root / name / f"img_{i:03d}.{fmt.lower()}"
            value = (c * per_class + i) * 2 if flat else None
            path.write_bytes(_encode(_pixels(c * 1000 + i, value=value), fmt))
            paths.append(str(path))
    for relative, content in bad:
        (root / relative).write_bytes(content)
    return paths


def _example(image_bytes, label, filename, boxes=None):
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(value=[filename.encode()])),
        "image/height": tf.train.Feature(int64_list=tf.train.Int64List(value=[SIZE])),
        "image/width": tf.train.Feature(int64_list=tf.train.Int64List(value=[SIZE])),
    }
    for i, key in enumerate(("xmin", "ymin", "xmax", "ymax")):
        values = [box[i] for box in boxes or []]
        feature[f"image/object/bbox/{key}"] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def make_tfrecords(root, split="train", shards=2, per_shard=6, classes=3, bad=(), labels=None):
    """Model Garden shards with 1-based labels; records whose index is in `bad` hold random bytes.

    Returns {filename: 0-based label} of the good records.
    """
    os.makedirs(root, exist_ok=True)
    good, index = {}, 0
    for shard in range(shards):
        path = os.path.join(root, f"{split}-{shard:05d}-of-{shards:05d}")
        with tf.io.TFRecordWriter(path) as writer:
            for _ in range(per_shard):
                label = labels[index] if labels else index % classes + 1
                name = f"{split}_{index:04d}.JPEG"
                if index in bad:
                    image = _bad_bytes("random")
                else:
                    image = _encode(_pixels(index, size=SIZE + 4 * (index % 3)))
                    good[name] = label - 1
                boxes = [(0.1, 0.2, 0.8, 0.9)] if index % 2 else None
                writer.write(_example(image, label, name, boxes))
                index += 1
    return good


def collect(ds):
    """(images, labels, batch sizes) of a whole dataset as NumPy."""
    images, labels, sizes = [], [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
        sizes.append(len(y))
    return np.concatenate(images), np.concatenate(labels), sizes


def _digests(images):
    return {hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images}


EVAL = dict(image_size=SIZE, augment="none", training=False)
EVAL_AUG_NONE = dict(augment="none", training=False)


# --- bad images -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["truncated", "zero_bytes", "random", "text", "garbage_between_markers"])
def test_one_corrupt_file_is_skipped_counted_and_named(tmp_path, kind, caplog):
    bad_name = os.path.join("dog", f"broken_{kind}.jpg")
    make_folder(tmp_path, bad=[(bad_name, _bad_bytes(kind))])
    source = data.open_source(f"folder:{tmp_path}")
    assert source.num_examples("train") == 3 * GOOD_PER_CLASS + 1
    with caplog.at_level(logging.WARNING, logger="trainers.data"):
        images, labels, sizes = collect(source.dataset("train", global_batch_size=16, **EVAL))
    assert len(labels) == 3 * GOOD_PER_CLASS
    assert sizes == [16, 16, 15, 16, 16, 16, 7]  # windows of positions; the bad file's (34) is one short
    assert images.shape[1:] == (SIZE, SIZE, 3) and images.dtype == np.float32
    assert np.bincount(labels).tolist() == [GOOD_PER_CLASS] * 3
    bad = source.bad_images
    assert bad.count == 1 and bad.seen == 3 * GOOD_PER_CLASS + 1
    assert bad.names == [str(tmp_path / bad_name)]
    assert f"broken_{kind}.jpg" in caplog.text
    bad.check()  # 1 of 103 is under 1 %


# Both ways a bad file is caught: the cheap byte check, and a decode error (the ignore_errors gap).
CAUGHT = ["truncated", "garbage_between_markers"]
# Unshuffled, a folder lists its files sorted: cat/broken.jpg is element 0, before cat/img_000.jpeg.
EARLY_BAD = "cat/broken.jpg"
N_FILES = 3 * GOOD_PER_CLASS + 1


@pytest.mark.parametrize("kind", CAUGHT)
@pytest.mark.parametrize("shuffle", [False, None])
def test_resuming_after_a_corrupt_file_gives_the_same_batches(tmp_path, kind, shuffle):
    make_folder(tmp_path, bad=[(EARLY_BAD, _bad_bytes(kind))])
    source = data.open_source(f"folder:{tmp_path}")
    kwargs = dict(global_batch_size=8, image_size=SIZE, augment="cifar", training=True, epoch=1, shuffle=shuffle)
    full = list(source.dataset("train", **kwargs))
    assert len(full) == N_FILES // 8
    for k in (1, len(full) - 1):  # shuffled, the bad file may sit anywhere: every k must resume exactly
        rest = list(source.dataset("train", skip_batches=k, **kwargs))
        assert len(rest) == len(full) - k
        for (x, y), (x_full, y_full) in zip(rest, full[k:], strict=True):
            np.testing.assert_array_equal(y.numpy(), y_full.numpy())
            np.testing.assert_array_equal(x.numpy(), x_full.numpy())


@pytest.mark.parametrize("kind", CAUGHT)
def test_training_epoch_skips_the_corrupt_file_too(tmp_path, kind):
    make_folder(tmp_path, bad=[(EARLY_BAD, _bad_bytes(kind))])
    source = data.open_source(f"folder:{tmp_path}")
    kwargs = dict(global_batch_size=8, image_size=SIZE, augment="cifar", training=True)
    _, labels, sizes = collect(source.dataset("train", shuffle=False, **kwargs))
    assert sizes == [7] + [8] * (N_FILES // 8 - 1)  # the bad file's window is one short; no batch is lost
    assert np.array_equal(labels, np.repeat([0, 1, 2], GOOD_PER_CLASS)[: 8 * (N_FILES // 8) - 1])
    assert source.bad_images.count == 1 and source.bad_images.names == [str(tmp_path / EARLY_BAD)]
    assert source.bad_images.seen == N_FILES  # the dropped partial window was read too
    _, _, sizes = collect(source.dataset("train", epoch=1, **kwargs))  # shuffled: wherever it lands
    assert len(sizes) == N_FILES // 8 and sum(sizes) >= 8 * len(sizes) - 1
    assert source.bad_images.count == 2 and source.bad_images.seen == 2 * N_FILES  # once per epoch
    source.bad_images.check()


def test_a_window_of_bad_images_only_is_left_out(tmp_path):
    paths = make_folder(tmp_path, per_class=10)
    source = data.open_source(f"folder:{tmp_path}")
    # Windows of 4: [0, 4) fail to decode (all lost to ignore_errors), [4, 8) fail both ways, 9 alone.
    kinds = {**dict.fromkeys(range(4), "garbage_between_markers"), 4: "truncated", 5: "garbage_between_markers"}
    kinds.update({6: "truncated", 7: "garbage_between_markers", 9: "garbage_between_markers"})
    for i, kind in kinds.items():
        with open(paths[i], "wb") as f:  # broken after opening, so the scan does not refuse the folder
            f.write(_bad_bytes(kind))
    for training, expected in ((False, [3, 4, 4, 4, 4, 2]), (True, [3, 4, 4, 4, 4])):
        kwargs = dict(global_batch_size=4, image_size=SIZE, augment="none", training=training, shuffle=False)
        _, labels, sizes = collect(source.dataset("train", **kwargs))
        assert sizes == expected  # no empty batches for the first two windows, and the third is one short
        kept = [i for i in range(8, 8 + len(expected) * 4) if i != 9 and i < 30]
        assert np.array_equal(labels, np.repeat([0, 1, 2], 10)[kept])
    assert source.bad_images.count == 18 and source.bad_images.seen == 60
    bad = [paths[i] for i in sorted(kinds)]
    assert source.bad_images.names == bad  # in stream order, each file once though it was read twice


def test_folder_over_one_percent_corrupt_is_refused_when_opened(tmp_path):
    bad = [(f"cat/bad_{i}.jpg", _bad_bytes("truncated")) for i in range(5)]
    make_folder(tmp_path, per_class=33, bad=bad)
    with pytest.raises(DataError, match=r"5 of 104 checked images .*first bad: .*cat/bad_0\.jpg"):
        data.open_source(f"folder:{tmp_path}")


def test_files_broken_after_opening_make_check_fail(tmp_path):
    paths = make_folder(tmp_path, per_class=10)
    source = data.open_source(f"folder:{tmp_path}")
    for path in paths[:3]:
        with open(path, "r+b") as f:
            f.truncate(40)
    _, labels, _ = collect(source.dataset("train", global_batch_size=8, **EVAL))
    assert len(labels) == 27 and source.bad_images.count == 3
    with pytest.raises(DataError, match=r"3 of 30 images .*first bad: .*cat/img_000\.jpeg"):
        source.bad_images.check()


def test_bad_images_stops_early_when_most_images_are_bad():
    bad = data.BadImages("demo")
    bad.note_good(900)
    bad.record(["a.jpg"] * 10)
    with pytest.raises(DataError, match=r"demo: 110 of 1010 images .*first bad: a\.jpg"):
        bad.record(["b.jpg"] * 100)


# --- tfrecord ---------------------------------------------------------------------------------------------


def test_tfrecord_shards_skip_the_corrupt_record_and_map_labels_to_zero_based(tmp_path):
    good = make_tfrecords(tmp_path, bad={7})
    make_tfrecords(tmp_path, split="validation", shards=1, per_shard=5)
    source = data.open_source(f"tfrecord:{tmp_path}", num_classes=3)
    assert source.num_examples("train") == 12 and source.num_examples("validation") == 5
    _, labels, _ = collect(source.dataset("train", global_batch_size=4, **EVAL))
    assert sorted(labels.tolist()) == sorted(good.values()) and set(labels) == {0, 1, 2}
    assert source.bad_images.count == 1 and source.bad_images.names == ["train_0007.JPEG"]
    with pytest.raises(DataError, match=r"1 of 12 images .*train_0007\.JPEG"):
        source.bad_images.check()
    for augment in ("inception", "scale"):  # the fused JPEG crop, boxes, and resizing of mixed sizes
        x, y, sizes = collect(
            source.dataset("train", global_batch_size=4, image_size=12, augment=augment, training=True)
        )
        assert x.shape == (11, 12, 12, 3) and sorted(sizes) == [3, 4, 4]  # the bad record's window is short
        x, _, _ = collect(
            source.dataset("validation", global_batch_size=4, image_size=12, augment=augment, training=False)
        )
        assert x.shape == (5, 12, 12, 3) and 0 <= x.min() and x.max() <= 255


def test_tfrecord_label_zero_is_refused_at_open_time(tmp_path):
    make_tfrecords(tmp_path, labels=[0] * 12)
    with pytest.raises(DataError, match=r"image/class/label 0, outside 1\.\.1000"):
        data.open_source(f"tfrecord:{tmp_path}")


def test_tfrecord_label_above_num_classes_fails_the_pipeline(tmp_path):
    make_tfrecords(tmp_path, labels=[1] * 11 + [9])
    source = data.open_source(f"tfrecord:{tmp_path}", num_classes=3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"num_classes=3.*labels 1\.\.3"):
        collect(source.dataset("train", global_batch_size=4, **EVAL))


def test_tfrecord_without_validation_shards_says_so(tmp_path):
    make_tfrecords(tmp_path)
    source = data.open_source(f"tfrecord:{tmp_path}")
    with pytest.raises(DataError, match=r"no validation-\*-of-\* shards"):
        source.dataset("validation", global_batch_size=4, **EVAL)


# --- tfds, digits, synthetic ------------------------------------------------------------------------------


def test_tfds_cifar10_under_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=20):
        source = data.open_source("tfds:cifar10")
        assert source.num_classes == 10 and len(source.class_names) == 10
        assert source.num_examples("train") == 20
        ds = source.dataset("train", global_batch_size=8, image_size=32, augment="cifar", training=True)
        x, y, sizes = collect(ds)
    assert sizes == [8, 8] and x.shape == (16, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
    assert 0 <= x.min() and x.max() <= 255 and 0 <= y.min() and y.max() < 10
    assert source.bad_images.count == 0 and source.bad_images.seen == 20  # the dropped 4 were read too


def test_digits():
    source = data.open_source("digits")
    assert source.num_classes == 10 and source.class_names == [str(d) for d in range(10)]
    assert source.num_examples("train") + source.num_examples("validation") == 1797
    assert source.num_examples("validation") == 297
    x, y, sizes = collect(source.dataset("validation", global_batch_size=100, image_size=32, **EVAL_AUG_NONE))
    assert x.shape == (297, 32, 32, 3) and sizes == [100, 100, 97] and set(y) == set(range(10))
    assert x.min() == 0 and 250 <= x.max() <= 255
    assert np.array_equal(x[..., 0], x[..., 2])  # grey replicated to RGB
    x, _, sizes = collect(
        source.dataset("train", global_batch_size=256, image_size=32, augment="pad_crop", training=True)
    )
    assert x.shape == (1280, 32, 32, 3) and sizes == [256] * 5
    other = data.open_source("digits", validation_split=100)
    assert (other.num_examples("train"), other.num_examples("validation")) == (1697, 100)


@pytest.mark.parametrize("augment", data.AUGMENTATIONS)
def test_every_augmentation_gives_image_size(augment):
    source = data.open_source("synthetic", num_classes=5)
    for training in (True, False):
        ds = source.dataset("validation", global_batch_size=64, image_size=20, augment=augment, training=training)
        x, y, _ = collect(ds)
        assert x.shape[1:] == (20, 20, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 255
        assert y.max() < 5


def test_random_erasing_replaces_one_rectangle_with_noise_and_keeps_the_crops():
    from trainers.data import augment as aug

    image = tf.fill([32, 32, 3], 100.0)
    erased_count, areas = 0, []
    for i in range(300):
        seed = tf.constant([3, i], tf.int64)
        out = aug.random_erasing(image, 0.5, seed).numpy()
        assert np.array_equal(out, aug.random_erasing(image, 0.5, seed).numpy())  # stateless
        changed = (out != 100.0).any(axis=2)
        if not changed.any():
            continue
        erased_count += 1
        rows, cols = np.where(changed)
        box = np.zeros_like(changed)
        box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        # One rectangle (noise can equal 100 by chance: the changed pixels fill their bounding box but a few).
        assert changed[box].mean() > 0.97 and not changed[~box].any()
        areas.append(box.sum() / changed.size)
        assert out.min() >= 0 and out.max() <= 255
    assert 120 <= erased_count <= 180  # p = 0.5 of 300: 150 +- 5 standard deviations
    assert min(areas) >= 0.01 and max(areas) <= 0.41 and 0.1 < np.mean(areas) < 0.25
    assert np.array_equal(aug.random_erasing(image, 0.0, tf.constant([3, 0], tf.int64)), image)

    example = {"image": tf.cast(tf.random.stateless_uniform([32, 32, 3], [1, 2], 0, 255), tf.uint8)}
    seed = tf.constant([5, 6], tf.int64)
    plain = aug.train_image(example, "cifar", 32, seed).numpy()
    always = aug.train_image(example, "cifar", 32, seed, erasing=1.0).numpy()
    differs = (plain != always).any(axis=2)
    assert 0 < differs.mean() <= 0.41  # the same crop and flip, one rectangle of it erased
    assert np.array_equal(plain[~differs], always[~differs])


def test_random_erasing_touches_training_batches_only():
    source = data.open_source("synthetic", num_classes=5)

    def images(split, training, erasing):
        ds = source.dataset(
            split, global_batch_size=64, image_size=16, augment="cifar", training=training, erasing=erasing
        )
        return collect(ds)[0]

    assert np.array_equal(images("validation", False, 1.0), images("validation", False, 0.0))
    erased, plain = images("train", True, 1.0), images("train", True, 0.0)
    assert np.array_equal(erased, images("train", True, 1.0))
    changed = (erased != plain).any(axis=3).mean(axis=(1, 2))
    assert changed.shape == (1024,) and (changed > 0).mean() > 0.95 and changed.max() <= 0.45  # 16x16: whole pixels


def test_training_drops_the_remainder_and_evaluation_keeps_it():
    source = data.open_source("synthetic")
    assert source.num_examples("train") == 1024 and source.num_examples("validation") == 256
    _, _, sizes = collect(source.dataset("validation", global_batch_size=100, image_size=8, **EVAL_AUG_NONE))
    assert sizes == [100, 100, 56]
    ds = source.dataset("validation", global_batch_size=100, image_size=8, augment="none", training=True)
    assert collect(ds)[2] == [100, 100]
    ds = source.dataset("validation", global_batch_size=100, image_size=8, shuffle=True, **EVAL_AUG_NONE)
    assert collect(ds)[2] == [100, 100, 56]  # shuffled but not training: the remainder stays


def test_epochs_are_shuffled_differently_but_reproducibly():
    source = data.open_source("synthetic", seed=3)

    def epoch(e, seed=0):
        ds = source.dataset(
            "train", global_batch_size=64, image_size=8, augment="cifar", training=True, seed=seed, epoch=e
        )
        return collect(ds)[:2]

    first, again, second = epoch(0), epoch(0), epoch(1)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[1], second[1])
    assert not np.array_equal(first[1], epoch(0, seed=1)[1])


def test_skip_batches_resumes_mid_epoch():
    source = data.open_source("synthetic")
    kwargs = dict(global_batch_size=32, image_size=8, augment="cifar", training=True, epoch=2)
    x, y, _ = collect(source.dataset("train", **kwargs))
    x_rest, y_rest, sizes = collect(source.dataset("train", skip_batches=5, **kwargs))
    assert len(sizes) == 1024 // 32 - 5
    assert np.array_equal(x_rest, x[5 * 32 :]) and np.array_equal(y_rest, y[5 * 32 :])


@pytest.mark.parametrize("training", [False, True])
def test_input_pipelines_read_disjoint_halves(training):
    source = data.open_source("synthetic")
    kwargs = dict(global_batch_size=16, image_size=8, augment="none", training=training)
    x, _, _ = collect(source.dataset("validation", **kwargs))
    halves = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline, num_replicas_in_sync=2)
        half, _, sizes = collect(source.dataset("validation", input_context=context, **kwargs))
        assert set(sizes) == {8}  # per-replica batches
        halves.append(_digests(half))
    assert len(halves[0]) == len(halves[1]) == 128 and not halves[0] & halves[1]
    assert halves[0] | halves[1] == _digests(x)


def test_folder_shards_by_file_and_holds_out_validation(tmp_path):
    make_folder(tmp_path, per_class=10, fmt="PNG", flat=True)  # file i is a flat 2*i grey, lossless
    source = data.open_source(f"folder:{tmp_path}", validation_split=6, seed=1)
    assert source.class_names == ["cat", "dog", "eel"]
    assert (source.num_examples("train"), source.num_examples("validation")) == (24, 6)
    seen = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline, num_replicas_in_sync=2)
        for split in ("train", "validation"):
            x, y, _ = collect(source.dataset(split, global_batch_size=4, input_context=context, **EVAL))
            values = x[:, 0, 0, 0].astype(int) // 2
            assert np.array_equal(y, values // 10)  # labels follow the folder of each file
            seen += values.tolist()
    assert sorted(seen) == list(range(30))


def test_holdout_split_does_not_depend_on_the_training_seed(tmp_path):
    make_folder(tmp_path, per_class=10)
    folders = [data.open_source(f"folder:{tmp_path}", validation_split=6, seed=seed) for seed in (0, 5)]
    digits = [data.open_source("digits", seed=seed) for seed in (0, 5)]
    for first, second in (folders, digits):
        files = [getattr(s, "_files", None) or {k: (v, None) for k, v in s._indices.items()} for s in (first, second)]
        assert np.array_equal(files[0]["validation"][0], files[1]["validation"][0])
        assert np.array_equal(files[0]["train"][0], files[1]["train"][0])
        train, validation = set(files[0]["train"][0].tolist()), set(files[0]["validation"][0].tolist())
        assert not train & validation and len(train | validation) in (30, 1797)
    # The same split the seed-0 runs made before it stopped following the seed.
    expected = np.sort(np.random.default_rng(0).permutation(1797)[1797 - 297 :])
    assert np.array_equal(digits[1]._indices["validation"], expected)


def test_shuffled_statistics_pass_samples_every_class_and_counts_nothing(tmp_path):
    make_folder(tmp_path, fmt="PNG", flat=True, bad=[(EARLY_BAD, _bad_bytes("garbage_between_markers"))])
    source = data.open_source(f"folder:{tmp_path}")
    kwargs = dict(global_batch_size=8, **EVAL)
    x, y, sizes = collect(source.dataset("train", shuffle=True, count_bad=False, **kwargs))
    assert set(y[: len(y) // 3]) == {0, 1, 2}  # a third of the pass holds every class, not only cat
    assert sorted(x[:, 0, 0, 0].astype(int) // 2) == list(range(3 * GOOD_PER_CLASS))  # each image once
    assert np.array_equal(y, x[:, 0, 0, 0].astype(int) // 2 // GOOD_PER_CLASS)
    assert sum(sizes) == 3 * GOOD_PER_CLASS and len(sizes) == -(-N_FILES // 8)  # the partial window too
    assert source.bad_images.count == 0 and source.bad_images.seen == 0
    _, y_plain, _ = collect(source.dataset("train", **kwargs))
    assert set(y_plain[: len(y_plain) // 3]) == {0}  # unshuffled: cat first
    assert source.bad_images.count == 1 and source.bad_images.seen == N_FILES


def test_tfrecord_shuffles_when_asked_without_training(tmp_path):
    make_tfrecords(tmp_path, per_shard=20)
    source = data.open_source(f"tfrecord:{tmp_path}", num_classes=3)
    kwargs = dict(global_batch_size=8, **EVAL)
    plain, _, _ = collect(source.dataset("train", **kwargs))
    shuffled, _, sizes = collect(source.dataset("train", shuffle=True, **kwargs))
    assert sizes == [8] * 5  # not training: the last, partial window stays
    digests = [[hashlib.sha1(np.ascontiguousarray(i).tobytes()).hexdigest() for i in x] for x in (plain, shuffled)]
    assert digests[0] != digests[1] and sorted(digests[0]) == sorted(digests[1])


def test_folder_with_train_and_val_subfolders(tmp_path):
    make_folder(tmp_path / "train", per_class=4)
    make_folder(tmp_path / "val", classes=("cat", "eel"), per_class=2)
    source = data.open_source(f"folder:{tmp_path}")
    assert (source.num_examples("train"), source.num_examples("validation")) == (12, 4)
    _, y, _ = collect(source.dataset("validation", global_batch_size=8, **EVAL))
    assert sorted(y.tolist()) == [0, 0, 2, 2]
    make_folder(tmp_path / "only" / "train", per_class=4)  # train/ alone: hold out from it
    source = data.open_source(f"folder:{tmp_path / 'only'}", validation_split=0.25)
    assert source.class_names == ["cat", "dog", "eel"]
    assert (source.num_examples("train"), source.num_examples("validation")) == (9, 3)


def test_folder_with_train_and_test_subfolders_validates_on_test(tmp_path, caplog):
    make_folder(tmp_path / "train", per_class=4)
    make_folder(tmp_path / "test", per_class=2)
    with caplog.at_level(logging.INFO, logger="trainers.data"):
        source = data.open_source(f"folder:{tmp_path}", validation_split=5000)  # the CIFAR recipe's default
    assert (source.num_examples("train"), source.num_examples("validation")) == (12, 6)
    assert f"folder:{tmp_path}: training on train/, validating on test/ (--validation-split 5000 is not used)" in (
        caplog.text
    )
    make_folder(tmp_path / "val", per_class=1)  # val/ beats test/, which is then left alone
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="trainers.data"):
        source = data.open_source(f"folder:{tmp_path}")
    assert source.num_examples("validation") == 3 and "validating on val/ (test/ is not read)" in caplog.text


def test_class_folders_named_like_splits_are_still_classes(tmp_path):
    make_folder(tmp_path, classes=("test", "train"), per_class=3)
    source = data.open_source(f"folder:{tmp_path}", validation_split=2)
    assert source.class_names == ["test", "train"] and source.num_examples("train") == 4


@pytest.mark.parametrize(
    "layout, message",
    [
        (
            {"train": ("cat", "dog"), "valid": ("cat", "dog")},
            r"mixes split folders \(train/\) with other folders \(valid/\); only train/ and one of "
            r"validation/, val/ or test/ count as splits",
        ),
        (
            {"train": ("cat",), "validation": ("cat",), "val": ("cat",)},
            r"has both validation/ and val/; which one validates is ambiguous. Keep one of them",
        ),
        ({"val": ("cat",), "test": ("cat",)}, r"has test/, val/ but no train/; a split layout is DIR/train/"),
        (
            {"train": ("cat", "dog"), "test": ()},
            r"test has no class subfolders \(2 images directly in it: an unlabelled test set\?\); in a split layout "
            r"train/ and one of validation/, val/ or test/ each hold <class_name>/ folders",
        ),
    ],
)
def test_wrong_split_layouts_name_the_folders_that_count(tmp_path, layout, message):
    for split, classes in layout.items():
        if classes:
            make_folder(tmp_path / split, classes=classes, per_class=2)
        else:
            (tmp_path / split).mkdir()
            for i in range(2):
                (tmp_path / split / f"{i}.jpg").write_bytes(_encode(_pixels(i)))
    with pytest.raises(DataError, match=message):
        data.open_source(f"folder:{tmp_path}")


def test_holding_out_more_than_the_folder_has_says_what_to_pass(tmp_path):
    make_folder(tmp_path, per_class=10)
    with pytest.raises(DataError) as error:
        data.open_source(f"folder:{tmp_path}", validation_split=5000)
    assert str(error.value) == (
        f"folder:{tmp_path}: cannot hold out 5000 of only 30 examples for validation; pass --validation-split 0.1 "
        "(a tenth: 3 of 30) or a count from 1 to 29, e.g. --validation-split 3"
    )
    with pytest.raises(DataError, match=r"--validation-split 0.01 of 30 examples holds out none; pass "):
        data.open_source(f"folder:{tmp_path}", validation_split=0.01)


def test_ten_crop():
    image = tf.constant(_pixels(0, size=40)[:, :30])  # 40 x 30: shorter side 30 -> 37 for image_size 32
    crops = data.ten_crop(image, 32)
    assert crops.shape == (10, 32, 32, 3) and crops.dtype == tf.float32
    assert np.array_equal(crops[5].numpy(), crops[0].numpy()[:, ::-1])


# --- clear errors ----------------------------------------------------------------------------------------


def _empty_dir(tmp_path):
    return tmp_path


def _loose_images(tmp_path):
    (tmp_path / "a.jpg").write_bytes(_encode(_pixels(0)))
    return tmp_path


def _empty_classes(tmp_path):
    for name in ("n01440764", "n01443537"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "notes.txt").write_text("not an image")
    return tmp_path


@pytest.mark.parametrize(
    "make, spec, message",
    [
        (
            lambda p: p / "missing",
            "folder",
            r"missing does not exist; expected DIR/<class_name>/<image>\.jpg",
        ),
        (_empty_dir, "folder", r"has no class subfolders \(nothing usable in it\).*train/n01440764/"),
        (
            _loose_images,
            "folder",
            r"no class subfolders \(1 images directly in it\); expected DIR/<class_name>",
        ),
        (_empty_classes, "folder", r"no \.jpg/\.jpeg/\.png images in the 2 class subfolders.*'n01440764'"),
        (lambda p: p / "missing", "tfrecord", r"does not exist; expected DIR/train-00000-of-01024"),
        (_loose_images, "tfrecord", r"no train-\*-of-\* or validation-\*-of-\* shards .*\['a\.jpg'\]"),
    ],
)
def test_bad_paths_show_the_expected_layout(tmp_path, make, spec, message):
    with pytest.raises(DataError, match=message):
        data.open_source(f"{spec}:{make(tmp_path)}")


def test_unknown_spec_lists_the_valid_forms():
    with pytest.raises(DataError, match=r"Unknown data spec 'imagenet'. Valid forms: tfds:NAME, tfrecord:DIR"):
        data.open_source("imagenet")


def test_unknown_tfds_name():
    with pytest.raises(DataError, match=r"unknown tensorflow-datasets name 'cifar11' \(e\.g\. cifar10"):
        data.open_source("tfds:cifar11")


@pytest.mark.parametrize("validation_split", [0, 5000])
def test_tfds_without_downloaded_data_says_to_download_or_pass_data_dir(tmp_path, validation_split):
    with pytest.raises(DataError, match=r"no prepared data for 'cifar10' in .*Pass --download.*--data-dir DIR"):
        data.open_source("tfds:cifar10", data_dir=str(tmp_path), validation_split=validation_split)


def test_tfds_download_failure_is_a_data_error(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def offline(self, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'www.cs.toronto.edu'")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(DataError, match=r"download failed \(ConnectionError: Failed to resolve.*tfds build"):
        data.open_source("tfds:cifar10", data_dir=str(tmp_path), download=True)


def test_bad_arguments():
    source = data.open_source("synthetic")
    with pytest.raises(ValueError, match=r"Unknown augment 'flip'"):
        source.dataset("train", global_batch_size=8, image_size=8, augment="flip", training=True)
    with pytest.raises(DataError, match=r"Unknown split 'test'"):
        source.num_examples("test")
    with pytest.raises(DataError, match=r"cannot hold out 2000 of only 1797"):
        data.open_source("digits", validation_split=2000)
    with pytest.raises(DataError, match=r"found 10 classes but num_classes=5"):
        data.open_source("digits", num_classes=5)


def test_folder_without_validation_split_has_no_validation_data(tmp_path):
    make_folder(tmp_path, per_class=2)
    source = data.open_source(f"folder:{tmp_path}")
    assert source.num_examples("validation") == 0
    with pytest.raises(DataError, match=r"validation split is empty; pass validation_split"):
        source.dataset("validation", global_batch_size=4, **EVAL)


# --- tf.distribute ---------------------------------------------------------------------------------------

MIRRORED = textwrap.dedent(
    """
    import sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from trainers import data

    source = data.open_source("folder:" + sys.argv[1])
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    def dataset_fn(context):
        return source.dataset("train", global_batch_size=8, image_size=16, augment="cifar", training=True,
                              input_context=context)

    dist = strategy.distribute_datasets_from_function(dataset_fn)

    @tf.function
    def step(images, labels):
        return tf.reduce_sum(images) * 0 + tf.cast(tf.shape(labels)[0], tf.float32)

    total = 0
    for images, labels in dist:
        assert len(strategy.experimental_local_results(images)) == 2
        # Every step is whole: no replica gets an empty batch (BatchNorm of nothing is NaN).
        assert all(int(tf.shape(y)[0]) > 0 for y in strategy.experimental_local_results(labels))
        total += int(strategy.reduce("SUM", strategy.run(step, (images, labels)), axis=None))
    source.bad_images.check()
    print("examples", total, "bad", source.bad_images.count, "seen", source.bad_images.seen)
    """
)


def test_folder_through_mirrored_strategy_on_two_cpus(tmp_path):
    make_folder(tmp_path / "data", bad=[("cat/broken.jpg", _bad_bytes("garbage_between_markers"))])
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "data")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # 103 files: 25 windows of 4 per replica batch (the last 3 files dropped), one of them 3 short for the
    # bad file; 12 steps of 2 windows, the odd 25th unused; all 103 files were read.
    assert "examples 95 bad 1 seen 103" in done.stdout


def test_ten_crop_batch_matches_ten_crop_per_image():
    side = data.eval_short_side(24)
    images = tf.random.stateless_uniform([3, side, side, 3], [1, 2], 0, 255)
    batch = data.ten_crop_batch(images, 24)
    assert batch.shape == (30, 24, 24, 3)
    for i in range(3):
        expected = data.ten_crop(images[i], 24)
        np.testing.assert_allclose(batch.numpy()[i::3], expected.numpy(), atol=1e-4)


def test_a_file_bad_every_epoch_is_warned_about_and_counted_once(tmp_path, caplog):
    bad = [(EARLY_BAD, _bad_bytes("truncated")), ("dog/broken.jpg", _bad_bytes("text"))]
    make_folder(tmp_path, per_class=70, bad=bad)  # 2 of 212: under the 1 % limit
    source = data.open_source(f"folder:{tmp_path}")
    kwargs = dict(global_batch_size=8, image_size=SIZE, augment="cifar", training=True)
    with caplog.at_level(logging.WARNING, logger="trainers.data"):
        for epoch in range(3):
            collect(source.dataset("train", epoch=epoch, **kwargs))
    warnings = [r.getMessage() for r in caplog.records if "skipped unreadable image" in r.getMessage()]
    assert len(warnings) == 2 and "(2 bad files so far)" in warnings[-1], warnings
    assert source.bad_images.distinct == 2 and source.bad_images.count == 6  # 2 files, skipped in 3 epochs
