"""The training engine.

Entry points: `python -m trainers.cifar10`, `trainers.imagenet`, `trainers.demo`, `trainers.export`,
`trainers.benchmark`.
"""
