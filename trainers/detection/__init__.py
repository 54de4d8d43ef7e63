"""Object detection on keras_resnet backbones (issue 9): boxes, anchors, RoIAlign, VOC data and metrics.

Boxes are `yxyx` (ymin, xmin, ymax, xmax) throughout, as tf.image and the TF Object Detection API have
them: normalised to [0, 1] in the data and in what an export returns, in input-image pixels inside the
model (anchors, proposals, RoIs). COCO's `xywh` appears only at the pycocotools boundary.
"""
