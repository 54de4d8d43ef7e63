"""Bookkeeping for images the pipelines had to skip.

Corrupt files are skipped so one bad JPEG cannot kill a week-long run, but they are counted and named,
because a pipeline that silently drops a fifth of ImageNet trains a worse model without telling anyone.
"""

import logging
import threading

from trainers.data.errors import DataError

LOGGER_NAME = "trainers.data"
MAX_NAMES = 10
BAD_FRACTION = 0.01
# Fail mid-epoch only when the evidence is overwhelming: enough images seen, and far above the threshold.
EARLY_MIN_SEEN = 1000
EARLY_FACTOR = 3


class BadImages:
    """Counts skipped images of one source, across all of its datasets and epochs.

    The pipelines call `record` and `note_good` from tf.py_function, possibly on several threads at once.
    """

    def __init__(self, source, threshold=BAD_FRACTION, quiet=False):
        self.source = source
        self.threshold = threshold
        self.quiet = quiet  # a statistics pass: the training epochs warn about the same files
        # Stop mid-epoch on overwhelming evidence; off on a cluster, where one worker stopping alone
        # would leave the others waiting in a collective (the engine decides there, on global counts).
        self.early_stop = True
        self.count = 0
        self.seen = 0
        self.names = []
        self._files = set()  # every bad file named so far: each is warned about once, however many passes
        self._lock = threading.Lock()
        self._log = logging.getLogger(LOGGER_NAME)

    def __repr__(self):
        return f"BadImages({self.source!r}: {self.count} bad of {self.seen} seen, first {self.names})"

    @property
    def distinct(self):
        """Bad files, each counted once however many epochs read it (`count` counts every skip); skips that
        came without names (a pipeline that could only count them) count as they came."""
        with self._lock:
            return len(self._files) or self.count

    @property
    def fraction(self):
        return self.count / self.seen if self.seen else 0.0

    def note_good(self, n):
        """Adds n images that decoded fine; returns n so tf.py_function has an output to depend on."""
        n = int(n)
        with self._lock:
            self.seen += n
        return n

    def record(self, names, count=None):
        """Adds skipped images; `count` may exceed len(names) when only a few could be named.

        Raises DataError early when the bad fraction is already far above the threshold: no point in
        finishing an epoch on a data set that is mostly broken.
        """
        count = len(names) if count is None else int(count)
        with self._lock:
            self.count += count
            self.seen += count
            new = [n for n in dict.fromkeys(names) if n not in self._files]  # a file bad each epoch, named once
            self._files.update(new)
            self.names.extend(new[: max(MAX_NAMES - len(self.names), 0)])
            totals = (self.count, self.seen)
            files = len(self._files)
        for name in [] if self.quiet else new:
            self._log.warning("%s: skipped unreadable image %s (%d bad files so far)", self.source, name, files)
        if count > len(names) and not self.quiet:
            self._log.warning("%s: skipped %d more unreadable images", self.source, count - len(names))
        overwhelming = totals[1] >= EARLY_MIN_SEEN and totals[0] > EARLY_FACTOR * self.threshold * totals[1]
        if overwhelming and self.early_stop:
            raise DataError(self.message())

    def message(self):
        return (
            f"{self.source}: {self.count} of {self.seen} images ({self.fraction:.1%}) could not be decoded, "
            f"more than the {self.threshold:.0%} allowed; first bad: {', '.join(self.names)}. "
            "Re-create or delete the broken files (zero bytes, truncated or not an image)."
        )

    def check(self):
        """Raises DataError when more than `threshold` of the images seen so far were bad."""
        with self._lock:
            too_many = self.count > self.threshold * self.seen
        if too_many:
            raise DataError(self.message())
