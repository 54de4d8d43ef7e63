"""trainers.benchmark: the plan, interleaving, ratios, the table and the JSON; one real run end to end.

The structural tests replace the child processes with a fake that answers from the spec; the real ones run
one child process (a tiny matmul, in TensorFlow's default environment) and one tiny training measurement in
this process.
"""

import json

import pytest

from trainers import benchmark, hardware

TINY = ["--rounds", "2", "--steps", "2", "--warmup", "1", "--image-size", "8", "--batch-size", "8"]
SPEEDS = {"resnet20_ours": 120.0, "resnet20_keras": 100.0, "loop_1": 50.0, "loop_4": 150.0}


def fake_child(calls):
    def run_child(spec, env, timeout):
        calls.append((spec["name"], env))
        rnd = sum(1 for name, _ in calls if name == spec["name"])  # 1, 2, ...: vary by round
        if spec["kind"] == "matmul":
            result = {"flops_per_second": 1e11 * rnd, "seconds": 1.0, "precision": spec["precision"]}
        else:
            ips = SPEEDS.get(spec["name"], 80.0) * rnd
            result = {"images": 16, "seconds": 16 / ips, "images_per_second": ips, "precision": "fp32"}
            if spec["kind"] in ("train", "keras_fit"):
                result["macs_per_image"] = 1e6
            if spec["kind"] == "train":
                result["steps_per_loop"] = spec.get("steps_per_loop") or 10
        result.update(max_rss_mib=500.0 + rnd, onednn="on", onednn_line="oneDNN CPU kernels: on", wall_seconds=1.0)
        return {"result": result}

    return run_child


def test_tiny_run_writes_the_table_and_the_json(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(benchmark, "run_child", fake_child(calls))
    monkeypatch.setattr(hardware, "auto_precision", lambda *args, **kwargs: "fp32")  # TensorFlow stays unstarted
    out, md = tmp_path / "b.json", tmp_path / "BENCHMARKS.md"
    argv = ["--suites", "cifar,loop,mfu", "--cifar-models", "resnet20", "--loop-steps", "4", *TINY]
    code = benchmark.main([*argv, "--secondary-rounds", "1", "--output-json", str(out), "--write-markdown", str(md)])
    assert code == 0
    names = ["resnet20_ours", "resnet20_keras", "matmul_fp32", "matmul_bf16", "loop_1", "loop_4"]
    # Round 1 forward, round 2 backward; the secondary loop suite runs once.
    assert [name for name, _ in calls] == names + ["matmul_bf16", "matmul_fp32", "resnet20_keras", "resnet20_ours"]
    assert all(env == "trainers" for _, env in calls)

    report = json.loads(out.read_text())
    for key in ("machine", "settings", "precision_auto", "configs", "comparisons", "mfu", "markdown"):
        assert key in report
    for key in ("cpu", "flags", "onednn", "tensorflow", "keras", "date"):
        assert key in report["machine"]
    ours = report["configs"]["resnet20_ours"]
    assert ours["rounds"] == 2 and ours["images_per_second"]["median"] == pytest.approx(180.0)
    assert ours["max_rss_mib"]["max"] == 502.0
    # MFU per round: 2 x MACs x 3 x images/s over that round's fp32 peak.
    assert ours["mfu"]["min"] == ours["mfu"]["max"] == pytest.approx(2 * 1e6 * 3 * 120 / 1e11)
    first = report["comparisons"][0]
    assert first["numerator"] == "resnet20_ours" and first["target"] == 1.0
    assert first["median"] == pytest.approx(1.2) and first["n"] == 2 and first["met"] is True
    loop = next(c for c in report["comparisons"] if c["numerator"] == "loop_4")
    assert loop["median"] == pytest.approx(3.0) and loop["n"] == 1 and "met" not in loop

    table = report["markdown"]
    assert "| " + " | ".join(benchmark.CONFIG_COLUMNS) + " |" in table
    assert "| " + " | ".join(benchmark.COMPARISON_COLUMNS) + " |" in table
    assert "| ResNet-20: trainers defaults / plain Keras fit | 1.20× | 1.20–1.20 | 2 | ≥ 1.00× | yes |" in table
    text = md.read_text()
    assert "## Machine" in text and hardware.describe()["cpu"] in text and table in text
    assert "ResNet-20: trainers defaults / plain Keras fit**: target ≥ 1.00×, met: median 1.20×" in text


def test_resnet50_plan_gives_the_default_baseline_tensorflows_environment(tmp_path):
    args = benchmark.parser().parse_args(["--suites", "resnet50,input,serving"])
    ms, cs = benchmark.plan(args, "fp32", str(tmp_path))
    by_name = {m.name: m for m in ms}
    assert by_name["r50_keras_default"].env == "default"
    assert by_name["r50_keras_same"].env == "trainers" and by_name["r50_keras_same"].spec["precision"] == "fp32"
    assert "r50_ours_fp32" not in by_name  # the defaults are fp32 here: measured once
    assert by_name["r50_ours_defaults"].spec["precision"] == "auto"
    assert by_name["r50_ours_defaults"].spec.get("steps_per_loop") is None
    # bf16 is emulated on a machine whose auto is fp32: one short round, shown, not compared to a target.
    assert by_name["r50_ours_bf16"].rounds == 1 and by_name["r50_ours_bf16"].spec["steps"] == 2
    assert {c.target for c in cs if c.numerator == "r50_ours_defaults" and c.target} == {1.5, 1.0}
    assert {c.numerator for c in cs if c.target == 0.95} == {"input_folder", "input_tfrecord"}
    spec = by_name["r50_ours_defaults"].spec
    assert (spec["image_size"], spec["batch_size"], spec["classes"]) == (224, 32, 1000)
    assert benchmark.child_command(spec, "default")[1:3] == ["-c", benchmark.DEFAULT_ENV_PRELUDE]

    args = benchmark.parser().parse_args(["--suites", "resnet50", "--secondary-rounds", "2"])
    ms, _ = benchmark.plan(args, "bf16", str(tmp_path))
    by_name = {m.name: m for m in ms}
    assert "r50_ours_bf16" not in by_name and by_name["r50_ours_fp32"].rounds == 5
    assert by_name["r50_keras_same"].spec["precision"] == "bf16"


def test_default_environment_child_loses_what_trainers_set(monkeypatch):
    monkeypatch.setenv(hardware.ONEDNN_VAR, "1")
    monkeypatch.setenv(hardware.MARKER_VAR, "1")
    env = benchmark.child_environment("default")
    assert hardware.ONEDNN_VAR not in env and hardware.MARKER_VAR not in env
    assert benchmark.child_environment("trainers")[hardware.ONEDNN_VAR] == "1"
    monkeypatch.setenv(hardware.ONEDNN_VAR, "0")  # the user's own: kept for every child
    assert benchmark.child_environment("default")[hardware.ONEDNN_VAR] == "0"


def test_a_failed_measurement_is_reported_and_not_retried(tmp_path, monkeypatch):
    calls = []
    good = fake_child(calls)

    def flaky(spec, env, timeout):
        if spec["name"] == "loop_1":
            calls.append((spec["name"], env))
            return {"error": "exit code 1\nboom"}
        return good(spec, env, timeout)

    monkeypatch.setattr(benchmark, "run_child", flaky)
    code = benchmark.main(["--suites", "loop", "--loop-steps", "4", *TINY, "--output-json", str(tmp_path / "b.json")])
    assert code == 1
    assert [name for name, _ in calls] == ["loop_1", "loop_4", "loop_4"]
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["configs"]["loop_1"]["failed"] and "boom" in report["configs"]["loop_1"]["runs"][0]["error"]
    assert "| ResNet-20 trainers --steps-per-loop 1 | failed |" in report["markdown"]


def test_every_flag_has_help():
    for action in benchmark.parser()._actions:
        assert action.help, action.dest


@pytest.mark.slow
def test_a_real_child_in_tensorflows_default_environment(monkeypatch):
    """One real child process, as the default-environment baseline runs: tensorflow imported before trainers,
    TF_ENABLE_ONEDNN_OPTS as the user left it (here: unset), so TensorFlow's own default decides."""
    monkeypatch.setenv(hardware.ONEDNN_VAR, "1")  # as trainers sets it in the parent
    monkeypatch.setenv(hardware.MARKER_VAR, "1")
    spec = {"name": "tiny", "kind": "matmul", "precision": "fp32", "matmul_size": 64, "matmul_seconds": 0.05}
    outcome = benchmark.run_child(spec, "default", timeout=300)
    assert "result" in outcome, outcome.get("error")
    result = outcome["result"]
    assert result["flops_per_second"] > 0 and result["max_rss_mib"] > 0 and result["precision"] == "fp32"
    assert result["onednn"] == "tensorflow" and "imported before trainers" in result["onednn_line"]
    assert "gpus" in result["accelerators"]


@pytest.mark.slow
def test_one_tiny_training_measurement_in_process():
    """The child's own work, here: a few steps of trainers.loop.train timed by device loops."""
    spec = {"kind": "train", "model": "resnet20", "image_size": 8, "batch_size": 8, "classes": 10,
            "warmup": 3, "steps": 4, "precision": "fp32", "steps_per_loop": 2}  # fmt: skip
    result = benchmark.run_one(spec)  # warm-up loops of 2 and 1 steps, then 2 timed loops of 2
    assert result["images"] == 32 and result["seconds"] > 0 and result["images_per_second"] > 0
    assert result["steps_per_loop"] == 2 and result["precision"] == "fp32"
    assert result["macs_per_image"] > 0 and result["max_rss_mib"] > 0


def test_resume_keeps_what_an_earlier_run_measured(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(benchmark, "run_child", fake_child(calls))
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    argv = ["--suites", "loop", "--loop-steps", "4", *TINY[2:]]
    assert benchmark.main([*argv, "--rounds", "1", "--output-json", str(first)]) == 0
    calls.clear()
    assert benchmark.main([*argv, "--rounds", "2", "--resume", str(first), "--output-json", str(second)]) == 0
    assert [name for name, _ in calls] == ["loop_4", "loop_1"]  # round 2 only, in reverse
    report = json.loads(second.read_text())
    assert [run["round"] for run in report["configs"]["loop_1"]["runs"]] == [0, 1]
