"""What every replica of a train step must agree on, decided once for all of them.

Keras 3 leaves two things per replica that tf.keras 2 kept in step: BatchNorm's moving statistics
(created with aggregation "none", so each replica keeps its own estimate from 1/N of the data) and
LossScaleOptimizer's "are the gradients finite" decision (taken from the first replica only, on
gradients it assumes are already all-reduced; they are not, so an overflow on another replica
went into the weights, and workers could take different branches and hang).
"""

import keras
import tensorflow as tf


def apply_gradients(optimizer, grads, variables):
    """`optimizer.apply` in replica context, with the loss-scaling skip decided over all replicas.

    A replica whose gradients overflowed poisons every replica's gradients with NaN, so whichever
    replica the optimizer asks sees the global answer and all skip the step together.
    """
    context = tf.distribute.get_replica_context()
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) and context.num_replicas_in_sync > 1:
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])
        overflows = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite), tf.float32))
        poison = tf.where(overflows > 0, float("nan"), 1.0)
        grads = [None if g is None else g * tf.cast(poison, g.dtype) for g in grads]
    optimizer.apply(grads, variables)


def moving_statistics(model):
    """BatchNorm moving means and variances, the variables replicas would otherwise let drift apart."""
    found = []
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            found += [layer.moving_mean, layer.moving_variance]
    return found


def average(variables):
    """Replace each replica's copy by the mean over replicas (replica context; a no-op on one)."""
    context = tf.distribute.get_replica_context()
    if context.num_replicas_in_sync == 1 or not variables:
        return
    values = context.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in variables])
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)
