"""Record counts of TFRecord shards: counted once, then read from DIR/counts.json; wrong counts are reported.

Shards are tiny and generated in tmp_path, so the file runs in seconds.
"""

import json
import logging
import os

import pytest
import tensorflow as tf
from test_data import EVAL, _encode, _example, _pixels, collect, make_tfrecords

from trainers import data
from trainers.data import DataError, counts
from trainers.data.__main__ import main

FIX = "python -m trainers.data count"


def _shards(root):
    return sorted(p for p in os.listdir(root) if p.startswith(("train-", "validation-")))


def _dataset(root, num_examples=None, **kwargs):
    """Train 3 x 4 records, validation 2 x 3."""
    make_tfrecords(root, shards=3, per_shard=4)
    make_tfrecords(root, split="validation", shards=2, per_shard=3)
    return data.open_source(f"tfrecord:{root}", num_classes=3, num_examples=num_examples, **kwargs)


def _corrupt_all_but_the_first_record(root):
    """Flips every byte of every shard, except the first train record (read at open time); sizes stay."""
    for i, name in enumerate(_shards(root)):
        path = os.path.join(root, name)
        content = bytearray(open(path, "rb").read())
        start = 8 + 4 + int.from_bytes(content[:8], "little") + 4 if i == 0 else 0
        content[start:] = bytes(b ^ 0xFF for b in content[start:])
        open(path, "wb").write(bytes(content))


def _no_counting(monkeypatch):
    def refuse(paths, spec=""):
        raise AssertionError(f"counted {len(paths)} shards by reading them")

    monkeypatch.setattr(counts, "count_records", refuse)


def _load(root):
    with open(os.path.join(root, counts.COUNT_FILE)) as f:
        return json.load(f)


def test_first_start_counts_and_writes_the_file_the_second_reads_no_record(tmp_path, monkeypatch):
    source = _dataset(tmp_path)
    assert (source.num_examples("train"), source.num_examples("validation")) == (12, 6)
    assert source.record_count("train").origin == "counted"
    written = _load(tmp_path)
    assert written["format"] == 1 and set(written["splits"]) == {"train", "validation"}
    assert written["splits"]["validation"]["total"] == 6
    assert written["splits"]["train"]["shards"] == {
        name: {"bytes": os.path.getsize(tmp_path / name), "records": 4} for name in _shards(tmp_path)[:3]
    }
    mtime = os.stat(tmp_path / counts.COUNT_FILE).st_mtime_ns

    _corrupt_all_but_the_first_record(tmp_path)
    paths = [str(tmp_path / name) for name in _shards(tmp_path)]
    with pytest.raises(DataError, match="cannot read the shards"):  # proof that any count would now fail
        counts.count_records(paths)
    source = data.open_source(f"tfrecord:{tmp_path}", num_classes=3)
    assert (source.num_examples("train"), source.num_examples("validation")) == (12, 6)
    count = source.record_count("train")
    assert count.origin == "count file" and count.source == str(tmp_path / counts.COUNT_FILE)
    assert os.stat(tmp_path / counts.COUNT_FILE).st_mtime_ns == mtime


def test_num_examples_gives_the_counts_without_reading(tmp_path, monkeypatch):
    make_tfrecords(tmp_path, shards=3, per_shard=4)
    make_tfrecords(tmp_path, split="validation", shards=2, per_shard=3)
    _no_counting(monkeypatch)
    source = data.open_source(f"tfrecord:{tmp_path}", num_classes=3, num_examples="train=12, validation=6")
    assert (source.num_examples("train"), source.num_examples("validation")) == (12, 6)
    assert source.record_count("validation").origin == "num_examples"
    assert not (tmp_path / counts.COUNT_FILE).exists()  # only counts read from the shards are written
    assert collect(source.dataset("validation", global_batch_size=4, **EVAL))[2] == [4, 2]


def test_a_matching_count_file_wins_over_num_examples_with_a_warning(tmp_path, caplog):
    _dataset(tmp_path).num_examples("train")
    with caplog.at_level(logging.WARNING, logger="trainers.data"):
        source = data.open_source(f"tfrecord:{tmp_path}", num_classes=3, num_examples="train=99")
        assert source.num_examples("train") == 12
    assert "num_examples train=99 ignored: the count file" in caplog.text


@pytest.mark.parametrize(
    "value, why",
    [
        ("train:12", "'train:12' has no '='"),
        ("train=12,test=3", r"unknown split 'test' \(train or validation\)"),
        ("train=many", "train count 'many' is not a whole number"),
        ("train=0", "train count 0 is not positive"),
        ("train=1,train=2", "train given twice"),
        ("", "'' has no '='"),
    ],
)
def test_malformed_num_examples_names_the_expected_form(tmp_path, value, why):
    make_tfrecords(tmp_path)
    with pytest.raises(DataError, match=rf"{why}; expected SPLIT=COUNT\[,SPLIT=COUNT\], e\.g\. train=1281167"):
        data.open_source(f"tfrecord:{tmp_path}", num_classes=3, num_examples=value)


def test_num_examples_is_refused_where_it_cannot_apply(tmp_path):
    make_tfrecords(tmp_path)
    with pytest.raises(DataError, match=r"validation count, but .* has no validation-\*-of-\* shards"):
        data.open_source(f"tfrecord:{tmp_path}", num_classes=3, num_examples="validation=5")
    with pytest.raises(DataError, match=r"applies to tfrecord:DIR only; synthetic knows its own size"):
        data.open_source("synthetic", num_examples="train=5")


def test_a_stale_count_file_is_ignored_with_a_warning_and_rewritten(tmp_path, caplog):
    _dataset(tmp_path).num_examples("train")
    make_tfrecords(tmp_path, shards=3, per_shard=5)  # the same names, rewritten: other sizes
    with caplog.at_level(logging.WARNING, logger="trainers.data"):
        source = data.open_source(f"tfrecord:{tmp_path}", num_classes=3)
        assert source.num_examples("train") == 15
    assert "does not match the train shards (train-00000-of-00003 is now" in caplog.text and FIX in caplog.text
    assert source.record_count("train").origin == "counted"
    assert source.record_count("validation").origin == "count file"  # its shards did not change
    assert _load(tmp_path)["splits"]["train"]["total"] == 15

    with tf.io.TFRecordWriter(str(tmp_path / "train-00003-of-00003")) as writer:  # one shard more
        writer.write(_example(_encode(_pixels(0)), 1, "extra.JPEG"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trainers.data"):
        assert data.open_source(f"tfrecord:{tmp_path}", num_classes=3).num_examples("train") == 16
    assert "(train-00003-of-00003 is new)" in caplog.text


def test_an_unreadable_count_file_is_recounted(tmp_path, caplog):
    make_tfrecords(tmp_path)
    (tmp_path / counts.COUNT_FILE).write_text('{"splits": {"train": {"total": 3}}}')
    with caplog.at_level(logging.WARNING, logger="trainers.data"):
        assert data.open_source(f"tfrecord:{tmp_path}", num_classes=3).num_examples("train") == 12
    assert "Ignoring the unreadable count file" in caplog.text and _load(tmp_path)["splits"]["train"]["total"] == 12


def test_an_unwritable_directory_says_how_to_write_the_count_file(tmp_path, monkeypatch, caplog):
    def read_only(root, splits):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(counts, "write_count_file", read_only)
    with caplog.at_level(logging.WARNING, logger="trainers.data"):
        assert _dataset(tmp_path).num_examples("train") == 12
    assert f"`{FIX} {tmp_path}`" in caplog.text
    assert "--num-examples train=12,validation=6" in caplog.text


def _edit_counts(root, split, records):
    content = _load(root)
    entry = content["splits"][split]
    for name, n in records.items():
        entry["shards"][name]["records"] = n
    entry["total"] = sum(s["records"] for s in entry["shards"].values())
    (root / counts.COUNT_FILE).write_text(json.dumps(content))


def test_a_wrong_count_stops_the_pipeline_naming_its_origin_and_the_fix(tmp_path):
    source = _dataset(tmp_path)
    source.num_examples("train")
    # Too many in the count file: the stream ends short.
    _edit_counts(tmp_path, "validation", {"validation-00001-of-00002": 5})
    source = data.open_source(f"tfrecord:{tmp_path}", num_classes=3)
    assert source.num_examples("validation") == 8
    pattern = rf"validation split ended after 6 records, fewer than the 8 records that the count file .*{FIX}"
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        collect(source.dataset("validation", global_batch_size=4, **EVAL))
    with pytest.raises(DataError, match=pattern):
        source.check_counts()

    # Too few by num_examples: found while training, at the window past the count (not trained on).
    os.remove(tmp_path / counts.COUNT_FILE)
    source = data.open_source(f"tfrecord:{tmp_path}", num_classes=3, num_examples="train=8")
    ds = source.dataset("train", global_batch_size=4, image_size=16, augment="none", training=True)
    pattern = r"train split holds more than the 8 records that num_examples / --num-examples \(train=8\)"
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern + ".*or correct num_examples"):
        collect(ds)


def test_each_input_pipeline_checks_its_share_of_the_count_file(tmp_path):
    _dataset(tmp_path).num_examples("train")
    # The total stays right (12); the shards' shares do not. Pipeline 0 reads shards 0 and 2, 1 reads shard 1.
    _edit_counts(tmp_path, "train", {"train-00000-of-00003": 5, "train-00001-of-00003": 3})
    source = data.open_source(f"tfrecord:{tmp_path}", num_classes=3)
    assert source.num_examples("train") == 12

    def share(pipeline):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline, num_replicas_in_sync=2)
        return source.dataset("train", global_batch_size=4, input_context=context, **EVAL)

    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"ended after 8 records, fewer than the 9 .*pipeline 0 of 2"
    ):
        collect(share(0))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"holds more than the 3 .*pipeline 1 of 2"):
        collect(share(1))


def test_complete_imagenet_shards_use_the_known_counts_and_a_mismatch_is_reported(tmp_path, monkeypatch):
    for split, (shards, _) in counts.IMAGENET.items():
        for i in range(shards):
            (tmp_path / f"{split}-{i:05d}-of-{shards:05d}").write_bytes(b"")  # empty shards are valid
    with tf.io.TFRecordWriter(str(tmp_path / "train-00000-of-01024")) as writer:  # read at open time
        writer.write(_example(_encode(_pixels(0)), 1, "first.JPEG"))
    _no_counting(monkeypatch)
    source = data.open_source(f"tfrecord:{tmp_path}")
    assert (source.num_examples("train"), source.num_examples("validation")) == (1_281_167, 50_000)
    assert source.record_count("train").origin == "imagenet" and not (tmp_path / counts.COUNT_FILE).exists()
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"ended after 0 records, .*known ImageNet .*{FIX}"):
        collect(source.dataset("validation", global_batch_size=4, image_size=16, augment="none", training=False))
    os.remove(tmp_path / "validation-00127-of-00128")  # no longer the complete set: counted
    monkeypatch.undo()
    assert data.open_source(f"tfrecord:{tmp_path}").record_count("validation").origin == "counted"


def test_count_command_counts_writes_and_prints(tmp_path, capsys):
    make_tfrecords(tmp_path, shards=3, per_shard=4)
    make_tfrecords(tmp_path, split="validation", shards=2, per_shard=3)
    assert main(["count", str(tmp_path), "--no-write"]) == 0
    assert not (tmp_path / counts.COUNT_FILE).exists()
    (tmp_path / counts.COUNT_FILE).write_text('{"format": 1, "splits": {}}')
    assert main(["count", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "train: 12 records in 3 shards" in out and "validation: 6 records in 2 shards" in out
    assert "--num-examples train=12,validation=6" in out and f"wrote {tmp_path / counts.COUNT_FILE}" in out
    assert _load(tmp_path)["splits"]["train"]["total"] == 12
    assert main(["count", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["count", "--help"])
    assert exit_info.value.code == 0 and "--no-write" in capsys.readouterr().out
