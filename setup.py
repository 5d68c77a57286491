"""Package definition for triplet-audio. See BUILD_NOTES.md for why each
dependency is here and what its range is pinned to."""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _version():
    with open(os.path.join(HERE, "triplet_audio", "__init__.py")) as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


# The installed commands: triplet-audio-NAME runs what a checkout's bin/NAME
# runs (the same function of triplet_audio/cli/commands.py), and
# `triplet-audio NAME` too. Namespaced, because bare names would clash with
# other packages' commands, and `export` is a shell builtin.
COMMANDS = ("extract_features", "train", "export", "embed", "evaluate",
            "demo", "inspect_triplets", "data_service", "make_corpus",
            "index", "search", "train_classifier")
CONSOLE_SCRIPTS = ["triplet-audio=triplet_audio.cli.commands:main"] + [
    "triplet-audio-%s=triplet_audio.cli.commands:%s" % (
        name.replace("_", "-"), name) for name in COMMANDS]


setup(
    name="triplet-audio",
    version=_version(),
    description=("Semantic audio embeddings from unlabeled audio with triplet "
                 "sampling and semi-hard triplet loss (Jansen et al.)."),
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.14",
    packages=find_packages(include=["triplet_audio", "triplet_audio.*"]),
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.10,<4",
        "absl-py>=2.1,<3",
        "numpy>=1.26,<3",
        "scikit-learn>=1.5,<2",
        "threadpoolctl>=3.1,<4",
        "soundfile>=0.12.1,<0.15",
        "soxr>=0.5,<2",
        "matplotlib>=3.8,<4",
        "tensorboard>=2.20,<2.22",
        "faiss-cpu>=1.12,<2",
    ],
    extras_require={
        # Beam runners for bin/extract_features (--runner=DirectRunner, ...).
        "beam": ["apache-beam>=2.69,<3"],
        # The same, plus what DataflowRunner needs to submit a job.
        "dataflow": ["apache-beam[gcp]>=2.69,<3"],
        # Beam too, so that CI runs the Beam-vs-local extraction tests.
        "test": ["pytest>=8,<10", "apache-beam>=2.69,<3",
                 "selenium>=4.20,<5"],
    },
)
