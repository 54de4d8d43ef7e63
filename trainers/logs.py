"""TensorBoard writers and the console: what a person watches while a run trains.

Nothing here imports TensorFlow at module level: the command line sets up logging (and quiets TensorFlow's
start-up) with `setup_logging` before TensorFlow is loaded, and `--help` stays fast.
"""

import logging
import math
import os
import re
import sys
import time

log = logging.getLogger("trainers")

FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
HANDLER_NAME = "trainers-console"
# TF_CPP_MIN_LOG_LEVEL when quiet: TensorFlow's C++ side prints errors only (no start-up INFO/WARNING lines).
TF_QUIET_LEVEL = "2"
TF_LOGGERS = ("tensorflow", "absl")


def setup_logging(tf_logs=False, stream=None):
    """The run's own log: the "trainers" loggers at INFO, one "DATE TIME LEVEL message" line each, on `stream`
    (stderr by default). A second call replaces the first's handler.

    TensorFlow is quiet unless `tf_logs`: its C++ start-up lines (TF_CPP_MIN_LOG_LEVEL=2, unless already
    set in the environment) and its Python and absl INFO/WARNING lines ("Sharding callback duration",
    "Assets written to", ...) are off; errors still show. Call it before TensorFlow is imported: the C++
    level is read once, at import. `tf_logs=True` lets TensorFlow's own INFO/WARNING logs through.
    """
    for old in [h for h in log.handlers if h.get_name() == HANDLER_NAME]:
        log.removeHandler(old)
    handler = logging.StreamHandler(stream)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # one line per message, however the root logger is (or gets) configured
    level = logging.INFO if tf_logs else logging.ERROR
    if tf_logs:
        # TensorFlow's and absl's records go to the root logger; give it a handler in the same format.
        logging.basicConfig(level=logging.INFO, format=FORMAT, datefmt=DATE_FORMAT)
        logging.getLogger().setLevel(logging.INFO)
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_QUIET_LEVEL)
    try:
        # Before touching the "absl" logger: absl creates it with its own Logger class at import.
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.INFO if tf_logs else absl_logging.ERROR)  # absl's own levels
    except ImportError:
        pass
    for name in TF_LOGGERS:
        logging.getLogger(name).setLevel(level)


# C++ start-up lines some TensorFlow builds print whatever TF_CPP_MIN_LOG_LEVEL says (e.g. port.cc's "oneDNN
# custom operations are on" when TF_ENABLE_ONEDNN_OPTS is set): absl's INFO/WARNING lines and its preamble.
STARTUP_NOISE = re.compile(rb"^([IW]\d{4} \S+\s+\d+ \S+:\d+\] |WARNING: All log messages before absl::InitializeLog)")


def import_tensorflow_quietly():
    """Imports TensorFlow with its C++ INFO/WARNING start-up lines filtered out of stderr (fd 2); everything
    else written meanwhile (errors, Python warnings) passes through as it comes. For the command line
    without --tf-logs, after setup_logging; a no-op once TensorFlow is imported."""
    if "tensorflow" in sys.modules:
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        import tensorflow  # noqa: F401  (no usable fd 2: nothing to filter)

        return
    read_end, write_end = os.pipe()

    def forward():
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not STARTUP_NOISE.match(line):
                    try:
                        os.write(saved, line)
                    except OSError:
                        pass

    import threading

    thread = threading.Thread(target=forward, name="tensorflow-startup-filter", daemon=True)
    thread.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        import tensorflow  # noqa: F401
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the thread reads to the end and stops
        thread.join(timeout=5)
        os.close(saved)


# -- progress on the console ---------------------------------------------------------------------------------

BAR_WIDTH = 30
REDRAW_SECONDS = 0.1  # a terminal bar redraws at most this often (and always at the end)


def _is_terminal(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def rate(images_per_second):
    """Images/s for a log line: whole numbers at ResNet-20's hundreds, three digits at a detector's 0.6."""
    if images_per_second >= 100:
        return f"{images_per_second:.0f}"
    return f"{images_per_second:.3g}"


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.1f}"
    if abs(value) >= 1e-3:
        return f"{value:.4f}"
    return f"{value:.3e}"


def _duration(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """Progress through `total` steps with the latest values (e.g. {"loss": 1.23, "top1": 0.5, "img/s": 120.0}).

    On a terminal: a bar redrawn in place, like keras.utils.Progbar. Anywhere else (a file, a pipe, nohup,
    Slurm): a plain line at most every `interval` seconds and one at the end, with no carriage returns or
    escape sequences, so the log stays readable. `stream` defaults to stdout; `enabled=False` writes nothing.

        progress = Progress(steps, enabled=config.progress)
        for done in range(1, steps + 1):
            progress.update(done, {"loss": loss, "img/s": rate})
        progress.close()
    """

    def __init__(self, total, enabled=True, stream=None, interval=30.0):
        self.total = total
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stdout
        self.interval = interval
        self.terminal = _is_terminal(self.stream)
        self.start = time.monotonic()
        self.done, self.values = 0, {}
        self._shown_at = None  # monotonic time of the last bar or line written
        self._shown_done = None  # `done` when it was written
        self._bar_width = 0  # characters of the bar on screen, to blank out a longer previous one
        self._closed = False

    def update(self, done, values=None):
        """`done` steps of `total` so far (not an increment), with the latest values."""
        if not self.enabled or self._closed:
            return
        self.done, self.values = done, dict(values or {})
        now = time.monotonic()
        finished = self.total is not None and done >= self.total
        since = now - (self._shown_at if self._shown_at is not None else self.start)
        if self.terminal:
            if finished or self._shown_at is None or since >= REDRAW_SECONDS:
                self._draw(now)
        elif finished or since >= self.interval:
            self._line(now)

    def close(self):
        """Writes the last state if it is not shown yet, and ends the bar's line on a terminal."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        now = time.monotonic()
        if self.terminal:
            if self._shown_at is not None or self.done:
                if self._shown_done != self.done:
                    self._draw(now)
                self.stream.write("\n")
                self.stream.flush()
        elif self.done and self._shown_done != self.done:
            self._line(now)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- formatting -----------------------------------------------------------------------------------------
    def _values_text(self):
        return "".join(f" - {name}: {_number(value)}" for name, value in self.values.items())

    def _timing(self, now):
        elapsed = now - self.start
        if self.total is not None and self.done >= self.total:
            per_step = elapsed / max(self.done, 1)
            unit = f"{per_step * 1000:.0f}ms/step" if per_step < 1 else f"{per_step:.1f}s/step"
            return f"{_duration(elapsed)} {unit}"
        if self.total is not None and self.done > 0:
            return f"ETA {_duration(elapsed / self.done * (self.total - self.done))}"
        return _duration(elapsed)

    def _draw(self, now):
        if self.total:
            digits = len(str(self.total))
            filled = min(BAR_WIDTH, int(BAR_WIDTH * self.done / self.total))
            arrow = ">" if filled < BAR_WIDTH else ""
            bar = "=" * filled + arrow + "." * (BAR_WIDTH - filled - len(arrow))
            text = f"{self.done:>{digits}}/{self.total} [{bar}] - {self._timing(now)}{self._values_text()}"
        else:
            text = f"{self.done} - {self._timing(now)}{self._values_text()}"
        self.stream.write("\r" + text + " " * max(0, self._bar_width - len(text)))
        self.stream.flush()
        self._bar_width = len(text)
        self._shown_at, self._shown_done = now, self.done

    def _line(self, now):
        if self.total:
            where = f"{self.done}/{self.total} ({self.done / self.total:.0%})"
        else:
            where = str(self.done)
        stamp = time.strftime(DATE_FORMAT)
        self.stream.write(f"{stamp} {where} - {self._timing(now)}{self._values_text()}\n")
        self.stream.flush()
        self._shown_at, self._shown_done = now, self.done


# -- TensorBoard ---------------------------------------------------------------------------------------------


def _hparam(value):
    """A TensorBoard HParams value: scalars as they are, lists as "0.5,0.75", unset (None) as "auto"."""
    if value is None:
        return "auto"
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


class Board:
    """`DIR/logs/train` and `DIR/logs/validation` writers."""

    def __init__(self, log_dir):
        import tensorflow as tf

        self._tf = tf
        self.log_dir = log_dir
        self.train = tf.summary.create_file_writer(f"{log_dir}/train")
        self.validation = tf.summary.create_file_writer(f"{log_dir}/validation")

    def scalars(self, writer, step, values):
        with writer.as_default(step=int(step)):
            for name, value in values.items():
                self._tf.summary.scalar(name, float(value))
        writer.flush()

    def hparams(self, config):
        """The run's settings in the HParams tab, on both runs: validation top-1 compares across runs too.

        Pass the effective settings (num_classes from the data, the precision chosen); what is still None
        shows as "auto"."""
        import dataclasses

        from tensorboard.plugins.hparams import api as hp

        items = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
        flat = {name: _hparam(value) for name, value in items.items()}
        run = os.path.basename(os.path.dirname(os.path.abspath(self.log_dir)))
        for split, writer in (("train", self.train), ("validation", self.validation)):
            # One trial per writer: a shared trial id would average train and validation metrics together.
            with writer.as_default():
                hp.hparams({**flat, "split": split}, trial_id=f"{run}/{split}")
            writer.flush()

    def picture(self, writer, step, picture, name):
        """One uint8 [H, W, 3] picture (e.g. drawn detections) under `name`."""
        with writer.as_default(step=int(step)):
            self._tf.summary.image(name, picture[None], max_outputs=1)
        writer.flush()

    def image_grid(self, images, step, name="augmented_samples"):
        """Up to 16 augmented training images tiled into one picture (pixels 0..255)."""
        import numpy as np

        images = np.clip(np.asarray(images)[:16], 0, 255).astype(np.uint8)
        n, h, w, c = images.shape
        side = math.ceil(math.sqrt(n))
        grid = np.zeros((side * h, side * w, c), np.uint8)
        for i, image in enumerate(images):
            r, col = divmod(i, side)
            grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = image
        with self.train.as_default(step=int(step)):
            self._tf.summary.image(name, grid[None], max_outputs=1)
        self.train.flush()
