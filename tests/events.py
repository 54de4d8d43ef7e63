"""Reading what a run wrote for TensorBoard, for tests that check the logged numbers."""

import pathlib

import tensorflow as tf


def scalars(log_dir, tag):
    """{step: value} of one scalar tag from a run's TensorBoard event files."""
    values = {}
    for path in sorted(pathlib.Path(log_dir).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values
