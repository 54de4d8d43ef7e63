"""The training engine.

Entry points: `python -m trainers.cifar10`, `trainers.imagenet`, `trainers.demo`, `trainers.export`,
`trainers.benchmark`.

Importing this package sets up the environment before TensorFlow starts (trainers.hardware): on x86-64
CPUs with AVX2 it turns oneDNN's faster CPU kernels on (TF_ENABLE_ONEDNN_OPTS=1) unless you set that
variable yourself. TensorFlow reads it once, when it is imported: a program that imports tensorflow
before trainers keeps TensorFlow's own default. This module imports nothing heavy.
"""

from trainers import hardware as _hardware

_hardware.configure_environment()

# The public API, imported on first use so `python -m trainers.X --help` never starts TensorFlow:
# trainers.train(config, task=None) -> result dict; trainers.Task to subclass; trainers.Interrupted, LostWorker.
_PUBLIC = {
    "train": "trainers.loop",
    "Loop": "trainers.loop",
    "Interrupted": "trainers.loop",
    "LostWorker": "trainers.loop",
    "Task": "trainers.tasks",
}


def __getattr__(name):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'trainers' has no attribute {name!r}")
