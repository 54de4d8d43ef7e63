"""`python -m trainers.data_service`: tf.data service servers that decode and augment for the trainers.

On 8+ accelerators one host's trainer process cannot decode JPEGs fast enough; tf.data's own service moves
that work to other machines. Start one dispatcher and any number of workers, then train with
`--data-service grpc://HOST:PORT`:

    python -m trainers.data_service dispatcher --port 5050
    python -m trainers.data_service worker --dispatcher HOST:5050          # on each decoding machine
    python -m trainers.imagenet --data-service grpc://HOST:5050 ...

The workers read the data at the same paths as the trainers (a shared file system or bucket). Each epoch is
one job with dynamic sharding: every example goes to exactly one worker, once. The gRPC between trainers,
dispatcher and workers is unauthenticated and unencrypted: private networks only.
"""

import argparse
import contextlib
import dataclasses
import socket
import sys
import threading
import time
import uuid
from urllib.parse import urlparse

DEFAULT_PORT = 5050
CONNECT_SECONDS = 5.0
WATCH_SECONDS = 2.0  # how often a run checks that its dispatcher still answers


class DataServiceError(ValueError):
    """The --data-service address is malformed or nothing answers there."""


def parse_address(text):
    """'grpc://HOST:PORT' (or HOST:PORT) -> (host, port); DataServiceError saying the expected form."""
    raw = str(text).strip()
    url = urlparse(raw if "://" in raw else f"grpc://{raw}")
    try:
        port = url.port
    except ValueError:
        port = None
    if url.scheme != "grpc" or not url.hostname or port is None or url.path not in ("", "/"):
        raise DataServiceError(
            f"--data-service {text!r}: expected grpc://HOST:PORT, the dispatcher's address "
            f"(python -m trainers.data_service dispatcher --port {DEFAULT_PORT})."
        )
    return url.hostname, port


def check_reachable(text, seconds=CONNECT_SECONDS):
    """Raises DataServiceError unless something accepts connections at the dispatcher's address."""
    host, port = parse_address(text)
    try:
        with socket.create_connection((host, port), timeout=seconds):
            return
    except OSError as error:
        reason = error.strerror or type(error).__name__
    raise DataServiceError(
        f"--data-service {text}: no tf.data service dispatcher answers at {host}:{port} ({reason}). Start one "
        f"there with `python -m trainers.data_service dispatcher --port {port}` and at least one "
        f"`python -m trainers.data_service worker --dispatcher {host}:{port}`, or drop --data-service to "
        "decode in the trainer."
    )


@contextlib.contextmanager
def watch(address, timeout, on_lost):
    """While inside, a thread calls on_lost(address) once the dispatcher at `address` (None: nothing to watch)
    has not answered for `timeout` seconds. TensorFlow's client would wait for it far longer, without a word,
    and the training steps with it."""
    if not address:
        yield
        return
    stop = threading.Event()

    def run():
        down_since = None
        while not stop.wait(WATCH_SECONDS):
            try:
                check_reachable(address, seconds=WATCH_SECONDS)
                down_since = None
            except DataServiceError:
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since >= timeout and not stop.is_set():
                    on_lost(address)
                    return

    thread = threading.Thread(target=run, name="data-service-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


@dataclasses.dataclass(frozen=True)
class Service:
    """Where a pipeline's decoding runs, and the job it joins: one job per run, split, epoch and pipeline."""

    address: str
    job_name: str

    def distribute(self, dataset):
        import tensorflow as tf

        return dataset.apply(
            tf.data.experimental.service.distribute(
                processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC,
                service=self.address,
                job_name=self.job_name,
            )
        )


def service_for(address, run_token, split, epoch, skip, pipeline_id):
    """The Service of one pipeline's epoch. `run_token` is this process's: a rerun never joins (and
    drains) a job a crashed run left behind."""
    host, port = parse_address(address)
    return Service(f"grpc://{host}:{port}", f"trainers-{run_token}-{split}-e{epoch}-s{skip}-p{pipeline_id}")


def new_run_token():
    return uuid.uuid4().hex[:12]


def serve_dispatcher(port):
    import tensorflow as tf

    config = tf.data.experimental.service.DispatcherConfig(port=port)
    server = tf.data.experimental.service.DispatchServer(config)
    print(f"tf.data service dispatcher on {server.target.replace('localhost', socket.getfqdn())}", flush=True)
    return server


def serve_worker(dispatcher, port=0, host=None):
    import tensorflow as tf

    dispatcher_host, dispatcher_port = parse_address(dispatcher)
    check_reachable(f"grpc://{dispatcher_host}:{dispatcher_port}")
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=f"{dispatcher_host}:{dispatcher_port}",
        port=port,
        worker_address=f"{host or socket.getfqdn()}:%port%",
    )
    server = tf.data.experimental.service.WorkerServer(config)
    print(f"tf.data service worker for {dispatcher_host}:{dispatcher_port}", flush=True)
    return server


def parser():
    p = argparse.ArgumentParser(prog="python -m trainers.data_service", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="role", required=True)
    d = sub.add_parser("dispatcher", help="the one server trainers and workers connect to")
    d.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    w = sub.add_parser("worker", help="a server that decodes and augments; start one per decoding machine")
    w.add_argument("--dispatcher", required=True, help="the dispatcher's HOST:PORT (or grpc://HOST:PORT)")
    w.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    w.add_argument("--host", default=None, help="the name trainers reach this worker by (default: this host's)")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    from trainers import logs

    logs.setup_logging()
    logs.import_tensorflow_quietly()
    try:
        server = (
            serve_dispatcher(args.port)
            if args.role == "dispatcher"
            else serve_worker(args.dispatcher, args.port, args.host)
        )
    except DataServiceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        server.join()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
