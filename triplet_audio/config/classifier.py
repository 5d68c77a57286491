"""What bin/train_classifier trains and ships: `ClassifierExportConfig`.

Each setting's default, help and bounds are written once here; the
binary's flags are derived from them (`fields.define_flags`). The linear
probe's settings (--probe_l2, --probe_max_iter, --probe_val_fraction,
--eval_seed) are `EvaluationConfig`'s, shared with bin/evaluate. No
TensorFlow.
"""

import dataclasses

from triplet_audio.config import evaluation as eval_config
from triplet_audio.config import fields

HEADS = eval_config.PROBE_CLASSIFIERS
"""The heads a shipped classifier can have: "linear", "mlp_1x512"."""


@dataclasses.dataclass(frozen=True)
class ClassifierExportConfig:
    """A classifier head on an export's embeddings, and where it goes.

    Attributes:
      saved_model: the export (bin/export's --export_dir) whose embeddings
        the head classifies; the shipped model embeds with it.
      classifier_input: (--input) the labelled corpus: a TFRecord corpus, audio
        (directory, glob, CSV) or a dataset root with --input_format.
      embeddings: instead of classifier_input, that corpus already embedded
        by bin/embed with the same export.
      export_dir: where the classifier's SavedModel, metadata.json and
        results.json go.
      head: one of `HEADS`.
      overwrite: replace an existing export_dir.
    """

    saved_model: str = fields.setting(
        None, "(Required.) Export directory written by bin/export: its "
        "embeddings are the head's input, and the shipped model embeds "
        "with it.", kind="str")
    classifier_input: str = fields.setting(
        None, "Labelled corpus to train on: a TFRecord corpus, audio files "
        "(directory, glob, CSV path,labels[,split]) or a dataset root with "
        "--input_format. Or give --embeddings.", kind="str", flag="input")
    embeddings: str = fields.setting(
        None, "Instead of --classifier_input: its embeddings, written by "
        "bin/embed with the same --saved_model.", kind="str")
    export_dir: str = fields.setting(
        None, "(Required.) Directory for the classifier's SavedModel, "
        "metadata.json (class names) and results.json (held-out score).",
        kind="str")
    head: str = fields.setting(
        HEADS[0], "The classifier on the clip embedding: linear (logistic "
        "regression) or mlp_1x512.", choices=HEADS)
    overwrite: bool = fields.setting(
        False, "Replace an existing --export_dir.")

    def __post_init__(self):
        for name in ("saved_model", "export_dir"):
            if not getattr(self, name):
                raise ValueError("--%s is required" % name)
        if bool(self.classifier_input) == bool(self.embeddings):
            raise ValueError("give exactly one of --input and --embeddings")
        if self.head not in HEADS:
            raise ValueError("--head: must be one of %s, got %r" % (
                ", ".join(HEADS), self.head))
