"""`python -m trainers.detection`: Faster R-CNN (--detector frcnn-c4 | frcnn-fpn) on any registered backbone."""

import sys

from trainers import recipes
from trainers.cli import main

if __name__ == "__main__":
    sys.exit(
        main(
            recipes.DETECTION,
            "detection",
            "Train Faster R-CNN on a keras_resnet backbone (residual or plain): VOC07 mAP@0.5 and COCO mAP.",
        )
    )
