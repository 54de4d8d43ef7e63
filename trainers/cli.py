"""Shared command line of the entry points: recipe defaults, flags, run."""

import logging
import sys

from trainers import config as config_lib


def main(recipe, recipe_name, description, argv=None):
    config = config_lib.resolve(recipe, argv, prog=f"python -m trainers.{recipe_name}", description=description)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from trainers import data, engine  # after argument parsing: --help stays fast

    try:
        engine.run(config, recipe_name)
    except (data.DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
