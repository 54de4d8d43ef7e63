"""Tasks: what is specific to one problem (data, model, loss, metrics, export); `trainers.loop` does the rest."""

from trainers.tasks.base import Task


def task_for(config):
    """The task `config.task` names: classification or detection."""
    if config.task == "detection":
        from trainers.tasks.detection import DetectionTask

        return DetectionTask(config)
    from trainers.tasks.classification import ClassificationTask

    return ClassificationTask(config)


__all__ = ["Task", "task_for"]
