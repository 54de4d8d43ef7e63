"""`python -m trainers.imagenet --gpus 8`: the paper's ImageNet recipe (Sec. 3.4) on any registered network."""

import sys

from trainers import recipes
from trainers.cli import main

if __name__ == "__main__":
    sys.exit(main(recipes.IMAGENET, "imagenet", "Train a keras_resnet network with the paper's ImageNet recipe."))
