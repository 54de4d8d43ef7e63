"""Tasks: what is specific to one problem (data, model, loss, metrics, export); `trainers.loop` does the rest."""

from trainers.tasks.base import Task


def task_for(config):
    """The task a config trains: classification is the only one the recipes name so far."""
    from trainers.tasks.classification import ClassificationTask

    return ClassificationTask(config)


__all__ = ["Task", "task_for"]
