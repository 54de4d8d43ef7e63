import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


@pytest.fixture(autouse=True)
def _float32_policy_after_each_test():
    """A run with --precision auto sets Keras' process-wide policy (bf16 on a CPU with AVX512-BF16); the
    next test in that pytest worker must not build its networks under it (it did: 2e-3 off at 1e-5)."""
    yield
    import sys

    if "keras" in sys.modules:
        sys.modules["keras"].mixed_precision.set_global_policy("float32")


@pytest.fixture
def float32_policy():
    """For tests whose runs set a mixed-precision policy (process-wide in Keras), or that build models in
    process and must not inherit one: float32 before and after each."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def released_iterators(monkeypatch):
    """Weak references to every tf.data iterator handed to a loop's Releaser (trainers.loop) in this test:
    dead ones were deleted."""
    import weakref

    from trainers import loop

    released = []
    release = loop.Releaser.release

    def recording(self, box):
        released.append(weakref.ref(box[0]))
        release(self, box)

    monkeypatch.setattr(loop.Releaser, "release", recording)
    return released


@pytest.fixture
def restore_logging(monkeypatch):
    """For tests that set up logging for the process: put the loggers, absl and the environment back."""
    import logging

    from absl import logging as absl_logging

    names = ("trainers", "tensorflow", "absl", "")
    saved = [(logging.getLogger(n), logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in names]
    propagate, verbosity = logging.getLogger("trainers").propagate, absl_logging.get_verbosity()
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", os.environ["TF_CPP_MIN_LOG_LEVEL"])
    yield
    for logger, level, handlers in saved:
        logger.setLevel(level)
        logger.handlers[:] = handlers
    logging.getLogger("trainers").propagate = propagate
    absl_logging.set_verbosity(verbosity)


def pytest_collection_modifyitems(config, items):
    """Slow tests first: pytest-xdist hands tests out in this order, so the long ones start while the short
    ones fill the gaps, instead of one worker running a long test alone at the end (a minute on 2 cores)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
