"""`python -m trainers.tune`: a keras-tuner search over a recipe, each trial a run of the trainers' loop.

    python -m trainers.tune --tuner hyperband --max-trials 20 --data tfds:cifar10 --epochs 30
    python -m trainers.cifar10 --config runs/tune-cifar10/best.yaml        # train the best trial's settings

Searched: learning rate, weight decay, batch size, label smoothing, schedule and depth (the recipe's family:
resnet20/32/44/56 for CIFAR, resnet18/34/50 for ImageNet); `--space lr,weight_decay` narrows it. Each trial
trains through the same loop as the command line, under the strategy the flags choose, into
OUT/trials/<id> with its TensorBoard logs (the HParams dashboard lists every trial), and reports validation
top-1. Resumable: keras-tuner keeps its oracle's state in OUT, and an interrupted trial resumes from its
checkpoint. Each trial ends with keras.backend.clear_session(), so memory does not grow from trial to trial.
Writes OUT/best.yaml, a --config file holding the recipe's settings with the best trial's values.
"""

import argparse
import dataclasses
import gc
import os
import sys

SPACE = ("lr", "weight_decay", "batch_size", "label_smoothing", "schedule", "model")
DEPTHS = {"cifar10": ("resnet20", "resnet32", "resnet44", "resnet56"), "imagenet": ("resnet18", "resnet34", "resnet50")}


def parser():
    p = argparse.ArgumentParser(
        prog="python -m trainers.tune",
        description="keras-tuner search over a recipe; flags after the tuner's own go to the trainer.",
        usage="%(prog)s [--tuner hyperband|bayesian|random] [--max-trials N] [--out DIR] [trainer flags ...]",
    )
    p.add_argument("--recipe", choices=["cifar10", "imagenet"], default="cifar10", help="(default: cifar10)")
    p.add_argument("--tuner", choices=["hyperband", "bayesian", "random"], default="hyperband")
    p.add_argument("--max-trials", type=int, default=10, help="random/bayesian: trials (default: 10)")
    p.add_argument("--max-epochs", type=int, default=None, help="hyperband: most epochs a trial trains "
                   "(default: the trainer's --epochs)")  # fmt: skip
    p.add_argument("--space", default=",".join(SPACE), help=f"what to search (default: {','.join(SPACE)})")
    p.add_argument("--out", default=None, help="tuner state, trials and best.yaml (default: runs/tune-<recipe>)")
    return p


def search_space(names, recipe_name):
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    unknown = set(names) - set(SPACE)
    if unknown:
        raise ValueError(f"--space {','.join(names)}: unknown {', '.join(sorted(unknown))}; choose from {SPACE}")
    if "lr" in names:
        hp.Float("lr", 0.01, 0.4, sampling="log")
    if "weight_decay" in names:
        hp.Float("weight_decay", 1e-5, 1e-3, sampling="log")
    if "batch_size" in names:
        hp.Choice("batch_size", [64, 128, 256])
    if "label_smoothing" in names:
        hp.Choice("label_smoothing", [0.0, 0.1])
    if "schedule" in names:
        hp.Choice("schedule", ["step", "cosine"])
    if "model" in names:
        hp.Choice("model", list(DEPTHS[recipe_name]))
    return hp


class Stopped(Exception):
    """A trial was interrupted (SIGTERM/SIGINT) after saving: the search stops; rerunning resumes it."""


def make_tuner(kind, base, recipe_name, out, hp, max_trials, max_epochs):
    import keras_tuner
    from keras_tuner.engine.base_tuner import BaseTuner

    from trainers import loop

    class LoopTuner(BaseTuner):
        """Each trial: the base config with the trial's values, trained by trainers.loop.train."""

        def run_trial(self, trial, *args, **kwargs):
            import keras

            values = dict(trial.hyperparameters.values)
            epochs = values.pop("tuner/epochs", None)
            values = {k: v for k, v in values.items() if not k.startswith("tuner/")}
            config = dataclasses.replace(base, **values, model_dir=os.path.join(out, "trials", trial.trial_id))
            if epochs is not None:
                config = dataclasses.replace(config, epochs=float(epochs), steps=None)
            try:
                result = loop.train(config, recipe_name=recipe_name)
            except loop.Interrupted as stop:
                raise keras_tuner.errors.FatalError(str(stop)) from Stopped(stop)
            finally:
                keras.backend.clear_session()
                gc.collect()
            return {"val_top1": result["validation"]["top1"]}

        def save_model(self, trial_id, model, step=0):
            pass  # the trial's run dir holds its checkpoints

        def load_model(self, trial):
            raise NotImplementedError("load a trial's model from OUT/trials/<id> with trainers.export or evaluate")

    objective = keras_tuner.Objective("val_top1", direction="max")
    common = dict(
        objective=objective, hyperparameters=hp, allow_new_entries=False, tune_new_entries=False, seed=base.seed
    )
    if kind == "hyperband":
        oracle = keras_tuner.oracles.HyperbandOracle(max_epochs=max_epochs, factor=3, **common)
    elif kind == "bayesian":
        oracle = keras_tuner.oracles.BayesianOptimizationOracle(max_trials=max_trials, **common)
    else:
        oracle = keras_tuner.oracles.RandomSearchOracle(max_trials=max_trials, **common)
    return LoopTuner(oracle=oracle, directory=out, project_name="tuner")


def write_best(path, recipe, base, best):
    """A --config file: the recipe's settings, the flags given, and the best trial's values."""
    import yaml

    from trainers.config import RUNTIME_FIELDS

    values = {k: v for k, v in dataclasses.asdict(base).items() if k not in RUNTIME_FIELDS or k == "data_dir"}
    values.update({k: v for k, v in best.items() if not k.startswith("tuner/")})
    values.pop("model_dir", None)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"# The best trial of python -m trainers.tune ({recipe}): train it with --config {path}\n")
        yaml.safe_dump(values, f, sort_keys=True)
    return path


def main(argv=None):
    args, flags = parser().parse_known_args(argv)
    from trainers import cli, recipes
    from trainers import config as config_lib

    recipe = getattr(recipes, args.recipe.upper())
    out = args.out or os.path.join("runs", f"tune-{args.recipe}")
    try:
        base = config_lib.resolve(recipe, [*flags, "--no-export"], prog="python -m trainers.tune",
                                  on_parsed=cli.quiet_tensorflow)  # fmt: skip
        hp = search_space([n for n in args.space.split(",") if n], args.recipe)
        max_epochs = args.max_epochs or int(base.epochs or 1)
        tuner = make_tuner(args.tuner, base, args.recipe, out, hp, args.max_trials, max_epochs)
        tuner.search()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # keras-tuner's FatalError wraps an interrupted trial
        if isinstance(error.__cause__, Stopped):
            stop = error.__cause__.args[0]
            print(f"\nInterrupted ({stop.signal_name}) in a trial at step {stop.step}: rerun the same command to "
                  "resume the search.")  # fmt: skip
            return stop.exit_code
        raise
    best = tuner.get_best_hyperparameters(1)
    if not best:
        print("error: no trial finished; see the trials' logs in " + os.path.join(out, "tuner"), file=sys.stderr)
        return 1
    path = write_best(os.path.join(out, "best.yaml"), args.recipe, base, best[0].values)
    trial = tuner.oracle.get_best_trials(1)[0]
    print(f"\nBest trial {trial.trial_id}: validation top-1 {trial.score:.4f} with {best[0].values}")
    print(f"Best settings: {path} (python -m trainers.{args.recipe} --config {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
