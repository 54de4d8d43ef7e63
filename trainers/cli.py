"""Shared command line of the entry points: recipe defaults, flags, run."""

import sys

from trainers import config as config_lib
from trainers import logs


def quiet_tensorflow(config):
    """Logging set up before validate() imports keras, which starts TensorFlow (config_lib.resolve's on_parsed)."""
    logs.setup_logging(tf_logs=config.tf_logs)
    if not config.tf_logs:
        logs.import_tensorflow_quietly()


def main(recipe, recipe_name, description, argv=None, variants=None):
    """Parse, check and run; 2 (with "error: ..." on stderr) for a setting or data the run cannot use.

    Bad flags and --config values exit with status 2 before anything is written or TensorFlow starts.
    `variants` (name -> recipe) lets --recipe NAME pick another recipe of the same entry point."""
    config = config_lib.resolve(
        recipe, argv, prog=f"python -m trainers.{recipe_name}", description=description, on_parsed=quiet_tensorflow,
        variants=variants,
    )  # fmt: skip
    from trainers import data, loop  # after argument parsing: --help stays fast

    try:
        code = loop.run(config, recipe_name)
    except (data.DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return code if isinstance(code, int) else 0  # an exit code (e.g. 143 after SIGTERM), or a result
