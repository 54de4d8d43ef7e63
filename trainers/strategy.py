"""The tf.distribute strategy from the flags and the environment.

Where the workers are comes from one of: `--cluster slurm` (Slurm's environment, through TensorFlow's
SlurmClusterResolver), `--worker-hosts H:P,H:P --task-index I`, or a TF_CONFIG already in the environment
(Kubernetes operators, Vertex AI, hand-written). The first two write TF_CONFIG for this process, so every
multi-worker run takes the same path: MultiWorkerMirroredStrategy over a TFConfigClusterResolver. `--tpu`
selects TPUStrategy through TPUClusterResolver.
"""

import json
import os

import tensorflow as tf

from trainers.config import worker_host_list
from trainers.logs import log


def make_strategy(gpus=None, cpu_replicas=None, cluster=None, worker_hosts=None, task_index=None, tpu=None,
                  cluster_port=8888):  # fmt: skip
    """--tpu -> TPUStrategy; several workers (--cluster slurm, --worker-hosts or TF_CONFIG) ->
    MultiWorkerMirrored over each worker's GPUs (--gpus N of them, else all it sees) or its CPU;
    --gpus N -> Mirrored over N GPUs; --cpu-replicas N -> Mirrored over N logical CPUs; else the one device.

    Must run before TensorFlow touches a device (logical devices are fixed at start-up). Raises ValueError,
    naming the flag, for a cluster or TPU that cannot be used.
    """
    if gpus and cpu_replicas:
        raise ValueError("--gpus and --cpu-replicas are exclusive: pick GPUs or logical CPU devices.")
    if tpu:
        return tpu_strategy(tpu)
    local_rank = 0
    if cluster == "slurm":
        resolver = slurm_resolver(cluster_port)
        _set_tf_config(tf_config_from(resolver), "--cluster slurm")
        local_rank = int(os.environ.get("SLURM_LOCALID", 0))
    elif cluster:
        raise ValueError(f"--cluster {cluster}: unknown cluster manager; the one supported is slurm.")
    elif worker_hosts:
        _set_tf_config(worker_tf_config(worker_hosts, task_index), "--worker-hosts")
    if len(cluster_workers()) > 1:
        if cpu_replicas:
            raise ValueError(
                f"--cpu-replicas {cpu_replicas} with several workers: each worker is one CPU replica under "
                "MultiWorkerMirroredStrategy; drop --cpu-replicas."
            )
        if gpus:
            _use_gpus(gpus, local_rank)
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cpu_replicas:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_replicas)]
            )
        except RuntimeError as error:
            raise RuntimeError(
                "--cpu-replicas must be set before TensorFlow initialises its devices; "
                "call make_strategy() first thing in the process."
            ) from error
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_replicas)])
    found = tf.config.list_physical_devices("GPU")
    if gpus:
        _check_gpus(gpus, found)
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(gpus)])
    if len(found) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.OneDeviceStrategy("/gpu:0" if found else "/cpu:0")


# -- where the workers are -------------------------------------------------------------------------------


def worker_tf_config(worker_hosts, task_index):
    """TF_CONFIG (a dict) for task `task_index` of the workers in "h1:p1,h2:p2": worker 0 is the chief
    (no "chief" entry: MultiWorkerMirroredStrategy and the loop both take worker 0 then)."""
    hosts = worker_host_list(worker_hosts)
    if task_index is None or not 0 <= task_index < len(hosts):
        raise ValueError(
            f"--task-index {task_index}: give this worker's position in --worker-hosts, 0 to {len(hosts) - 1} "
            "(0 is the chief)."
        )
    return {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": task_index}}


def slurm_resolver(port_base=8888):
    """TensorFlow's SlurmClusterResolver for this task of an `srun` step: a worker per Slurm task, on the
    step's nodes (SLURM_STEP_NODELIST, expanded in Python: no scontrol), tasks on one node on consecutive
    ports from `port_base`, rank SLURM_PROCID.

    GPUs are not counted here (the resolver would run nvidia-smi): each task mirrors over the GPUs it
    sees, or --gpus N of them (`make_strategy`)."""
    resolver_class = tf.distribute.cluster_resolver.SlurmClusterResolver
    try:
        tasks = int(os.environ["SLURM_STEP_NUM_TASKS"])
        # The resolver's GPU bookkeeping, unused (auto_set_gpu off): one per task, room for every task on a node.
        resolver = resolver_class(port_base=port_base, gpus_per_node=tasks, gpus_per_task=1, auto_set_gpu=False)
        spec = resolver.cluster_spec().as_dict()
    except (KeyError, RuntimeError, ValueError) as error:
        missing = f"{error.args[0]} is not set" if isinstance(error, KeyError) else error
        raise ValueError(
            f"--cluster slurm: cannot read the Slurm step from the environment ({missing}). Start each worker "
            "with srun inside an sbatch or salloc allocation (deploy/slurm/train.sbatch), or use --worker-hosts."
        ) from None
    node = os.environ.get("SLURMD_NODENAME")
    own_host = spec[resolver.task_type][resolver.task_id].rpartition(":")[0]
    if node and own_host != node:
        # The resolver sorts host names as text and gives ranks in that order; Slurm's may differ (node9, node10).
        raise ValueError(
            f"--cluster slurm: task {resolver.task_id} runs on {node}, but the resolved cluster puts it on "
            f"{own_host} (SLURM_STEP_NODELIST {os.environ.get('SLURM_STEP_NODELIST')}): use zero-padded node "
            "names, or --worker-hosts with the hosts in Slurm's order and --task-index $SLURM_PROCID."
        )
    return resolver


def tf_config_from(resolver):
    """A cluster resolver's cluster and this task, as a TF_CONFIG dict."""
    return {
        "cluster": resolver.cluster_spec().as_dict(),
        "task": {"type": resolver.task_type, "index": resolver.task_id},
    }


def cluster_workers():
    """The worker and chief addresses TF_CONFIG names (chief first); [] without TF_CONFIG."""
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return [*cluster.get("chief", []), *cluster.get("worker", [])]


def _set_tf_config(config, source):
    text = json.dumps(config)
    previous = os.environ.get("TF_CONFIG")
    if previous and json.loads(previous) != config:
        log.warning("%s replaces the TF_CONFIG found in the environment (%s)", source, previous)
    os.environ["TF_CONFIG"] = text


def _check_gpus(gpus, found):
    if len(found) < gpus:
        devices = [d.name for d in tf.config.list_physical_devices()]
        fix = f"Use --gpus {len(found)}" if found else "Install the GPU build (pip install keras_resnet[gpu])"
        raise ValueError(
            f"--gpus {gpus} asked for {gpus} GPUs but TensorFlow found {len(found) or 'none'}. "
            f"Devices found: {devices}. {fix} or leave --gpus out to run on the CPU."
        )


def _use_gpus(gpus, local_rank):
    """A worker mirrors over --gpus N GPUs: all it sees when that is N; else the local rank's N under Slurm
    (several tasks on one node, no GPU binding by Slurm), else the first N."""
    found = tf.config.list_physical_devices("GPU")
    _check_gpus(gpus, found)
    if len(found) == gpus:
        return
    start = local_rank * gpus if (local_rank + 1) * gpus <= len(found) else 0
    tf.config.set_visible_devices(found[start : start + gpus], "GPU")


# -- TPUs ----------------------------------------------------------------------------------------------


def tpu_strategy(tpu):
    """TPUStrategy on `tpu`: "local" (a TPU VM's own chips) or a Cloud TPU's name or grpc:// address."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        if tpu != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (tf.errors.OpError, OSError, ValueError, RuntimeError, ImportError) as error:
        text = str(error).strip()
        reason = text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(error).__name__
        where = (
            "this machine has no TPU (a TPU VM with the TPU build of TensorFlow, pip install tensorflow-tpu)"
            if tpu == "local"
            else "no Cloud TPU of that name is reachable from here (its name or grpc://IP:8470, in the VM's "
            "project and zone)"
        )
        raise ValueError(
            f"--tpu {tpu}: no TPU found: {where}. TensorFlow said: {reason}. Leave --tpu out to train on the "
            "GPUs or the CPU."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


# -- the start log's line ------------------------------------------------------------------------------


def workers(strategy):
    """How many worker processes (hosts, for TPUs) train in step under `strategy`."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return int(getattr(strategy.extended, "num_hosts", 1) or 1)
    if resolver is not None and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        spec = resolver.cluster_spec().as_dict()
        return max(1, len(spec.get("chief", [])) + len(spec.get("worker", [])))
    return 1


def public_name(strategy):
    """The tf.distribute name of `strategy`'s class (MultiWorkerMirroredStrategy, not CollectiveAllReduceStrategy)."""
    for name in ("MultiWorkerMirroredStrategy", "TPUStrategy", "MirroredStrategy", "OneDeviceStrategy"):
        if isinstance(strategy, getattr(tf.distribute, name)):
            return name
    return type(strategy).__name__


def describe(strategy, batch_size=None, lr=None):
    """'MultiWorkerMirroredStrategy: 2 workers x 8 replicas = 16 replicas, global batch 1024 (64 per
    replica), lr 0.4': what a start log says about the machines."""
    n_workers, replicas_n = workers(strategy), strategy.num_replicas_in_sync
    name = public_name(strategy)
    if n_workers > 1:
        per_worker = replicas_n // n_workers
        text = f"{name}: {n_workers} workers x {per_worker} replica{'s' * (per_worker != 1)} = {replicas_n} replicas"
    else:
        text = f"{name}: 1 worker, {replicas_n} replica{'s' * (replicas_n != 1)}"
    if batch_size is not None:
        text += f", global batch {batch_size} ({batch_size / replicas_n:g} per replica)"
    if lr is not None:
        text += f", lr {lr:g}"
    return text
