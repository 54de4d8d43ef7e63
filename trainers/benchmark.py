"""`python -m trainers.benchmark`: training throughput of the real engine step, variants side by side.

Each variant (precision, XLA) runs in its own process (the precision policy and the strategy are
per-process) on the same synthetic batch; the table reports images/s and the ratio to the first
variant, measured in one run because machines are noisy.

    python -m trainers.benchmark --model resnet50 --image-size 224 --batch-size 32 --variants fp32,bf16,bf16+xla
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def measure(args, precision, xla):
    """Images/s of `args.steps` train steps after `args.warmup` (tracing and autotuning excluded)."""
    from trainers import recipes
    from trainers.config import Config
    from trainers.engine import Trainer

    with tempfile.TemporaryDirectory() as model_dir:
        config = Config(
            **dict(
                recipes.CIFAR10,
                model=args.model,
                data="synthetic",
                image_size=args.image_size,
                batch_size=args.batch_size,
                augment="none",
                mean="none",
                steps=args.warmup + args.steps,
                precision=precision,
                xla=xla,
                cpu_replicas=args.cpu_replicas,
                gpus=args.gpus,
                num_classes=args.classes,
                model_dir=model_dir,
                export=False,
                progress=False,
            )
        )
        trainer = Trainer(config, "benchmark")
        batch = next(iter(trainer._dataset("train")))
        for _ in range(args.warmup):
            trainer._train_step(batch)
        trainer.step.numpy()  # wait for the warm-up to finish
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer._train_step(batch)
        trainer.step.numpy()
        return args.batch_size * args.steps / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m trainers.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (tracing, autotuning)")
    parser.add_argument("--variants", default="fp32,bf16", help="comma list of fp32|bf16|fp16, +xla to compile")
    parser.add_argument("--gpus", type=int, default=None)
    parser.add_argument("--cpu-replicas", type=int, default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one variant
    args = parser.parse_args(argv)

    if args.one:
        precision, _, xla = args.one.partition("+")
        print(json.dumps({"images_per_second": measure(args, precision, xla == "xla")}))
        return 0

    rows = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, "-m", "trainers.benchmark", *(argv if argv is not None else sys.argv[1:])]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        out = subprocess.run([*cmd, "--one", variant], capture_output=True, text=True, env=env)
        if out.returncode:
            print(f"{variant}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append((variant, json.loads(out.stdout.strip().splitlines()[-1])["images_per_second"]))
        print(f"{variant:>12}: {rows[-1][1]:8.1f} images/s", flush=True)
    base = rows[0][1]
    print(f"\n{args.model} {args.image_size}px, batch {args.batch_size}, {args.steps} timed steps each")
    print("| variant | images/s | ratio |\n|---|---|---|")
    for variant, rate in rows:
        print(f"| {variant} | {rate:.1f} | {rate / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
