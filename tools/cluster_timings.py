"""Wall times for docs/cluster.md: one worker vs two on the same job, and the input pipeline alone with and
without two tf.data service workers, all on localhost.

    python tools/cluster_timings.py [--steps 60] [--images 2048]

On a machine with few cores this shows correctness and overhead, not speed-up: every process shares them.
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", "PYTHONPATH": ROOT}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(args, workers, work):
    """Seconds from start to exit of a `trainers.cifar10` job on `workers` localhost processes."""
    common = ["--data", "synthetic", "--model", "resnet20", "--batch-size", "128", "--steps", str(args.steps)]
    common += ["--no-progress", "--no-export", "--model-dir", os.path.join(work, f"run{workers}")]
    hosts = ",".join(f"localhost:{free_port()}" for _ in range(workers))
    start = time.perf_counter()
    processes = []
    for index in range(workers):
        cluster = ["--worker-hosts", hosts, "--task-index", str(index)] if workers > 1 else []
        cmd = [sys.executable, "-m", "trainers.cifar10", *common, *cluster]
        processes.append(subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    errors = [p.communicate()[1] for p in processes]
    if any(p.returncode for p in processes):
        raise SystemExit(f"a {workers}-worker run failed:\n{errors[0][-2000:]}")
    return time.perf_counter() - start


PIPELINE = """
import sys, time
from trainers import data, data_service
source = data.open_source("synthetic", num_classes=10)
address = sys.argv[1] if len(sys.argv) > 1 else None
kwargs = dict(global_batch_size=128, image_size=32, augment="cifar", training=True)
total, start = 0, time.perf_counter()
for epoch in range(3):
    service = address and data_service.service_for(address, "timing", "train", epoch, 0, 0)
    for images, _ in source.dataset("train", epoch=epoch, service=service, **kwargs):
        total += int(images.shape[0])
print(total / (time.perf_counter() - start))
"""


def pipeline(address=None):
    cmd = [sys.executable, "-c", PIPELINE, *([address] if address else [])]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def served_pipeline():
    port = free_port()
    servers = [subprocess.Popen([sys.executable, "-m", "trainers.data_service", "dispatcher", "--port", str(port)],
                                env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("localhost", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        for _ in range(2):
            cmd = [sys.executable, "-m", "trainers.data_service", "worker", "--dispatcher", f"localhost:{port}"]
            servers.append(subprocess.Popen([*cmd, "--host", "localhost"], env=ENV, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))  # fmt: skip
        time.sleep(5)
        return pipeline(f"grpc://localhost:{port}")
    finally:
        for server in servers:
            server.terminate()
            server.wait()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60, help="training steps of each job (global batch 128)")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for r in range(args.rounds):
            one, two = train(args, 1, os.path.join(work, f"r{r}")), train(args, 2, os.path.join(work, f"r{r}"))
            local, served = pipeline(), served_pipeline()
            rows.append((one, two, local, served))
            print(f"round {r + 1}: 1 worker {one:.1f} s, 2 workers {two:.1f} s; pipeline alone {local:.0f} img/s, "
                  f"through 2 data-service workers {served:.0f} img/s", flush=True)  # fmt: skip
    print("\n| round | 1 worker (s) | 2 workers (s) | pipeline, local (img/s) | pipeline, 2 service workers (img/s) |")
    print("|---|---|---|---|---|")
    for r, (one, two, local, served) in enumerate(rows, 1):
        print(f"| {r} | {one:.1f} | {two:.1f} | {local:.0f} | {served:.0f} |")


if __name__ == "__main__":
    main()
