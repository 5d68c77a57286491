"""The option lists every stage and flag share (their one home, no TensorFlow).

The sampler names here are the registry's keys: `sampling.registry` maps
each to its stream kind and function, and a test checks the two agree.
"""

SAMPLERS = ("noise", "translation", "mixing", "proximity", "supervised",
            "joint")
"""Every `--sampler` value, in the order of the paper's Table 1, then any
added by `sampling.registry.register`."""

UNSUPERVISED_SAMPLERS = ("noise", "translation", "mixing", "proximity")
"""The samplers that need no labels (what `joint` mixes)."""


def add_sampler(name, unsupervised):
    """Adds a sampler name (called by `sampling.registry.register`)."""
    global SAMPLERS, UNSUPERVISED_SAMPLERS
    if name not in SAMPLERS:
        SAMPLERS = SAMPLERS + (name,)
    if unsupervised and name not in UNSUPERVISED_SAMPLERS:
        UNSUPERVISED_SAMPLERS = UNSUPERVISED_SAMPLERS + (name,)


def remove_sampler(name):
    """Removes a sampler name added by `add_sampler`."""
    global SAMPLERS, UNSUPERVISED_SAMPLERS
    SAMPLERS = tuple(s for s in SAMPLERS if s != name)
    UNSUPERVISED_SAMPLERS = tuple(s for s in UNSUPERVISED_SAMPLERS
                                  if s != name)

SUPERVISED_SAMPLER = "supervised"
"""The topline: triplets by class labels."""

CLASS_SAMPLING = ("uniform", "frequency")
"""How the supervised sampler chooses a triplet's class: uniform over classes
(the paper) or in proportion to each class's windows."""

MODELS = ("resnet50", "resnet18", "small")
"""Embedding networks `model.models.build_model` knows ("resnet50" is the
paper's)."""

DISTANCES = ("squared", "euclidean")
"""Distances of the triplet loss."""

OPTIMIZERS = ("adam", "sgd", "adamw")
LR_SCHEDULES = ("constant", "cosine")
MIXED_PRECISION = ("none", "bf16", "fp16")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
MINING = ("local", "global")
"""Where the semi-hard miner looks for negatives: each replica's share of the
batch, or the whole global batch (all-gathered)."""

AUDIO_EXTENSIONS = ("wav", "flac", "ogg", "oga", "mp3", "aiff", "aif", "au",
                    "caf", "w64", "rf64")
"""File extensions of the formats libsndfile reads (`features.audio_io`),
lower case without the dot: what a directory input picks up by default."""

LOCAL_RUNNER = "local"
"""The extraction runner of worker processes on this machine; any other
`--runner` names an Apache Beam runner."""

CSV_FORMAT = "csv"
"""`--input_format` of a directory, glob or `path,labels[,split]` CSV."""
AUTO_FORMAT = "auto"
"""`--input_format` that detects a dataset layout from its metadata files."""
DATASET_FORMATS = ("audioset", "fsd50k", "esc50", "urbansound8k")
"""Datasets read as distributed (`features.datasets`)."""
INPUT_FORMATS = (CSV_FORMAT,) + DATASET_FORMATS + (AUTO_FORMAT,)
"""Every `--input_format` value of bin/extract_features and bin/embed."""
