"""Record counts of TFRecord shards, known at start without reading ImageNet's 140 GB every time.

A split's count comes, in this order, from:
  1. the count file DIR/counts.json, written once beside the shards (by the first start that had to count,
     or by `python -m trainers.data count DIR`), when its shard names and sizes match the directory;
  2. num_examples (--num-examples), e.g. "train=1281167,validation=50000";
  3. the known ImageNet counts, when the split is the complete Model Garden ImageNet shard set
     (train-00000-of-01024 ... train-01023-of-01024, validation-00000-of-00128 ... validation-00127-of-00128);
  4. reading every record once, after which the count file is written (when DIR is writable).

The count file (JSON):
    {"format": 1,
     "splits": {"train": {"total": 1281167,
                          "shards": {"train-00000-of-01024": {"bytes": 146914356, "records": 1252}, ...}},
                "validation": {...}}}
A split whose shard names or sizes differ from the directory's is stale: ignored with a warning and recounted.
"""

import concurrent.futures
import dataclasses
import json
import logging
import os
import time
import uuid

import numpy as np
import tensorflow as tf

from trainers.data.bad_images import LOGGER_NAME
from trainers.data.errors import DataError

COUNT_FILE = "counts.json"
FORMAT = 1
SPLIT_NAMES = ("train", "validation")
IMAGENET = {"train": (1024, 1_281_167), "validation": (128, 50_000)}  # split -> (shards, records)
NUM_EXAMPLES_FORM = "SPLIT=COUNT[,SPLIT=COUNT], e.g. train=1281167,validation=50000"
COUNT_PARALLEL = 16  # shards read (or stat'ed) at once
READ_BUFFER = 8 << 20
STALE_NAMES = 3  # differences named in a stale count file's warning

log = logging.getLogger(LOGGER_NAME)


def fix_command(root):
    return f"python -m trainers.data count {root}"


@dataclasses.dataclass(frozen=True)
class SplitCount:
    """A split's record count and where it came from.

    origin: "count file", "num_examples", "imagenet", "counted" or "no shards".
    shards: shard file name -> records, when known (the count file and counting know them).
    """

    total: int
    origin: str
    source: str = ""  # the count file's path, or the num_examples text
    shards: dict | None = None

    def describe(self):
        """The origin in words, for messages."""
        return {
            "count file": f"the count file {self.source}",
            "num_examples": f"num_examples / --num-examples ({self.source})",
            "imagenet": "the known ImageNet counts (1281167 train / 50000 validation records)",
            "counted": "the count made at this start",
        }.get(self.origin, self.origin)


def parse_num_examples(value):
    """num_examples as {split: count}: None -> {}; "train=N,validation=M" or a {split: N} mapping.

    Raises DataError naming the expected form when it is malformed.
    """
    if value is None:
        return {}

    def bad(why):
        return DataError(f"num_examples {value!r}: {why}; expected {NUM_EXAMPLES_FORM}")

    if isinstance(value, dict):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, str):
        items = []
        for part in value.split(","):
            split, sep, number = part.partition("=")
            if not sep:
                raise bad(f"{part.strip()!r} has no '='")
            items.append((split.strip(), number.strip()))
    else:
        raise bad("not a string")
    counts = {}
    for split, number in items:
        if split not in SPLIT_NAMES:
            raise bad(f"unknown split {split!r} (train or validation)")
        if split in counts:
            raise bad(f"{split} given twice")
        try:
            count = number if isinstance(number, int) and not isinstance(number, bool) else int(str(number), 10)
        except ValueError:
            raise bad(f"{split} count {number!r} is not a whole number") from None
        if count < 1:
            raise bad(f"{split} count {count} is not positive")
        counts[split] = count
    return counts


def format_num_examples(totals):
    """{split: n} -> the num_examples text that gives these counts."""
    return ",".join(f"{split}={totals[split]}" for split in SPLIT_NAMES if split in totals)


def imagenet_total(split, names):
    """The known ImageNet record count when `names` are exactly its Model Garden shards, else None."""
    if split not in IMAGENET:
        return None
    shards, records = IMAGENET[split]
    expected = {f"{split}-{i:05d}-of-{shards:05d}" for i in range(shards)}
    return records if set(names) == expected else None


def shard_sizes(paths):
    """{file name: bytes}; stat'ed in parallel, since each is a round trip on gs://."""
    if not paths:
        return {}
    with concurrent.futures.ThreadPoolExecutor(min(COUNT_PARALLEL, len(paths))) as pool:
        lengths = list(pool.map(lambda p: tf.io.gfile.stat(p).length, paths))
    return {os.path.basename(p): int(n) for p, n in zip(paths, lengths, strict=True)}


def count_records(paths, spec=""):
    """{file name: records}, reading every record of every shard once (COUNT_PARALLEL shards at a time)."""
    if not paths:
        return {}
    names = tf.constant(list(paths))

    def records_of(i):  # each record of shard i, as i
        return tf.data.TFRecordDataset(names[i], buffer_size=READ_BUFFER).map(lambda _: i)

    owners = tf.data.Dataset.range(len(paths)).interleave(
        records_of,
        cycle_length=min(len(paths), COUNT_PARALLEL),
        num_parallel_calls=min(len(paths), COUNT_PARALLEL),
        deterministic=False,
    )
    counts = np.zeros(len(paths), np.int64)
    try:
        for batch in owners.batch(1 << 16):
            counts += np.bincount(batch.numpy(), minlength=len(paths))
    except tf.errors.OpError as e:
        raise DataError(f"{spec}: cannot read the shards to count them: {e.message}") from None
    return {os.path.basename(p): int(n) for p, n in zip(paths, counts, strict=True)}


def count_file_path(root):
    return os.path.join(root, COUNT_FILE)


def read_count_file(root):
    """The count file's splits {split: {"total": n, "shards": {name: {"bytes": b, "records": r}}}}.

    {} when there is none; a malformed one is ignored with a warning (and rewritten by the next count).
    """
    path = count_file_path(root)
    if not tf.io.gfile.exists(path):
        return {}
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            content = json.load(f)
        splits = content["splits"]
        for split, entry in splits.items():
            records = sum(int(s["records"]) for s in entry["shards"].values())
            if records != int(entry["total"]) or any(int(s["bytes"]) < 0 for s in entry["shards"].values()):
                raise ValueError(f"{split} total {entry['total']} is not the sum of its shards' records {records}")
        return {split: splits[split] for split in SPLIT_NAMES if split in splits}
    except (ValueError, KeyError, TypeError, AttributeError, tf.errors.OpError) as e:
        log.warning(
            "Ignoring the unreadable count file %s (%s: %s); counting the shards again.", path, type(e).__name__, e
        )
        return {}


def stale_reason(entry, sizes):
    """Why a count file entry does not describe the shards {name: bytes}; None when it does."""
    recorded = {name: int(s["bytes"]) for name, s in entry["shards"].items()}
    problems = [f"{n} is new" for n in sorted(set(sizes) - set(recorded))]
    problems += [f"{n} is gone" for n in sorted(set(recorded) - set(sizes))]
    problems += [
        f"{n} is now {sizes[n]} bytes, was {recorded[n]}"
        for n in sorted(set(sizes) & set(recorded))
        if sizes[n] != recorded[n]
    ]
    if not problems:
        return None
    more = f" and {len(problems) - STALE_NAMES} more differences" if len(problems) > STALE_NAMES else ""
    return "; ".join(problems[:STALE_NAMES]) + more


def write_count_file(root, splits):
    """Writes {split: {"total", "shards"}} to DIR/counts.json atomically (several workers may write at once).

    Raises OSError or tf.errors.OpError when DIR is not writable.
    """
    path = count_file_path(root)
    text = json.dumps({"format": FORMAT, "splits": {s: splits[s] for s in SPLIT_NAMES if s in splits}}, indent=1)
    temporary = os.path.join(root, f".{COUNT_FILE}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tf.io.gfile.GFile(temporary, "w") as f:
            f.write(text + "\n")
        tf.io.gfile.rename(temporary, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(temporary):
            tf.io.gfile.remove(temporary)
    return path


def _entry(counts, sizes):
    shards = {name: {"bytes": sizes[name], "records": counts[name]} for name in counts}
    return {"total": sum(counts.values()), "shards": shards}


def resolve(root, shards, num_examples=None, spec="", write=True):
    """{split: SplitCount} for `shards` ({split: [paths]}), reading records only when nothing else says.

    num_examples: as parsed by parse_num_examples. Counting writes the count file when `write` allows and
    DIR is writable; otherwise it warns how to write it.
    """
    path = count_file_path(root)
    result = {split: SplitCount(0, "no shards") for split, files in shards.items() if not files}
    wanted = {split: files for split, files in shards.items() if files}
    recorded = read_count_file(root)
    sizes = {}
    if recorded:
        sizes = shard_sizes([f for split in recorded if split in wanted for f in wanted[split]])
    valid = {}
    for split, entry in recorded.items():
        if split not in wanted:
            continue
        split_sizes = {os.path.basename(f): sizes[os.path.basename(f)] for f in wanted[split]}
        reason = stale_reason(entry, split_sizes)
        if reason:
            log.warning(
                "%s: the count file %s does not match the %s shards (%s): ignoring it for %s (`%s` rewrites it).",
                spec, path, split, reason, split, fix_command(root),
            )  # fmt: skip
            continue
        valid[split] = entry
        counts = {name: int(s["records"]) for name, s in entry["shards"].items()}
        result[split] = SplitCount(int(entry["total"]), "count file", path, counts)
        given = num_examples.get(split) if num_examples else None
        if given is not None and given != result[split].total:
            log.warning(
                "%s: num_examples %s=%d ignored: the count file %s, which matches the shards, says %d.",
                spec, split, given, path, result[split].total,
            )  # fmt: skip
    for split, files in wanted.items():
        if split in result:
            continue
        if num_examples and split in num_examples:
            result[split] = SplitCount(num_examples[split], "num_examples", format_num_examples(num_examples))
        elif (known := imagenet_total(split, [os.path.basename(f) for f in files])) is not None:
            result[split] = SplitCount(known, "imagenet")
    missing = {split: files for split, files in wanted.items() if split not in result}
    if not missing:
        return result
    files = [f for split_files in missing.values() for f in split_files]
    log.info(
        "%s: counting the records of %d shards once (a count file %s saves this next time).", spec, len(files), path
    )
    start = time.perf_counter()
    sizes.update(shard_sizes([f for f in files if os.path.basename(f) not in sizes]))
    counts = count_records(files, spec)
    for split, split_files in missing.items():
        split_counts = {os.path.basename(f): counts[os.path.basename(f)] for f in split_files}
        valid[split] = _entry(split_counts, sizes)
        result[split] = SplitCount(valid[split]["total"], "counted", "", split_counts)
    log.info(
        "%s: counted %s in %.1f s.",
        spec, format_num_examples({split: result[split].total for split in missing}), time.perf_counter() - start,
    )  # fmt: skip
    totals = format_num_examples({split: c.total for split, c in result.items() if c.origin != "no shards"})
    if write:
        try:
            write_count_file(root, valid)
        except (OSError, tf.errors.OpError) as e:
            log.warning(
                "%s: cannot write the count file %s (%s), so the next start counts the shards again. Write it "
                "once as a user who may write to %s: `%s`; or pass num_examples=%s (--num-examples %s).",
                spec, path, getattr(e, "message", e), root, fix_command(root), totals, totals,
            )  # fmt: skip
    return result


def count_directory(root, shards, spec="", write=True):
    """Counts every shard (ignoring any count file) and writes the count file; {split: SplitCount}."""
    sizes = shard_sizes([f for files in shards.values() for f in files])
    counts = count_records([f for files in shards.values() for f in files], spec)
    entries, result = {}, {}
    for split, files in shards.items():
        if not files:
            continue
        split_counts = {os.path.basename(f): counts[os.path.basename(f)] for f in files}
        entries[split] = _entry(split_counts, sizes)
        result[split] = SplitCount(entries[split]["total"], "counted", "", split_counts)
    if write:
        write_count_file(root, entries)
    return result


def wrong_count_message(spec, root, split, count, expected, seen, ended, share=""):
    """DataError text: a stream of `split` ended after `seen` records (ended) or went past `expected` (not).

    count: the split's SplitCount, for where the number came from; share: which input pipeline, if not all.
    """
    said = f"the {expected} records that {count.describe()} gives{share}"
    if ended:
        what, harm = f"ended after {seen} records, fewer than {said}", "cut every epoch short"
    else:
        what, harm = f"holds more than {said}", "leave records out of every epoch"
    fix = f"count the shards with `{fix_command(root)}` (it rewrites {count_file_path(root)})"
    if count.origin == "num_examples":
        fix += " or correct num_examples (--num-examples)"
    return f"{spec}: the {split} split {what}. Training on a wrong count would {harm} without telling anyone; {fix}."
