"""Cluster launchers (in process, no training): Slurm's environment, --worker-hosts, --tpu, their checks, and the
deploy/ files. Two workers training from --worker-hosts: tests/test_trainer.py."""

import json
import os
import pathlib
import subprocess

import pytest
import tensorflow as tf
import yaml

from trainers import config as config_lib
from trainers import recipes, strategy

ROOT = pathlib.Path(__file__).resolve().parent.parent
SLURM_SCRIPT = ROOT / "deploy" / "slurm" / "train.sbatch"
MANIFEST = ROOT / "deploy" / "kubernetes" / "train.yaml"


@pytest.fixture
def no_tf_config(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "")  # restored (unset) after the test, whatever make_strategy writes


def slurm_step(monkeypatch, nodes, tasks_per_node, procid, node):
    """The variables srun sets in each task of a job step (the resolver reads the SLURM_STEP_* ones)."""
    for name in [n for n in os.environ if n.startswith("SLURM")]:
        monkeypatch.delenv(name)
    tasks = sum(int(n.split("(")[0]) * (int(n.split("x")[1].rstrip(")")) if "x" in n else 1)
                for n in tasks_per_node.split(","))  # fmt: skip
    for name, value in {
        "SLURM_JOB_NODELIST": nodes,
        "SLURM_STEP_NODELIST": nodes,
        "SLURM_NTASKS": tasks,
        "SLURM_STEP_NUM_TASKS": tasks,
        "SLURM_TASKS_PER_NODE": tasks_per_node,
        "SLURM_STEP_TASKS_PER_NODE": tasks_per_node,
        "SLURM_PROCID": procid,
        "SLURM_LOCALID": 0,
        "SLURMD_NODENAME": node,
    }.items():
        monkeypatch.setenv(name, str(value))


@pytest.fixture
def no_gpu_probing(monkeypatch):
    """The resolver must not run nvidia-smi (or scontrol): Slurm's and NVIDIA's tools are absent here."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"ran {args[0]}")

    monkeypatch.setattr(subprocess, "check_output", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_slurm_two_tasks_on_localhost_resolve_to_two_workers(monkeypatch, no_gpu_probing):
    slurm_step(monkeypatch, nodes="localhost", tasks_per_node="2", procid=1, node="localhost")
    resolver = strategy.slurm_resolver(port_base=23456)
    assert isinstance(resolver, tf.distribute.cluster_resolver.SlurmClusterResolver)
    assert resolver.cluster_spec().as_dict() == {"worker": ["localhost:23456", "localhost:23457"]}
    assert (resolver.task_type, resolver.task_id) == ("worker", 1)
    assert strategy.tf_config_from(resolver) == {
        "cluster": {"worker": ["localhost:23456", "localhost:23457"]},
        "task": {"type": "worker", "index": 1},
    }
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # GPUs are left to --gpus, not reassigned


def test_slurm_node_ranges_expand_without_scontrol(monkeypatch, no_gpu_probing):
    slurm_step(monkeypatch, nodes="gpu[07-08]", tasks_per_node="1(x2)", procid=0, node="gpu07")
    resolver = strategy.slurm_resolver()
    assert resolver.cluster_spec().as_dict() == {"worker": ["gpu07:8888", "gpu08:8888"]}
    assert (resolver.task_type, resolver.task_id) == ("worker", 0)


def test_slurm_ranks_out_of_the_resolvers_host_order_are_refused(monkeypatch, no_gpu_probing):
    """The resolver orders hosts as text (gpu10 before gpu9): a task would claim another node's address."""
    slurm_step(monkeypatch, nodes="gpu[9-10]", tasks_per_node="1(x2)", procid=0, node="gpu9")
    with pytest.raises(ValueError, match="task 0 runs on gpu9, but the resolved cluster puts it on gpu10"):
        strategy.slurm_resolver()


def test_slurm_outside_a_job_step_says_to_use_srun(monkeypatch, no_gpu_probing, no_tf_config):
    for name in [n for n in os.environ if n.startswith("SLURM")]:
        monkeypatch.delenv(name)
    with pytest.raises(
        ValueError, match=r"--cluster slurm: cannot read the Slurm step .*SLURM_STEP_NUM_TASKS is not set.*srun"
    ):
        strategy.make_strategy(cluster="slurm")


def test_worker_hosts_write_tf_config_with_worker_0_the_chief(no_tf_config):
    hosts = "node1:2222, node2:2222,node3:2222"
    assert strategy.worker_tf_config(hosts, 2) == {
        "cluster": {"worker": ["node1:2222", "node2:2222", "node3:2222"]},
        "task": {"type": "worker", "index": 2},
    }
    with pytest.raises(ValueError, match=r"--task-index 3: give this worker's position in --worker-hosts, 0 to 2"):
        strategy.worker_tf_config(hosts, 3)


def test_one_worker_host_is_this_machine_and_the_start_line_says_so(no_tf_config):
    one = strategy.make_strategy(worker_hosts="localhost:2222", task_index=0)
    assert json.loads(os.environ["TF_CONFIG"]) == {
        "cluster": {"worker": ["localhost:2222"]},
        "task": {"type": "worker", "index": 0},
    }
    assert isinstance(one, tf.distribute.OneDeviceStrategy) and strategy.workers(one) == 1
    assert strategy.describe(one, 64, 0.025) == "OneDeviceStrategy: 1 worker, 1 replica, global batch 64 (64 per " \
        "replica), lr 0.025"  # fmt: skip


def test_tpu_without_a_tpu_is_a_clear_error(no_tf_config):
    with pytest.raises(ValueError) as error:
        strategy.make_strategy(tpu="local")
    message = str(error.value)
    assert message.startswith("--tpu local: no TPU found: this machine has no TPU")
    assert "TPUs not found in the cluster" in message and "Leave --tpu out" in message and len(message) < 400


def refused(argv, capsys, recipe=recipes.CIFAR10):
    with pytest.raises(SystemExit) as stop:
        config_lib.resolve(recipe, argv, prog="python -m trainers.cifar10")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--worker-hosts", "h1:2222,h2:2222"], "--worker-hosts h1:2222,h2:2222 needs --task-index I, this worker's "
                                                "position in the list (0 to 1; 0 is the chief)"),
        (["--task-index", "0"], "--task-index 0 needs --worker-hosts (the list it indexes)"),
        (["--worker-hosts", "h1:2222,h2:2222", "--task-index", "2"], "--task-index 2: out of range for 2 "
                                                                     "--worker-hosts (0 to 1)"),
        (["--worker-hosts", "h1:2222,h2:2222", "--task-index", "-1"], "--task-index -1: must be at least 0"),
        (["--worker-hosts", "h1,h2:2222", "--task-index", "0"], "--worker-hosts h1,h2:2222: 'h1' is not HOST:PORT "
                                                                "with a port 1-65535"),
        (["--worker-hosts", "h1:99999", "--task-index", "0"], "'h1:99999' is not HOST:PORT with a port 1-65535"),
        (["--worker-hosts", "h1:1,h1:1", "--task-index", "0"], "--worker-hosts h1:1,h1:1: h1:1 given twice"),
        (["--worker-hosts", "a:1,b:1,c:1", "--task-index", "0"], "--batch-size 128 does not divide evenly over 3 "
                                                                 "--worker-hosts = 3 replicas"),
        (["--worker-hosts", "a:1,b:1,c:1", "--task-index", "0", "--gpus", "2"], "over 3 --worker-hosts x --gpus 2 "
                                                                                "= 6 replicas"),
        (["--worker-hosts", "a:1,b:1", "--task-index", "0", "--cpu-replicas", "2"], "--cpu-replicas 2 with "
                                                                                    "--worker-hosts: each worker"),
        (["--cluster", "slurm", "--worker-hosts", "a:1", "--task-index", "0"], "--cluster slurm and --worker-hosts "
                                                                               "a:1 both say where to train"),
        (["--cluster", "kubernetes"], "argument --cluster: expected one of slurm, got 'kubernetes'"),
        (["--cluster", "slurm", "--cluster-port", "70000"], "--cluster-port 70000: must be a port number, 1-65535"),
        (["--tpu", "local", "--gpus", "8"], "--tpu local and --gpus are exclusive"),
        (["--tpu", "local", "--cluster", "slurm"], "--cluster slurm and --tpu local both say where to train"),
        (["--tpu", " "], "--tpu: name the TPU, or local for a TPU VM's own chips"),
    ],
)  # fmt: skip
def test_cluster_settings_that_cannot_work_are_refused_naming_the_flags(capsys, argv, message):
    assert message in refused(argv, capsys)


def test_cluster_settings_are_runtime_settings():
    """Every worker of one run has its own --task-index, and a rerun may move hosts: same checkpoint dir."""
    base = config_lib.resolve(recipes.CIFAR10, [])
    moved = config_lib.resolve(recipes.CIFAR10, ["--worker-hosts", "a:1,b:1", "--task-index", "1"])
    assert config_lib.training_fields(base) == config_lib.training_fields(moved)
    assert config_lib.strategy_settings(moved) == dict(
        gpus=None, cpu_replicas=None, cluster=None, worker_hosts="a:1,b:1", task_index=1, tpu=None, cluster_port=8888
    )


# -- deploy/ ------------------------------------------------------------------------------------------------


def test_slurm_script_is_valid_bash_and_its_srun_flags_are_a_valid_run(tmp_path):
    check = subprocess.run(["bash", "-n", str(SLURM_SCRIPT)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    # Run the script with an srun that records its arguments: what each task would run.
    fake = tmp_path / "bin" / "srun"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$SRUN_ARGS"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("DATA", "RUN", "PYTHON")}  # set -u: the defaults
    env.update(PATH=f"{fake.parent}:{os.environ['PATH']}", SRUN_ARGS=str(tmp_path / "args"))
    ran = subprocess.run(["bash", str(SLURM_SCRIPT)], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    argv = (tmp_path / "args").read_text().splitlines()
    assert argv[:4] == ["--kill-on-bad-exit=1", "python", "-m", "trainers.imagenet"]
    config = config_lib.resolve(recipes.IMAGENET, argv[4:])
    lines = SLURM_SCRIPT.read_text().splitlines()
    directives = dict((line[len("#SBATCH --") :] + "=").split("=")[:2] for line in lines if "#SBATCH --" in line)
    replicas = int(directives["nodes"]) * int(directives["gpus-per-node"])
    assert (config.cluster, config.gpus, int(directives["ntasks-per-node"])) == ("slurm", 8, 1) and replicas == 16
    assert config.batch_size == 2048 and config.batch_size % replicas == 0
    assert config.lr * config.batch_size / config.lr_batch == pytest.approx(0.8)  # the comment's lr
    assert "global batch = 2 nodes x 8 gpus x 128 per gpu = 2048" in SLURM_SCRIPT.read_text().lower()


def manifest():
    documents = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    return {d["kind"]: d for d in documents}


def test_kubernetes_manifest_is_an_indexed_job_behind_a_headless_service():
    resources = manifest()
    assert sorted(resources) == ["Job", "Service"]
    job, service = resources["Job"], resources["Service"]
    assert job["apiVersion"] == "batch/v1" and service["apiVersion"] == "v1"
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    assert spec["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"  # one failed worker ends the Job
    assert service["spec"]["clusterIP"] == "None"
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert pod["subdomain"] == service["metadata"]["name"]
    (container,) = pod["containers"]
    port = service["spec"]["ports"][0]["port"]
    assert [p["containerPort"] for p in container["ports"]] == [port] == [service["spec"]["ports"][0]["targetPort"]]
    # Kubernetes expands $(VAR) in args from the container's env and the Job's JOB_COMPLETION_INDEX.
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["command"] == ["python", "-m", "trainers.imagenet"]
    for index in range(spec["completions"]):
        values = {**env, "JOB_COMPLETION_INDEX": str(index)}
        argv = [values.get(a[2:-1], a) if a.startswith("$(") else a for a in container["args"]]
        config = config_lib.resolve(recipes.IMAGENET, argv)
        hosts = config_lib.worker_host_list(config.worker_hosts)
        assert hosts == [f"{job['metadata']['name']}-{i}.{pod['subdomain']}:{port}" for i in range(spec["completions"])]
        assert config.task_index == index and config.gpus == container["resources"]["limits"]["nvidia.com/gpu"]
        assert config.batch_size == 2048 and config.batch_size % (len(hosts) * config.gpus) == 0


def test_kubernetes_manifest_matches_the_api_schema():
    """A schema check without a cluster (kubectl's --dry-run=client still asks a server for its API)."""
    import kubernetes_validate as validate  # a dev dependency: a missing one fails, never skips

    for document in yaml.safe_load_all(MANIFEST.read_text()):
        validate.validate(document, "1.30.0", strict=True)
