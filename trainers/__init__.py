"""The training engine: `python -m trainers.cifar10`, `trainers.imagenet`, `trainers.demo`, `trainers.export`, `trainers.benchmark`."""
