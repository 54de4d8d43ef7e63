"""Reading what a run wrote for TensorBoard, for tests that check the logged numbers."""

from trainers.curves import scalars

__all__ = ["scalars"]
