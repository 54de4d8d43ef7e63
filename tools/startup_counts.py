"""Time from start to the first record count of tfrecord:DIR: counting the shards vs reading DIR/counts.json.

    .venv/bin/python tools/startup_counts.py [--train-shards 1024] [--validation-shards 128] [--records 4]

Generates tiny Model Garden shards in a temporary directory, then times open_source() and
source.num_examples("train") in a fresh process per case (TensorFlow's import is not counted):
  first start    no count file: every shard is read, DIR/counts.json written
  second start   DIR/counts.json read (its shard names and sizes checked against the directory)
  num_examples   --num-examples given, no count file
  ImageNet names no count file, the complete ImageNet shard names: the known counts
The first two cases switch the recognition of ImageNet's shard names off, since 1024/128 shards are
named exactly like ImageNet's. The shards are tiny and freshly written (in the page cache), so the
counting time here is the per-shard overhead only; on real ImageNet it is reading ~140 GB.
"""

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _measure(directory, imagenet_names, num_examples):
    """Runs in the child: times opening and the first count, prints them as JSON."""
    sys.path.insert(0, ROOT)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from trainers import data
    from trainers.data import counts

    if not imagenet_names:
        counts.IMAGENET = {}
    start = time.perf_counter()
    source = data.open_source(f"tfrecord:{directory}", num_examples=num_examples)
    opened = time.perf_counter()
    train = source.num_examples("train")
    counted = time.perf_counter()
    validation = source.num_examples("validation")
    print(
        json.dumps(
            {
                "open_s": opened - start,
                "train_count_s": counted - opened,
                "total_s": counted - start,
                "train": train,
                "validation": validation,
                "origin": source.record_count("train").origin,
            }
        )
    )


def _generate(directory, train_shards, validation_shards, records):
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()

    def example(label, name):
        feature = {
            "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
            "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(value=[name.encode()])),
        }
        return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()

    for split, shards in (("train", train_shards), ("validation", validation_shards)):
        for shard in range(shards):
            with tf.io.TFRecordWriter(os.path.join(directory, f"{split}-{shard:05d}-of-{shards:05d}")) as writer:
                for i in range(records):
                    writer.write(example(i % 1000 + 1, f"{split}_{shard}_{i}.JPEG"))


def _child(directory, imagenet_names=False, num_examples=None):
    command = [sys.executable, os.path.abspath(__file__), "--measure", directory]
    if imagenet_names:
        command.append("--imagenet-names")
    if num_examples:
        command += ["--num-examples", num_examples]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-shards", type=int, default=1024, help="train-*-of-* shards to generate")
    parser.add_argument("--validation-shards", type=int, default=128, help="validation-*-of-* shards to generate")
    parser.add_argument("--records", type=int, default=4, help="records per shard")
    parser.add_argument("--measure", metavar="DIR", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--imagenet-names", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--num-examples", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        _measure(args.measure, args.imagenet_names, args.num_examples)
        return
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        _generate(directory, args.train_shards, args.validation_shards, args.records)
        print(
            f"{args.train_shards} train + {args.validation_shards} validation shards of {args.records} records "
            f"generated in {time.perf_counter() - start:.1f} s in {directory}"
        )
        train, validation = args.train_shards * args.records, args.validation_shards * args.records
        cases = [
            ("first start (counts, writes counts.json)", {}),
            ("second start (reads counts.json)", {}),
            ("num_examples given, no counts.json", {"num_examples": f"train={train},validation={validation}"}),
            ("ImageNet shard names, no counts.json", {"imagenet_names": True}),
        ]
        print(f"{'case':<44} {'open_source':>12} {'num_examples':>13} {'total':>8}  origin")
        for i, (name, kwargs) in enumerate(cases):
            if i == 2:
                os.remove(os.path.join(directory, "counts.json"))
            result = _child(directory, **kwargs)
            print(
                f"{name:<44} {result['open_s']:>11.3f}s {result['train_count_s']:>12.3f}s "
                f"{result['total_s']:>7.3f}s  {result['origin']} (train={result['train']})"
            )


if __name__ == "__main__":
    main()
