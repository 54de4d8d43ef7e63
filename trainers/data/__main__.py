"""Data set chores from the command line.

    python -m trainers.data count DIR    # count TFRecord shards once, write DIR/counts.json

Every later start of a tfrecord:DIR run then reads the counts from DIR/counts.json instead of every record.
"""

import argparse
import logging
import os
import sys
import time

from trainers.data import counts
from trainers.data.errors import DataError


def _parser():
    parser = argparse.ArgumentParser(prog="python -m trainers.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    count = commands.add_parser(
        "count",
        help="count the records of TFRecord shards and write DIR/counts.json",
        description=(
            "Reads every record of DIR/train-*-of-* and DIR/validation-*-of-* once, writes the per-split "
            f"totals and per-shard counts (with shard names and sizes) to DIR/{counts.COUNT_FILE}, and prints "
            "the totals. Run it again after adding, removing or rewriting shards; training warns when the "
            "count file no longer matches the shards."
        ),
    )
    count.add_argument("dir", metavar="DIR", help="the directory of the TFRecord shards (local or gs://...)")
    count.add_argument(
        "--no-write",
        action="store_true",
        help=(
            "print the counts only, without writing DIR/counts.json (for a read-only DIR: pass the printed "
            "--num-examples value to training instead)"
        ),
    )
    return parser


def count(root, write=True):
    from trainers.data.tfrecord import find_shards  # imports TensorFlow

    root = os.path.expanduser(root)
    spec = f"tfrecord:{root}"
    shards = find_shards(root, spec)
    start = time.perf_counter()
    found = counts.count_directory(root, shards, spec, write=write)
    elapsed = time.perf_counter() - start
    for split, count in found.items():
        print(f"{split}: {count.total} records in {len(count.shards)} shards")
    totals = counts.format_num_examples({split: c.total for split, c in found.items()})
    print(f"counted in {elapsed:.1f} s; the same as --num-examples {totals}")
    if write:
        print(f"wrote {counts.count_file_path(root)}")


def main(argv=None):
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "count":
            count(args.dir, write=not args.no_write)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (OSError, counts.tf.errors.OpError) as e:
        reason = getattr(e, "message", e)
        print(f"error: cannot write {counts.count_file_path(args.dir)}: {reason}; try --no-write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
