"""`python -m trainers.cifar10`: the paper's CIFAR-10 recipe (Sec. 4.2) on any registered network;
`--recipe fast` is the shorter one the shipped ResNet-20 was trained with."""

import sys

from trainers import recipes
from trainers.cli import main

DESCRIPTION = "Train a keras_resnet network with the paper's CIFAR-10 recipe."

if __name__ == "__main__":
    sys.exit(main(recipes.CIFAR10, "cifar10", DESCRIPTION, variants=recipes.CIFAR10_RECIPES))
