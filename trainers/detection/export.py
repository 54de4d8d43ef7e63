"""A trained detector as a TF Serving SavedModel: `<export_dir>/<name>/<version>/`, float32, with the
preprocessing (trainers.preprocessing.detection_pixels) and the NMS inside the graph.

Signatures, both answering with the TF Object Detection API's names:
    serving_default    images: float32 [batch, H, W, 3], RGB 0..255, any size
    serve_image_bytes  image_bytes: string [batch], encoded JPEG/PNG/GIF/BMP, any sizes
    -> detection_boxes [batch, K, 4] float32, normalised ymin, xmin, ymax, xmax of the request's image;
       detection_scores [batch, K]; detection_classes [batch, K] int32, 0-based; detection_class_names
       [batch, K] string; num_detections [batch] int32. Slots past num_detections are zeros / "".
"""

import dataclasses
import json
import os
import shutil
import time
import uuid

from trainers import export as export_lib
from trainers import preprocessing
from trainers.logs import log

FORMAT = "keras_resnet.detection/1"


class _Serving:
    def __init__(self, model, image_size, class_names, mean):
        self.model, self.class_names, self.mean = model, list(class_names), mean
        self.side = image_size
        self.longest = preprocessing.detection_longest(image_size)
        self.canvas = preprocessing.detection_canvas(image_size)

    def _detect(self, images, sizes):
        import tensorflow as tf

        out = self.model.detect(preprocessing.normalize(images, self.mean), sizes)
        names = tf.gather(tf.constant(self.class_names), out["detection_classes"])
        count = out["num_detections"]
        filled = tf.range(tf.shape(names)[1])[tf.newaxis, :] < count[:, tf.newaxis]
        return {**out, "detection_class_names": tf.where(filled, names, "")}

    def _one(self, image):
        return preprocessing.detection_pixels(image, float(self.side), self.longest, self.canvas, self.mean)

    def _batch(self, images):
        import tensorflow as tf

        return tf.map_fn(
            self._one,
            images,
            fn_output_signature=(
                tf.TensorSpec([self.canvas, self.canvas, 3], tf.float32),
                tf.TensorSpec([2], tf.int32),
            ),
        )

    def serve_float32(self, images):
        return self._detect(*self._batch(images))

    def serve_image_bytes(self, image_bytes):
        import tensorflow as tf

        image_bytes = tf.reshape(image_bytes, [-1])
        indices = tf.range(tf.size(image_bytes))
        first = export_lib._first(indices, tf.logical_not(export_lib._looks_like_an_image(image_bytes)))
        message = tf.strings.format(
            "image_bytes[{}] is not a JPEG, PNG, GIF or BMP image (its first bytes match no image format)", first
        )
        with tf.control_dependencies([tf.debugging.Assert(tf.equal(first, tf.int32.max), [message])]):
            image_bytes = tf.identity(image_bytes)
        pixels, sizes = tf.map_fn(
            lambda encoded: self._one(preprocessing.decode(encoded)),
            image_bytes,
            fn_output_signature=(
                tf.TensorSpec([self.canvas, self.canvas, 3], tf.float32),
                tf.TensorSpec([2], tf.int32),
            ),
        )
        return self._detect(pixels, sizes)


def export_detector(model_dir, export_dir=None, checkpoint=None, name=None, build=None):
    """Rebuild the detector a detection run left in `model_dir`, restore its checkpoint, export it (or
    return the newest version, `reused`, when it already holds this checkpoint).

    build: () -> the detector to restore into (a task's own build_model); default: the one the run's
    config.json describes."""
    import keras
    import tensorflow as tf

    run_dir, config, root, name, checkpoint, source = export_lib._export_target(model_dir, export_dir, checkpoint, name)
    existing = export_lib.find_export(model_dir, export_dir, checkpoint, name)
    if existing is not None:
        log.info("%s already holds %s (the same checkpoint): no new version.", existing, checkpoint)
        return export_lib.ExportPath(existing, reused=True)
    norm = run_dir.read_normalization()
    keras.mixed_precision.set_global_policy("float32")
    # The checkpoint holds the whole backbone: no backbone weights to fetch again.
    config = dataclasses.replace(config, backbone_weights=None)
    model = build() if build else run_dir.rebuild_model(config)
    export_lib._restore(model, checkpoint, model_dir, config)

    serving = _Serving(model, config.image_size, norm["class_names"], norm["mean"])
    module = tf.Module()
    module.model = model
    module.model_variables = [getattr(v, "value", v) for v in model.weights]
    signatures = {
        "serving_default": tf.function(
            serving.serve_float32, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")]
        ),
        "serve_image_bytes": tf.function(
            serving.serve_image_bytes, input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
        ),
    }
    for key, function in signatures.items():
        setattr(module, key, function)
    parent = os.path.join(root, name)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".tmp-{uuid.uuid4().hex[:8]}")
    try:
        tf.saved_model.save(module, staging, signatures=signatures)
        os.makedirs(os.path.join(staging, "assets.extra"), exist_ok=True)
        record = {
            "format": export_lib.EXPORT_FORMAT,
            "detection_format": FORMAT,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "name": name,
            "detector": config.detector,
            "backbone": config.model,
            "image_size": config.image_size,
            "class_names": list(norm["class_names"]),
            "source": source,
        }
        with open(os.path.join(staging, export_lib.EXPORT_INFO), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, sort_keys=True, default=str)
        path = export_lib.next_version_dir(root, name)
        os.rename(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return export_lib.ExportPath(path)
