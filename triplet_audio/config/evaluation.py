"""How a representation is evaluated: `EvaluationConfig`, `ClassifierConfig`.

The paper's protocol (../shared/DESIGN.md, "Evaluation protocol") as
settings. Each setting's default, help and bounds are written once here:
bin/evaluate's flags are derived from `EvaluationConfig`
(`fields.define_flags`), and the demo's evaluation settings are this class as
a part of `config.demo.DemoConfig`. The shallow classifiers' training fields
(`ClassifierTraining`) are shared by `EvaluationConfig` (what every classifier
of an evaluation uses) and `ClassifierConfig` (one classifier).

No TensorFlow here: `evaluation.metrics` runs what these describe.
"""

import dataclasses
from typing import Optional, Tuple

from triplet_audio.config import fields

# The parts of an evaluation: keys of results.json and of `parts`.
QBE = "qbe"
CLASSIFIER_1X512 = "classifier_1x512"
CLASSIFIER_2X512 = "classifier_2x512"
FEWSHOT = "fewshot"
ALL_PARTS = (QBE, CLASSIFIER_1X512, CLASSIFIER_2X512, FEWSHOT)

LINEAR_PROBE = "linear_probe"
"""results.json key of the linear-probe evaluation (`evaluation.linear_probe`)."""
PAPER_PROTOCOL = "paper"
BOTH_PROTOCOLS = "both"
PROTOCOLS = (PAPER_PROTOCOL, LINEAR_PROBE, BOTH_PROTOCOLS)
"""bin/evaluate --protocol values: the paper's parts (`parts`), the linear
probe on the dataset's folds or splits, or both."""
PROBE_CLASSIFIERS = ("linear", "mlp_1x512")
"""The linear probe's classifiers (`evaluation.linear_probe`)."""


def _floats(values):
    return tuple(float(v) for v in values)


def _float_texts(values):
    return ["%g" % v for v in values]


LOGMEL_REPRESENTATION = "logmel"
"""The baseline's representation name (`bin/embed --representation`)."""


@dataclasses.dataclass
class ClassifierTraining:
    """How a shallow classifier is trained (the fields both configs share).

    Attributes:
      hidden_units: units per hidden ReLU layer.
      epochs: passes over the training windows (no early stopping); in an
        `EvaluationConfig` those of the 1x512 and 2x512 classifiers
        (--classifier_epochs).
      batch_size: windows per step.
      learning_rate: Adam learning rate.
    """
    hidden_units: int = 512
    epochs: int = fields.setting(
        10, "Training epochs of the 1x512 and 2x512 classifiers.",
        flag="classifier_epochs", lower_bound=1)
    batch_size: int = 256
    learning_rate: float = 1e-3

    def _label(self, name):
        """How an error names field `name`."""
        return "%s.%s" % (type(self).__name__, name)

    def _bad(self, name, why):
        raise ValueError("%s: %s, got %r" % (self._label(name), why,
                                             getattr(self, name)))

    def _check_integer(self, name, minimum):
        value = getattr(self, name)
        if not fields.is_integer(value) or value < minimum:
            self._bad(name, "must be an integer >= %d" % minimum)

    def validate(self):
        """Checks the training fields; returns self.

        Raises:
          ValueError: naming the first invalid field.
        """
        for name in ("hidden_units", "epochs", "batch_size"):
            self._check_integer(name, 1)
        if isinstance(self.learning_rate, bool) or not (
                isinstance(self.learning_rate, (int, float)) and
                self.learning_rate > 0):
            self._bad("learning_rate", "must be > 0")
        return self


@dataclasses.dataclass
class ClassifierConfig(ClassifierTraining):
    """A shallow window classifier and how it is trained.

    Attributes:
      hidden_layers: number of hidden ReLU layers (1, 2, or 4 for few-shot
        on log-mel).
      seed: seeds initialisation and shuffling (`keras.utils.set_random_seed`).
      The training fields are `ClassifierTraining`'s.
    """
    hidden_layers: int = 1
    seed: int = 0

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Checks every field; returns self.

        Raises:
          ValueError: naming the first invalid field.
        """
        self._check_integer("hidden_layers", 0)
        return super().validate()

    @property
    def architecture(self):
        """e.g. "1x512", as in the paper's tables."""
        return "%dx%d" % (self.hidden_layers, self.hidden_units)


@dataclasses.dataclass
class EvaluationConfig(ClassifierTraining):
    """Settings of `metrics.evaluate`; defaults are the paper's protocol.

    Fields with a `fields.setting` are bin/evaluate's flags (see their help);
    the others are library settings without a flag.

    Attributes:
      seed: seeds every sample, draw and classifier (--eval_seed).
      parts: which of `ALL_PARTS` to run.
      qbe_num_pos: QbE positives per class.
      qbe_num_neg: QbE negatives per class.
      qbe_min_count: None for the exact protocol (--qbe_min_count=0); else
        see `metrics.sample_qbe_segments`.
      fewshot_per_class: labelled segments per class per draw.
      fewshot_draws: number of few-shot draws.
      fewshot_hidden_layers: None picks by representation (4 for "logmel",
        1 otherwise, as in the paper's Table 2).
      fewshot_epochs: training epochs of few-shot classifiers; they see ~5x
        fewer windows per epoch here than the full classifiers.
      allow_segment_overlap: permit segment ids present in both sets (the
        held-out set must otherwise be disjoint).
      The classifier training fields (hidden_units, epochs, batch_size,
      learning_rate) are `ClassifierTraining`'s; epochs is
      --classifier_epochs.
    """
    seed: int = fields.setting(
        0, "Seed of the QbE samples, classifier initialisation and few-shot "
        "draws.", flag="eval_seed")
    parts: Tuple[str, ...] = ALL_PARTS
    qbe_num_pos: int = fields.setting(
        100, "QbE: segments sampled per class that have it.", lower_bound=1)
    qbe_num_neg: int = fields.setting(
        100, "QbE: segments sampled per class that do not have it.",
        lower_bound=1)
    qbe_min_count: Optional[int] = fields.setting(
        None, "QbE: 0 is the paper's exact protocol (a class with fewer than "
        "--qbe_num_pos positives or --qbe_num_neg negatives is skipped); N > "
        "0 keeps a class with at least N of each and uses all it has (small "
        "corpora).", lower_bound=0, kind="int", parse=fields.zero_is_none,
        format=fields.none_is_zero)
    fewshot_per_class: int = fields.setting(
        20, "Few-shot: labelled segments per class per draw.", lower_bound=1)
    fewshot_draws: int = fields.setting(
        3, "Few-shot: number of random draws averaged.", lower_bound=1)
    fewshot_hidden_layers: Optional[int] = None
    fewshot_epochs: int = fields.setting(
        30, "Training epochs of each few-shot classifier.", lower_bound=1)
    allow_segment_overlap: bool = False
    retrieval_k: int = fields.setting(
        0, "Also report retrieval precision@K and mAP@K with every labelled "
        "eval segment as a query, through a search index of the whole eval "
        "set (no sampling; results.json key retrieval_at_k); 0 skips it. "
        "The paper's sampled QbE is unchanged.", lower_bound=0)
    protocol: str = fields.setting(
        PAPER_PROTOCOL, "paper: the paper's QbE, classifier and few-shot "
        "parts on --train / --eval; linear_probe: a linear classifier and a "
        "1x512 MLP on frozen clip embeddings with the dataset's own folds "
        "(foldN splits: cross-validation, mean and spread) or splits "
        "(train / val / eval), accuracy for single-label data, mAP for "
        "multi-label (--eval optional: the segments of --train and --eval "
        "together); both: the two.", choices=PROTOCOLS)
    probe_l2: Tuple[float, ...] = fields.setting(
        (1e-5, 1e-4, 1e-3, 1e-2, 1e-1), "Linear probe: L2 penalties tried "
        "(on the mean loss over standardised clip embeddings); the one "
        "scoring best on the validation part is kept.", kind="list",
        parse=_floats, format=_float_texts)
    probe_classifiers: Tuple[str, ...] = fields.setting(
        PROBE_CLASSIFIERS, "Linear probe: the classifiers trained, "
        "comma-separated (linear, mlp_1x512). The MLP costs ~100x the "
        "linear one on 6,144-d log-mel.", kind="list", parse=tuple,
        format=list)
    probe_max_iter: int = fields.setting(
        500, "Linear probe: L-BFGS iterations at most per fit.",
        lower_bound=1)
    probe_val_fraction: float = fields.setting(
        0.1, "Linear probe: share of the training segments held out for "
        "validation when the data has no val split (nor folds).",
        lower_bound=0.0, upper_bound=1.0)

    def __post_init__(self):
        self.validate()

    def _label(self, name):
        # A field that is a flag is named as the flag (--classifier_epochs).
        field = {f.name: f for f in dataclasses.fields(self)}[name]
        if field.metadata:
            return "--" + fields.flag_name(field)
        return super()._label(name)

    def validate(self):
        """Checks every field; returns self.

        Raises:
          ValueError: naming the first invalid field (as its flag where it
            has one).
        """
        self.parts = tuple(self.parts)
        unknown = sorted(set(self.parts) - set(ALL_PARTS))
        if unknown:
            raise ValueError("EvaluationConfig.parts: unknown %s (known: %s)"
                             % (unknown, ", ".join(ALL_PARTS)))
        if not fields.is_integer(self.seed):
            self._bad("seed", "must be an integer")
        for name in ("qbe_num_pos", "qbe_num_neg", "fewshot_per_class",
                     "fewshot_draws", "fewshot_epochs"):
            self._check_integer(name, 1)
        if self.qbe_min_count is not None:
            self._check_integer("qbe_min_count", 0)
        if self.fewshot_hidden_layers is not None:
            self._check_integer("fewshot_hidden_layers", 0)
        if self.protocol not in PROTOCOLS:
            self._bad("protocol", "must be one of %s" % ", ".join(PROTOCOLS))
        self.probe_l2 = _floats(self.probe_l2)
        if not self.probe_l2 or min(self.probe_l2) <= 0:
            self._bad("probe_l2", "must be one or more values > 0")
        self.probe_classifiers = tuple(self.probe_classifiers)
        unknown = sorted(set(self.probe_classifiers) - set(PROBE_CLASSIFIERS))
        if unknown or not self.probe_classifiers:
            self._bad("probe_classifiers", "must be one or more of %s" %
                      ", ".join(PROBE_CLASSIFIERS))
        self._check_integer("probe_max_iter", 1)
        if not 0 < self.probe_val_fraction < 1:
            self._bad("probe_val_fraction", "must be in (0, 1)")
        return super().validate()

    def classifier(self, hidden_layers, epochs=None):
        """The `ClassifierConfig` with `hidden_layers` under these settings."""
        training = {f.name: getattr(self, f.name)
                    for f in dataclasses.fields(ClassifierTraining)}
        if epochs is not None:
            training["epochs"] = epochs
        return ClassifierConfig(hidden_layers=hidden_layers, seed=self.seed,
                                **training)

    def fewshot_layers(self, representation):
        """Hidden layers of the few-shot classifier for `representation`."""
        if self.fewshot_hidden_layers is not None:
            return self.fewshot_hidden_layers
        return 4 if representation == LOGMEL_REPRESENTATION else 1
