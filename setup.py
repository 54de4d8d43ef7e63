"""keras_resnet: every network of He et al. (2015) for Keras 3, plus a tf.distribute trainer."""

from setuptools import find_packages, setup

# What the trainers need besides TensorFlow itself; the models alone need only Keras.
TRAINER = [
    "tensorflow-datasets~=4.9",
    "importlib_resources",  # tfds needs it to download (--download); it does not declare it
    "keras-tuner~=1.4",
    "tensorboard~=2.21.0",  # TF 2.21 no longer pulls it in
    "scikit-learn>=1.3",  # ships the `digits` data the demo trains on
    "pyyaml>=6",
    "pillow>=10",
    # COCO mAP for detection (trainers.detection.metrics). Not keras-hub: it requires tensorflow-text, which
    # requires the full `tensorflow` distribution on top of tensorflow-cpu (and hub download clients).
    "pycocotools>=2.0.7",
]

setup(
    name="keras_resnet",
    version="0.1.0",
    description=(
        "Every network of 'Deep Residual Learning for Image Recognition' for Keras 3, "
        "and a tf.distribute trainer that exports to TF Serving."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["keras_resnet", "keras_resnet.*", "trainers", "trainers.*"]),
    install_requires=["keras~=3.15.0", "numpy"],
    extras_require={
        "cpu": ["tensorflow-cpu~=2.21.0", *TRAINER],
        "gpu": ["tensorflow[and-cuda]~=2.21.0", *TRAINER],
        "dev": [
            "tensorflow-cpu~=2.21.0",
            *TRAINER,
            "jax[cpu]",
            "kubernetes-validate",  # the Kubernetes manifest checked against the API schema, no cluster
            "pytest>=8",
            "pytest-timeout",
            "pytest-xdist",
            "ruff==0.17.5",
        ],
    },
)
