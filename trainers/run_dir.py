"""A run directory: what a training run leaves, in one layout that the loop, export and predict read.

DIR/config.json        the settings (training fields decide whether a checkpoint may resume)
DIR/normalization.npz  the task's input statistics (classification: mean image, class names)
DIR/checkpoints/       tf.train.CheckpointManager's, newest referenced by its `checkpoint` file
DIR/logs/              TensorBoard: train/ and validation/
DIR/result.json        the final numbers
DIR/averaged.json      instead of training: the snapshots `trainers.average` averaged into this run's weights
"""

import hashlib
import json
import os

from trainers import config as config_lib


def default_model_dir(recipe_name, config):
    """Deterministic, so rerunning the same command resumes; other training settings, another dir."""
    fields = json.dumps(config_lib.identity_fields(config), sort_keys=True, default=str)
    digest = hashlib.sha256(fields.encode()).hexdigest()[:8]
    data_name = config.data.replace(":", "_").replace("/", "_")
    return os.path.join("runs", f"{recipe_name}-{config.model}-{data_name}-{digest}")


class RunDir:
    def __init__(self, path):
        self.path = path
        self.config_path = os.path.join(path, "config.json")
        self.normalization_path = os.path.join(path, "normalization.npz")
        self.checkpoint_dir = os.path.join(path, "checkpoints")
        self.log_dir = os.path.join(path, "logs")
        self.result_path = os.path.join(path, "result.json")
        self.averaged_path = os.path.join(path, "averaged.json")

    def __repr__(self):
        return f"RunDir({self.path!r})"

    def latest_checkpoint(self):
        """The newest complete checkpoint: the manager names it only after all its files are written."""
        import tensorflow as tf

        return tf.train.latest_checkpoint(self.checkpoint_dir)

    def has_checkpoint(self):
        return self.latest_checkpoint() is not None

    def read_config(self):
        if not os.path.exists(self.config_path):
            raise ValueError(
                f"{self.path} has no config.json: it is not a trainer's --model-dir (expected config.json, "
                "normalization.npz and checkpoints/ from python -m trainers.cifar10/imagenet)."
            )
        return config_lib.read(self.config_path)

    def check_resumable(self, config):
        """Refuses checkpoints trained under other settings; a dir without checkpoints holds nothing to keep."""
        if not (os.path.exists(self.config_path) and self.has_checkpoint()):
            return
        if os.path.exists(self.averaged_path):
            raise ValueError(
                f"{self.path} holds an average of snapshots (python -m trainers.average), no training to resume. "
                f"Train on from it with --init-from {self.path} and another --model-dir."
            )
        changed = config_lib.differences(config_lib.read(self.config_path), config)
        if changed:
            raise ValueError(
                f"{self.path} holds checkpoints trained with other settings ({'; '.join(changed)}). "
                "Resuming them would mix two runs. Rerun with the saved settings to resume, or pass "
                "another --model-dir (or none: the default one is named after the settings)."
            )

    def write_config(self, config):
        os.makedirs(self.path, exist_ok=True)
        config_lib.save(config, self.config_path)

    def read_normalization(self):
        """{"mean": array, "class_names": [str]} as the run saved them."""
        import numpy as np

        if not os.path.exists(self.normalization_path):
            raise ValueError(f"{self.path} has no normalization.npz: it was not written by a finished set-up.")
        saved = np.load(self.normalization_path)
        return {"mean": saved["mean"], "class_names": [str(c) for c in saved["class_names"]]}

    def write_normalization(self, mean, class_names):
        import numpy as np

        os.makedirs(self.path, exist_ok=True)
        np.savez(self.normalization_path, mean=mean, class_names=np.array(list(class_names)))

    def write_result(self, result):
        with open(self.result_path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=float)

    def copy_weights_into(self, model, model_name, flag):
        """This run's newest weights into `model` (see `copy_layer_weights`); `flag` names the setting in errors.
        Returns the names of `model`'s layers left as they were."""
        import tensorflow as tf

        saved = self.read_config()
        if saved.task != "classification" or saved.model != model_name:
            raise ValueError(
                f"{flag} {self.path}: a {saved.task} run of {saved.model}; give a classification run of "
                f"{model_name} (its --model-dir)."
            )
        checkpoint = self.latest_checkpoint()
        if not checkpoint:
            raise ValueError(f"{flag} {self.path}: no checkpoint in {self.checkpoint_dir}.")
        source = self.rebuild_model(saved)
        tf.train.Checkpoint(model=source).restore(checkpoint).expect_partial().assert_existing_objects_matched()
        return copy_layer_weights(source, model, f"{flag} {self.path}: none of {model_name}'s layers in {checkpoint}")

    def rebuild_model(self, config=None):
        """The network of this run (float32 policy is the caller's choice), weights not restored."""
        from trainers.tasks import task_for

        config = config or self.read_config()
        return task_for(config).build_model(config.num_classes)


def copy_layer_weights(source, model, nothing_matched):
    """`source`'s weights into `model`, layer by layer by name where the shapes agree: keras_resnet names every
    layer, so a classifier's, a fine-tuned classifier's and a detector's backbone agree. Returns the names of
    `model`'s layers left as they were; raises ValueError(`nothing_matched`) when that is all of them."""
    kept = []
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            values = source.get_layer(layer.name).get_weights()
        except ValueError:
            kept.append(layer.name)
            continue
        if [tuple(v.shape) for v in values] != [tuple(w.shape) for w in layer.weights]:
            kept.append(layer.name)
            continue
        layer.set_weights(values)
    if len(kept) == sum(1 for layer in model.layers if layer.weights):
        raise ValueError(nothing_matched + ".")
    return kept


def export_version(path):
    """The SavedModel version folder of `trainers.export` that `path` names: itself, or the newest version of
    a model folder; None when it is neither."""
    from trainers import export

    if os.path.exists(os.path.join(path, export.EXPORT_INFO)):
        return path
    path = os.path.normpath(path)
    return export.newest_version_dir(os.path.dirname(path), os.path.basename(path))


def load_exported_model(version, model_name, flag):
    """(the served Keras model of an export version folder, its trained network inside): the
    assets.extra/model.keras of `trainers.export`, checked to be an export of `model_name`."""
    import keras

    import keras_resnet  # noqa: F401  (registers the layers model.keras is made of)
    from trainers import export

    info = export.read_export_info(version)
    trained = ((info.get("source") or {}).get("config") or {}).get("model")
    keras_file = os.path.join(version, info.get("keras_model", export.KERAS_MODEL))
    if trained != model_name:
        what = f"an export of {trained}" if trained else "an export that does not name its network"
        raise ValueError(f"{flag} {version}: {what}; give an export (or a run) of {model_name}.")
    if not os.path.exists(keras_file):
        raise ValueError(f"{flag} {version}: no {keras_file} (an older export): export its run again, or give the run.")
    served = keras.models.load_model(keras_file, compile=False)
    networks = [layer for layer in served.layers if isinstance(layer, keras.Model)]
    return served, (networks[0] if networks else served)


def copy_export_weights_into(version, model, model_name, flag):
    """The trained network of an export version folder (its assets.extra/model.keras) into `model`, as
    `RunDir.copy_weights_into` does for a run."""
    _, network = load_exported_model(version, model_name, flag)
    return copy_layer_weights(network, model, f"{flag} {version}: none of {model_name}'s layers in its model.keras")


def copy_weights(path, model, model_name, flag):
    """Weights from a run directory or an exported SavedModel (`export_version`) into `model`: what --init-from and
    --backbone-weights take. Returns the names of `model`'s layers left as they were."""
    version = None if os.path.exists(os.path.join(path, "config.json")) else export_version(path)
    if version:
        return copy_export_weights_into(version, model, model_name, flag)
    return RunDir(path).copy_weights_into(model, model_name, flag)
