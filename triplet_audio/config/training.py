"""Everything that defines a training run: `TrainConfig`.

Each field's default, help and bounds are written once here; bin/train's
flags are derived from them (`fields.define_flags`), and a run's
`config.json` is this dataclass serialised (`jsonio.write_config`), read back
by `config_from_dict`.
"""

import dataclasses

from triplet_audio.config import fields
from triplet_audio.config import options
from triplet_audio.config import sampling
from triplet_audio.config import service



def triplets_per_batch(batch_size, replicas=1):
    """Triplets per replica in a batch of `batch_size` windows: its one check.

    The loss mines negatives within each replica's share of the batch, and
    the batch layout interleaves triplets (anchor, positive, negative), so
    every share must hold whole triplets.

    Args:
      batch_size: the global batch in windows.
      replicas: replicas in sync sharing the batch.

    Returns:
      int k: each replica's share holds 3k windows.

    Raises:
      ValueError: naming --batch_size when it is not an integer, not a
        positive multiple of 3, or does not split into whole triplets per
        replica.
    """
    if isinstance(batch_size, bool) or int(batch_size) != batch_size:
        raise ValueError("--batch_size: must be an integer, got %r" %
                         (batch_size,))
    batch_size = int(batch_size)
    if batch_size < 3 or batch_size % 3:
        raise ValueError("--batch_size: must be a positive multiple of 3 "
                         "(whole triplets), got %d" % batch_size)
    per_replica = batch_size // replicas
    if batch_size % replicas or per_replica < 3 or per_replica % 3:
        raise ValueError(
            "--batch_size: %d over %d replicas gives %s windows per replica, "
            "not a positive multiple of 3 (whole triplets)" % (
                batch_size, replicas, "%d" % per_replica
                if batch_size % replicas == 0 else
                "%.4g" % (batch_size / replicas)))
    return per_replica // 3


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (see each field's help).

    Attributes:
      train_data: corpus directory, shard glob or comma-separated globs.
      model_dir: run directory.
      sampler: the triplet sampler configuration (a part: its flags are
        bin/train's too).
      num_classes: class vocabulary size, read from the corpus manifest (not
        a flag; needed by the supervised sampler).
      The other fields are bin/train's flags of the same name.
    """
    train_data: str = fields.setting(
        None, "Training corpus: a corpus directory, a shard glob or "
        "comma-separated globs.", kind="str")
    model_dir: str = fields.setting(
        None, "Run directory: checkpoints, config.json, TensorBoard "
        "summaries.", kind="str")
    sampler: sampling.SamplerConfig = None
    model: str = fields.setting("resnet50", "Embedding network.",
                                choices=options.MODELS)
    embedding_size: int = fields.setting(128, "Embedding dimension.",
                                         lower_bound=1)
    batch_size: int = fields.setting(
        192, "Global batch size in windows (3 per triplet, so a multiple of "
        "3, and of 3 x the number of replicas).", lower_bound=3)
    margin: float = fields.setting(0.2, "Triplet loss margin (delta).",
                                   lower_bound=0.0)
    distance: str = fields.setting("squared", "Distance of the triplet loss.",
                                   choices=options.DISTANCES)
    optimizer: str = fields.setting("adam", "Optimizer (sgd: momentum 0.9).",
                                    choices=options.OPTIMIZERS)
    learning_rate: float = fields.setting(1e-3, "Peak learning rate.",
                                          lower_bound=0.0)
    lr_schedule: str = fields.setting(
        "cosine", "Learning-rate schedule after warm-up (cosine decays to 0 "
        "at --steps).", choices=options.LR_SCHEDULES)
    warmup_steps: int = fields.setting(0, "Linear warm-up steps.",
                                       lower_bound=0)
    weight_decay: float = fields.setting(
        0.0, "Decoupled weight decay (adamw only).", lower_bound=0.0)
    steps: int = fields.setting(10000, "Total training steps.", lower_bound=1)
    stop_at_step: int = fields.setting(
        0, "End this run at step N with a checkpoint, as a signal would, "
        "but with exit status 0 (0: off). The learning-rate schedule still "
        "runs to --steps; rerunning without it resumes. For staged runs and "
        "for comparing a resumed run with one stopped at the same steps.",
        lower_bound=0)
    checkpoint_every: int = fields.setting(
        1000, "Save a checkpoint every N steps (and at exit).", lower_bound=1)
    keep_checkpoints: int = fields.setting(3, "Checkpoints kept.",
                                           lower_bound=1)
    log_every: int = fields.setting(
        50, "Console progress line / summaries every N steps.",
        lower_bound=1)
    mixed_precision: str = fields.setting(
        "none", "Mixed-precision policy; embeddings and loss stay float32.",
        choices=options.MIXED_PRECISION)
    jit_compile: bool = fields.setting(False,
                                       "Compile the train step with XLA.")
    strategy: str = fields.setting(
        "default", "tf.distribute strategy: default (one device), mirrored "
        "(all local GPUs, or --cpu_replicas CPU devices), multi_worker (every "
        "worker runs the same command; the cluster comes from the TF_CONFIG "
        "environment variable), tpu (needs --tpu). --batch_size is the "
        "global batch, split evenly over the replicas. Under multi_worker "
        "and tpu a SIGTERM to any worker checkpoints every worker at the "
        "same step and stops them all (exit status 3).",
        choices=options.STRATEGIES)
    tpu: str = fields.setting(
        None, "TPU for --strategy=tpu: 'local' on a TPU VM, else the TPU's "
        "name or grpc:// address.", kind="str")
    mining: str = fields.setting(
        "local", "Where negatives are mined with several replicas: local (in "
        "each replica's own share of the batch) or global (in the whole "
        "global batch: embeddings and labels are all-gathered each step; "
        "loss and gradients equal those of one device holding the global "
        "batch).", choices=options.MINING)
    cpu_replicas: int = fields.setting(
        0, "With --strategy=mirrored: split the CPU into N logical devices "
        "and mirror over them (0: off), to try multi-replica training (e.g. "
        "--mining=global) on a machine without accelerators. It shares the "
        "same cores, so it is not faster.", lower_bound=0)
    seed: int = fields.setting(
        0, "Global seed: data order, sampler randomness and model "
        "initialisation.")
    skip_corrupt: bool = fields.setting(
        False, "Skip corrupt records (bad checksum, damaged length header, "
        "truncation) and read every intact one; each skip is logged and "
        "counted in the run summary (skipped_records). Without it a corrupt "
        "record stops the run with an error naming the shard and byte "
        "offset.")
    num_classes: int = 0
    tf_data_service: str = fields.setting(
        None, "grpc://host:port of a tf.data service dispatcher "
        "(bin/data_service) whose workers run the input pipeline; default: "
        "run it in this process. The workers must read --train_data at the "
        "same path.", kind="str")
    tf_data_service_streams: int = fields.setting(
        service.DEFAULT_NUM_STREAMS, "With --tf_data_service: independent "
        "pipeline streams (one seed each) offered to the workers, so the most workers "
        "that contribute, restarted ones included. The pipeline is built "
        "this many times at start-up.", lower_bound=1)

    def validate(self):
        """Checks every field.

        Returns:
          self.

        Raises:
          ValueError: naming the flag of the first invalid field.
        """
        def bad(field, why):
            raise ValueError("--%s: %s" % (field, why))
        if not self.train_data:
            bad("train_data", "required")
        if not self.model_dir:
            bad("model_dir", "required")
        if self.sampler is None:
            bad("sampler", "required (one of %s)" % ", ".join(
                options.SAMPLERS))
        for name, choices in (("model", options.MODELS),
                              ("distance", options.DISTANCES),
                              ("optimizer", options.OPTIMIZERS),
                              ("lr_schedule", options.LR_SCHEDULES),
                              ("mixed_precision", options.MIXED_PRECISION),
                              ("strategy", options.STRATEGIES),
                              ("mining", options.MINING)):
            if getattr(self, name) not in choices:
                bad(name, "must be one of %s, got %r" %
                    (", ".join(choices), getattr(self, name)))
        if self.embedding_size < 1:
            bad("embedding_size", "must be >= 1")
        if self.margin < 0:
            bad("margin", "must be >= 0")
        if not self.learning_rate > 0:
            bad("learning_rate", "must be > 0")
        if self.steps < 1:
            bad("steps", "must be >= 1")
        if self.warmup_steps < 0 or self.warmup_steps >= max(self.steps, 1) and (
                self.warmup_steps > 0):
            bad("warmup_steps", "must be in [0, steps)")
        if self.checkpoint_every < 1:
            bad("checkpoint_every", "must be >= 1")
        if self.stop_at_step < 0:
            bad("stop_at_step", "must be >= 0 (0: off)")
        if self.strategy == "tpu" and not self.tpu:
            bad("tpu", "required with --strategy=tpu")
        if self.tf_data_service:
            self.tf_data_service = service.parse_service_address(
                self.tf_data_service)
        if self.tf_data_service_streams < 1:
            bad("tf_data_service_streams", "must be >= 1")
        if self.cpu_replicas < 0:
            bad("cpu_replicas", "must be >= 0")
        if self.cpu_replicas and self.strategy != "mirrored":
            bad("cpu_replicas", "only with --strategy=mirrored (got "
                "--strategy=%s)" % self.strategy)
        triplets_per_batch(self.batch_size, self.cpu_replicas or 1)
        self.sampler.validate()
        return self


def config_from_dict(d):
    """Rebuilds a TrainConfig from a run's config.json (a dict).

    Unknown keys are ignored (a newer config read by older code).
    """
    d = dict(d)
    d["sampler"] = sampling.SamplerConfig.from_dict(d["sampler"])
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in names})
