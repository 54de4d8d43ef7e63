"""`make demo`: ResNet-20 on scikit-learn's digits, on the CPU, end to end (train, export, logs)."""

import sys

from trainers import recipes
from trainers.cli import main

if __name__ == "__main__":
    sys.exit(main(recipes.DIGITS_DEMO, "demo", "Train ResNet-20 on the digits that ship inside scikit-learn."))
