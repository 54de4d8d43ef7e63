"""Transitional: the command line's run moved to trainers.loop."""

from trainers.loop import run  # noqa: F401
