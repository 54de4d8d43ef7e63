"""`python -m trainers.cifar10`: the paper's CIFAR-10 recipe (Sec. 4.2) on any registered network."""

import sys

from trainers import recipes
from trainers.cli import main

if __name__ == "__main__":
    sys.exit(main(recipes.CIFAR10, "cifar10", "Train a keras_resnet network with the paper's CIFAR-10 recipe."))
