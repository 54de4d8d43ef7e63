"""What replicas must agree on: the fp16 skip decision and BatchNorm's moving statistics.

Each case runs in a subprocess: logical CPU devices are fixed when TensorFlow starts.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}

PRELUDE = """
import json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from trainers import replicas
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
"""


def run_script(body):
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


OVERFLOW_ON_ONE_REPLICA = """
with strategy.scope():
    layer = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")
    layer.build((None, 2))
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.5), initial_scale=4.0)
    optimizer.build(layer.trainable_variables)

def replica_step(apply):
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    # Replica 1 overflowed, replica 0 did not: scaled gradients of 4.0 or inf.
    grad = tf.where(tf.equal(replica, 1), float("inf"), 4.0) * tf.ones([2, 1])
    apply(optimizer, [grad], layer.trainable_variables)

@tf.function
def step(apply):
    strategy.run(replica_step, args=(apply,))

def raw(optimizer, grads, variables):
    optimizer.apply(grads, variables)

step({apply})
print(json.dumps({{
    "kernel": [t.numpy().ravel().tolist() for t in strategy.experimental_local_results(layer.kernel.value)],
    "scale": float(optimizer.dynamic_scale.numpy()),
    "iterations": int(optimizer.iterations.numpy()),
}}))
"""


def test_an_overflow_on_one_replica_skips_the_step_on_every_replica():
    out = run_script(OVERFLOW_ON_ONE_REPLICA.format(apply="replicas.apply_gradients"))
    assert out["kernel"] == [[1.0, 1.0], [1.0, 1.0]]  # untouched on both replicas
    assert out["scale"] == 2.0 and out["iterations"] == 0  # the scale halved, no update counted
    # The scenario is the defect: Keras's own apply lets replica 0 decide and sums in the inf.
    raw = run_script(OVERFLOW_ON_ONE_REPLICA.format(apply="raw"))
    assert not np.isfinite(raw["kernel"]).all(), raw


def test_finite_steps_still_apply_the_sum_over_replicas():
    body = OVERFLOW_ON_ONE_REPLICA.format(apply="replicas.apply_gradients").replace('float("inf")', "8.0")
    out = run_script(body)
    # Unscaled grads 1 and 2 summed to 3 (the loss is already divided by the global batch): 1 - 0.5 * 3.
    np.testing.assert_allclose(out["kernel"], [[-0.5, -0.5], [-0.5, -0.5]])
    assert out["iterations"] == 1


def test_moving_statistics_are_the_mean_over_replicas():
    out = run_script(
        """
        with strategy.scope():
            inputs = keras.Input((3,))
            model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.5)(inputs))
        stats = replicas.moving_statistics(model)

        def replica_step():
            replica = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.float32)
            model(tf.fill([4, 3], 10.0 * replica + 2.0), training=True)  # batch means 2 and 12
            replicas.average(stats)

        tf.function(lambda: strategy.run(replica_step))()
        local = strategy.experimental_local_results(model.layers[1].moving_mean.value)
        print(json.dumps([t.numpy().tolist() for t in local]))
        """
    )
    np.testing.assert_allclose(out, [[3.5] * 3, [3.5] * 3])  # 0.5 * 0 + 0.5 * mean(2, 12) on both
