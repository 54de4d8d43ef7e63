"""The tf.distribute strategy from the flags and the environment."""

import json
import os

import tensorflow as tf


def make_strategy(gpus=None, cpu_replicas=None):
    """TF_CONFIG with several workers -> MultiWorkerMirrored; --gpus N -> Mirrored over N GPUs;
    --cpu-replicas N -> Mirrored over N logical CPUs; else the one device there is.

    Must run before TensorFlow touches a device (logical devices are fixed at start-up).
    """
    if gpus and cpu_replicas:
        raise ValueError("--gpus and --cpu-replicas are exclusive: pick GPUs or logical CPU devices.")
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if sum(len(v) for k, v in cluster.items() if k in ("worker", "chief")) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cpu_replicas:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_replicas)]
            )
        except RuntimeError as error:
            raise RuntimeError(
                "--cpu-replicas must be set before TensorFlow initialises its devices; "
                "call make_strategy() first thing in the process."
            ) from error
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_replicas)])
    found = tf.config.list_physical_devices("GPU")
    if gpus:
        if len(found) < gpus:
            devices = [d.name for d in tf.config.list_physical_devices()]
            fix = f"Use --gpus {len(found)}" if found else "Install the GPU build (pip install keras_resnet[gpu])"
            raise ValueError(
                f"--gpus {gpus} asked for {gpus} GPUs but TensorFlow found {len(found) or 'none'}. "
                f"Devices found: {devices}. {fix} or leave --gpus out to run on the CPU."
            )
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(gpus)])
    if len(found) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.OneDeviceStrategy("/gpu:0" if found else "/cpu:0")
