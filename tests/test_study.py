"""`python -m trainers.study degradation`: every run trained once, reported with the paper's column, redrawn
from study.json; a rerun skips what finished and resumes what was interrupted."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from trainers import loop, study

FLAGS = ["--data", "synthetic", "--image-size", "8", "--batch-size", "64", "--steps", "2", "--no-progress",
         "--log-steps", "1", "--steps-per-loop", "2"]  # fmt: skip

pytestmark = pytest.mark.usefixtures("float32_policy")  # their runs set Keras' process-wide policy


@pytest.mark.slow
@pytest.mark.usefixtures("restore_logging")  # the study sets up logging as its command line does
def test_a_degradation_study_reports_every_run_and_resumes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    argv = ["degradation", "--depths", "8,14", "--out", str(out), *FLAGS]

    # The second run is interrupted (as by SIGTERM) at its first device-loop end (a step each, as
    # --log-steps 1 asks): the study stops there.
    honour, calls = loop.Loop._honour_signal, []

    def interrupt_the_second_run_once(self, step):
        calls.append(self.config.model)
        if self.config.model == "resnet8" and calls.count("resnet8") == 1:
            self._signal = "SIGTERM"
        return honour(self, step)

    monkeypatch.setattr(loop.Loop, "_honour_signal", interrupt_the_second_run_once)
    assert study.main(argv) == 143  # SIGTERM's exit code, and one line, not a traceback
    said = capsys.readouterr().out
    assert "Interrupted (SIGTERM) in " in said and "resnet8" in said and "at step 1: rerun the same command" in said
    monkeypatch.setattr(loop.Loop, "_honour_signal", honour)

    assert study.main(argv) == 0
    said = capsys.readouterr().out
    assert "== plain8 seed 0: finished, skipped" in said  # trained before the interruption
    assert "== resnet8 seed 0 ==" in said and "== plain14 seed 0 ==" in said
    result = json.loads((out / "resnet8" / "seed0" / "result.json").read_text())
    assert result["step"] == 2  # the interrupted run resumed at 1 and finished

    table = (out / "study.md").read_text()
    for name in ("plain8", "resnet8", "plain14", "resnet14"):
        assert f"| {name} |" in table
    assert "paper error %" in table and "| warm-up |" in table
    rows = list(csv.DictReader((out / "study.csv").open()))
    assert [r["net"] for r in rows] == ["plain8", "resnet8", "plain14", "resnet14"]
    assert all(0 <= float(r["final_val_error"]) <= 1 for r in rows)
    assert {r["warmup"] for r in rows} == {"none"}  # 8 and 14 layers: the recipe's lr from the first step
    picture = Image.open(out / "figure.png")
    assert picture.size == (1440, 440)  # two panels: plain nets, ResNets
    saved = json.loads((out / "study.json").read_text())
    assert {r["name"] for r in saved["runs"]} == {"plain8", "resnet8", "plain14", "resnet14"}
    assert all(r["curves"]["train_error"] for r in saved["runs"])


def test_the_summary_averages_seeds_with_their_spread():
    rows = [
        {"name": "resnet20", "seed": s, "final_train_error": e, "final_val_error": e, "best_val_error": e,
         "seconds": 10.0, "curves": {"train_error": {1: e, 2: e / 2}, "val_error": {2: e}}}
        for s, e in ((0, 0.1), (1, 0.3))
    ]  # fmt: skip
    (one,) = study.summarize(rows)
    assert one["seeds"] == [0, 1] and one["seconds"] == 20.0
    assert one["final_val_error"] == pytest.approx(0.2) and one["final_val_error_std"] == pytest.approx(0.1414, 1e-3)
    assert one["curves"]["train_error"] == {1: pytest.approx(0.2), 2: pytest.approx(0.1)}
    assert one["bands"]["val_error"] == {2: (0.1, 0.3)}


@pytest.mark.usefixtures("restore_logging")
def test_study_plans_and_bad_flags():
    args = study.parser().parse_args(["shortcuts", "--family", "imagenet"])
    assert [name for name, _, _ in study.plan(args)] == ["plain34", "resnet34-A", "resnet34-B", "resnet34-C"]
    assert study.plan(args)[2][2] == ["--shortcut", "B"]
    args = study.parser().parse_args(["degradation"])
    assert [name for name, _, _ in study.plan(args)][:4] == ["plain20", "resnet20", "plain32", "resnet32"]
    assert study.main(["degradation", "--depths", "twenty"]) == 2
    assert study.main(["degradation", "--depths", "8", "--only", "resnet99", "--data", "synthetic"]) == 2
    assert np.isnan(study._mean_std([])[0])


def test_the_table_names_each_runs_warmup():
    from trainers import config as config_lib
    from trainers import recipes

    def warmup(recipe, *argv):
        return study._warmup(config_lib.resolve(recipe, list(argv)))

    assert warmup(recipes.CIFAR10, "--model", "resnet20") == "none"
    assert warmup(recipes.CIFAR10, "--model", "plain56") == "lr 0.01 for 400 steps"
    assert warmup(recipes.IMAGENET, "--batch-size", "1024") == "linear over 5 epochs"
    assert warmup(recipes.CIFAR10, "--model", "resnet110", "--warmup-epochs", "0.5") == (
        "lr 0.01 for 400 steps, linear over 0.5 epochs"
    )
