"""Everything that defines a demo run: `DemoConfig`.

A demo is a corpus, its evaluation and the demo's own settings (which
training runs, the training flag file, shards, parallel stages). The corpus
and evaluation settings are parts (`CorpusConfig`, `EvaluationConfig`), never
restated: bin/demo's flags for them are bin/make_corpus's and bin/evaluate's,
with their defaults. The demo's own sizes and evaluation settings (e.g.
--qbe_min_count=15 for a small corpus) are in flags/demo_pipeline.cfg.

bin/demo's flags are derived from this class (`fields.define_flags` with
`FLAG_EXCLUDE`), and the run directory's demo_config.json is this dataclass
serialised (`jsonio`).

No TensorFlow here.
"""

import dataclasses
import os
from typing import Tuple

from triplet_audio.config import corpus as corpus_config
from triplet_audio.config import evaluation as eval_config
from triplet_audio.config import fields
from triplet_audio.config import options

BASELINE = eval_config.LOGMEL_REPRESENTATION
"""Name of the log-mel baseline, as `bin/embed --representation` spells it."""
TOPLINE = options.SUPERVISED_SAMPLER
ALL_RUNS = (TOPLINE,) + options.UNSUPERVISED_SAMPLERS + ("joint",)
"""Training runs in report order: the topline, the paper's samplers, joint."""

FLAG_EXCLUDE = ("out_dir", "train_flags")
"""Fields of `DemoConfig` (and its parts) that `fields.define_flags` leaves
alone: the corpus part's out_dir (the demo puts the corpus in its run
directory; --output_dir is the run directory) and train_flags, the repeatable
--train_flag, which `cli.flagdefs` defines itself (fields has no repeatable
flag kind)."""


@dataclasses.dataclass
class DemoConfig:
    """Everything that defines a demo run (see each setting's help).

    Attributes:
      output_dir: the run directory; everything is written under it.
      samplers: training runs, a subset of `ALL_RUNS` (report order is
        always that of `ALL_RUNS`).
      train_flagfile: flag file passed to every bin/train.
      train_flags: extra bin/train flags ("--name=value"), after the flag
        file so they override it (--train_flag, repeatable).
      corpus: the synthetic corpus (bin/make_corpus's settings; its out_dir
        is unused: the corpus goes to output_dir/corpus). Its workers also
        run feature extraction.
      num_shards: TFRecord shards of each extracted split.
      evaluation: how every representation is evaluated (bin/evaluate's
        settings).
      progress_every: seconds between progress lines of a running stage.
      jobs: stages run at the same time (each is a process; training uses
        every core it is given, so more than 2 rarely helps on a CPU).
      dry_run: only log the stages and their commands; run and write
        nothing.
    """
    output_dir: str = fields.setting(
        None, "(Required.) Run directory of the demo: corpus, features, runs, "
        "exports, embeddings, evaluations, logs and the final report.",
        kind="str")
    samplers: Tuple[str, ...] = fields.setting(
        ALL_RUNS, "Training runs, comma-separated, of: %s. 'supervised' is "
        "the topline of the recovery columns; the log-mel baseline is always "
        "evaluated." % ", ".join(ALL_RUNS), kind="list")
    train_flagfile: str = fields.setting(
        "flags/demo.cfg", "Flag file of every bin/train run (model, steps, "
        "batch, optimizer); relative paths are relative to the working "
        "directory.")
    train_flags: Tuple[str, ...] = fields.setting(
        (), "Extra flag for every bin/train run, after --train_flagfile so it "
        "wins (repeatable), e.g. --train_flag=--steps=20000 "
        "--train_flag=--model=resnet50.", flag="train_flag")
    corpus: corpus_config.CorpusConfig = dataclasses.field(
        default_factory=corpus_config.CorpusConfig)
    num_shards: int = fields.setting(
        4, "TFRecord shards of each extracted split.", lower_bound=1)
    evaluation: eval_config.EvaluationConfig = dataclasses.field(
        default_factory=eval_config.EvaluationConfig)
    progress_every: float = fields.setting(
        30.0, "Seconds between progress lines of a running stage.",
        lower_bound=1.0)
    jobs: int = fields.setting(
        2, "Stages run at the same time, each as soon as its inputs are "
        "complete; 2 keeps both cores of a small CPU busy while one stage "
        "waits on Python or start-up.", lower_bound=1)
    dry_run: bool = fields.setting(
        False, "Only list the stages and their commands; run and write "
        "nothing.")

    def validate(self):
        """Checks every field, the parts included; returns self.

        Raises:
          ValueError: naming the flag of the first invalid field.
        """
        def bad(flag, why):
            raise ValueError("--%s: %s" % (flag, why))
        if not self.output_dir:
            bad("output_dir", "required")
        self.samplers = tuple(s.strip() for s in self.samplers if s.strip())
        if not self.samplers:
            bad("samplers", "name at least one of %s" % ", ".join(ALL_RUNS))
        unknown = [s for s in self.samplers if s not in ALL_RUNS]
        if unknown:
            bad("samplers", "unknown %s (known: %s)" %
                (", ".join(unknown), ", ".join(ALL_RUNS)))
        if len(set(self.samplers)) != len(self.samplers):
            bad("samplers", "names a run twice: %s" % ",".join(self.samplers))
        if not os.path.isfile(self.train_flagfile):
            bad("train_flagfile", "no such file: %s (relative paths are "
                "relative to the working directory)" % self.train_flagfile)
        self.train_flags = tuple(self.train_flags)
        for flag in self.train_flags:
            if not flag.startswith("--"):
                bad("train_flag", "%r is not a flag (--name=value)" % flag)
        self.corpus.validate()
        # Both splits are needed: the classifiers train on one and are
        # scored on the other.
        for name in ("num_train", "num_eval"):
            if getattr(self.corpus, name) < 1:
                bad(name, "must be >= 1, got %r" % getattr(self.corpus, name))
        for name in ("num_shards", "jobs"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1, got %r" % getattr(self, name))
        if not self.progress_every > 0:
            bad("progress_every", "must be > 0")
        self.evaluation.validate()
        return self

    def runs(self):
        """The training runs in report order."""
        return tuple(s for s in ALL_RUNS if s in self.samplers)
