"""Hold-out splits and per-epoch orders of in-memory lists (digits, synthetic, folders)."""

import numbers

import numpy as np

from trainers.data.errors import DataError

# The hold-out split is the same whatever a run's --seed: a rerun with another seed must not validate on
# images the first run trained on. 0 keeps the split the seed-0 runs have always used.
SPLIT_SEED = 0


def holdout_count(validation_split, total, spec, default=0):
    """Examples to hold out: an int count, or a fraction in (0, 1); 0 means `default`."""
    if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real) or validation_split < 0:
        raise DataError(
            f"{spec}: validation_split must be a count >= 0 or a fraction in (0, 1), got {validation_split!r}"
        )
    if validation_split == 0:
        count = default
    elif validation_split < 1:
        count = round(validation_split * total)
        if count == 0 and total > 1:
            raise DataError(
                f"{spec}: --validation-split {validation_split} of {total} examples holds out none; {_what_fits(total)}"
            )
    elif float(validation_split).is_integer():
        count = int(validation_split)
    else:
        raise DataError(f"{spec}: validation_split {validation_split!r} is neither a count nor a fraction below 1")
    if count >= total:
        raise DataError(f"{spec}: cannot hold out {count} of only {total} examples for validation; {_what_fits(total)}")
    return count


def _what_fits(total):
    """The --validation-split values that work for `total` examples, spelled out."""
    if total < 2:
        return f"{total} example{'s' if total != 1 else ''} cannot be split: add images, or pass --validation-split 0"
    tenth = round(0.1 * total)
    fraction = f"0.1 (a tenth: {tenth} of {total})" if tenth >= 1 else f"{1 / total:.2g} (1 of {total})"
    return (
        f"pass --validation-split {fraction} or a count from 1 to {total - 1}, e.g. --validation-split {max(tenth, 1)}"
    )


def split_indices(total, holdout):
    """(train, validation) index arrays: the last `holdout` of a fixed (SPLIT_SEED) shuffle, each in order."""
    order = np.random.default_rng(SPLIT_SEED).permutation(total)
    cut = total - holdout
    return np.sort(order[:cut]), np.sort(order[cut:])


def epoch_order(count, request):
    """Positions this pipeline reads this epoch: all shuffled alike (same seed on every worker) when asked,
    then dealt out round-robin, so the pipelines' shares are disjoint and together cover the split."""
    order = np.arange(count)
    if request.shuffle:
        order = np.random.default_rng(request.shuffle_seed).permutation(count)
    return order[request.pipeline_id :: request.num_pipelines]
