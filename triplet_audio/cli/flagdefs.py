"""Every command-line flag of every binary, defined once.

Binaries call the `define_*` functions they need, then hand `absl.flags.FLAGS`
to one library entry point. Flags are read one way only: `FLAGS.name` inside
the `*_config_from_flags` functions, which turn them into validated config
dataclasses. Library code never reads flags.

Flag names follow the command-line contract in ../shared/DESIGN.md.
"""

from absl import flags

from triplet_audio.features import audio_io
from triplet_audio import constants
from triplet_audio.config import options

FLAGS = flags.FLAGS

SAMPLERS = options.SAMPLERS
UNSUPERVISED_SAMPLERS = options.UNSUPERVISED_SAMPLERS


def _once(fn):
    """Makes a define_* function idempotent (binaries may share groups)."""
    done = []

    def wrapper():
        if not done:
            fn()
            done.append(True)
    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    return wrapper


@_once
def define_extract_flags():
    """Flags of bin/extract_features."""
    # --input and --output_dir are shared with other binaries' groups; a
    # process (e.g. a test) may define several groups.
    _define_if_missing(
        flags.DEFINE_string, "input", None,
        "Audio to extract: a directory (searched recursively), a glob, or a "
        "CSV with columns path,labels[,split] (labels ';'-separated class "
        "names; relative paths are relative to the CSV).")
    _define_if_missing(
        flags.DEFINE_string, "output_dir", None,
        "Corpus directory to write shards and manifest.json to.")
    _define_if_missing(
        flags.DEFINE_integer, "num_shards", 8, "Number of TFRecord shards.",
        lower_bound=1)
    _define_if_missing(
        flags.DEFINE_integer, "workers", 0,
        "Worker processes; 0 uses every core.", lower_bound=0)
    _define_if_missing(
        flags.DEFINE_boolean, "strict", False,
        "Exit non-zero if any input file fails (default: only if none "
        "succeed).")
    _define_if_missing(
        flags.DEFINE_boolean, "pad_short", True,
        "Zero-pad clips shorter than one 0.96 s window to one window; "
        "--nopad_short drops them instead.")
    _define_if_missing(
        flags.DEFINE_string, "runner", "local",
        "'local' (multiprocessing on this machine) or an Apache Beam runner "
        "name (DirectRunner, DataflowRunner, FlinkRunner, SparkRunner, ...; "
        "needs pip install 'triplet-audio[beam]').")
    _define_if_missing(
        flags.DEFINE_list, "beam_pipeline_options", [],
        "Beam pipeline options for a Beam --runner, comma-separated, e.g. "
        "'--project=P,--region=R,--temp_location=gs://B/tmp,"
        "--setup_file=./setup.py'. Quote an item that holds a comma "
        "(CSV rules).")
    _define_if_missing(
        flags.DEFINE_string, "extensions", ",".join(audio_io.AUDIO_EXTENSIONS),
        "Comma-separated file extensions picked up from a directory input.")


# --------------------------------------------------------------- training
MODELS = constants.MODEL_NAMES


@_once
def define_train_flags():
    """Flags of bin/train (sampler flags: define_sampler_flags)."""
    _define_if_missing(
        flags.DEFINE_string, "train_data", None,
        "Training corpus: a corpus directory, a shard glob or "
        "comma-separated globs.")
    _define_model_dir()
    _define_if_missing(
        flags.DEFINE_enum, "model", "resnet50", MODELS, "Embedding network.")
    _define_if_missing(
        flags.DEFINE_integer, "embedding_size", 128, "Embedding dimension.",
        lower_bound=1)
    _define_if_missing(
        flags.DEFINE_integer, "batch_size", 192,
        "Global batch size in windows (3 per triplet, so a multiple of 3, and "
        "of 3 x the number of replicas).", lower_bound=3)
    _define_if_missing(
        flags.DEFINE_float, "margin", 0.2, "Triplet loss margin (delta).",
        lower_bound=0.0)
    _define_if_missing(
        flags.DEFINE_enum, "distance", "squared", ["squared", "euclidean"],
        "Distance of the triplet loss.")
    _define_if_missing(
        flags.DEFINE_enum, "optimizer", "adam", ["adam", "sgd", "adamw"],
        "Optimizer.")
    _define_if_missing(
        flags.DEFINE_float, "learning_rate", 1e-3, "Peak learning rate.",
        lower_bound=0.0)
    _define_if_missing(
        flags.DEFINE_enum, "lr_schedule", "cosine", ["constant", "cosine"],
        "Learning-rate schedule after warm-up.")
    _define_if_missing(
        flags.DEFINE_integer, "warmup_steps", 0, "Linear warm-up steps.",
        lower_bound=0)
    _define_if_missing(
        flags.DEFINE_float, "weight_decay", 0.0, "Weight decay (adamw only).",
        lower_bound=0.0)
    _define_if_missing(
        flags.DEFINE_integer, "steps", 10000, "Total training steps.",
        lower_bound=1)
    _define_if_missing(
        flags.DEFINE_integer, "checkpoint_every", 1000,
        "Save a checkpoint every N steps (and at exit).",
        lower_bound=1)
    _define_if_missing(
        flags.DEFINE_integer, "keep_checkpoints", 3, "Checkpoints kept.",
        lower_bound=1)
    _define_if_missing(
        flags.DEFINE_integer, "log_every", 50,
        "Console progress line / summaries every N steps.",
        lower_bound=1)
    _define_if_missing(
        flags.DEFINE_enum, "mixed_precision", "none", ["none", "bf16", "fp16"],
        "Mixed-precision policy; embeddings and loss stay "
        "float32.")
    _define_if_missing(
        flags.DEFINE_boolean, "jit_compile", False,
        "Compile the train step with XLA.")
    _define_if_missing(
        flags.DEFINE_enum, "strategy", "default",
        ["default", "mirrored", "multi_worker", "tpu"],
        "tf.distribute strategy: default (one device), mirrored (all local "
        "GPUs, or --cpu_replicas CPU devices), multi_worker (every worker "
        "runs the same command; the cluster comes from the TF_CONFIG "
        "environment variable), tpu (needs --tpu). --batch_size is the "
        "global batch, split evenly over the replicas. Under multi_worker "
        "and tpu a SIGTERM to any worker checkpoints every worker at the "
        "same step and stops them all (exit status 3).")
    _define_if_missing(
        flags.DEFINE_string, "tpu", None,
        "TPU for --strategy=tpu: 'local' on a TPU VM, else "
        "the TPU's name or grpc:// address.")
    _define_if_missing(
        flags.DEFINE_enum, "mining", "local", ["local", "global"],
        "Where negatives are mined with several replicas: local (in each "
        "replica's own share of the batch) or global (in the whole global "
        "batch: embeddings and labels are all-gathered each step; loss and "
        "gradients equal those of one device holding the global batch).")
    _define_if_missing(
        flags.DEFINE_integer, "cpu_replicas", 0,
        "With --strategy=mirrored: split the CPU into N logical devices and "
        "mirror over them (0: off), to try multi-replica training (e.g. "
        "--mining=global) on a machine without accelerators. It shares the "
        "same cores, so it is not faster.", lower_bound=0)
    _define_if_missing(
        flags.DEFINE_boolean, "skip_corrupt", False,
        "Skip corrupt shards (truncated) and records (checksum mismatch), "
        "each logged, instead of stopping with an error that names the "
        "shard.")
    define_tf_data_service_flag()


def _define_model_dir():
    # Shared by train and export; a process (e.g. a test) may define both.
    if "model_dir" not in FLAGS:
        _define_if_missing(
            flags.DEFINE_string, "model_dir", None,
            "Run directory: checkpoints, config.json, TensorBoard summaries.")


# --------------------------------------------------------- export / embed
@_once
def define_export_flags():
    """Flags of bin/export."""
    _define_model_dir()
    _define_if_missing(
        flags.DEFINE_string, "export_dir", None,
        "Directory to write the SavedModel, metadata.json and "
        "model.keras to.")
    _define_if_missing(
        flags.DEFINE_boolean, "overwrite", False,
        "Replace an existing export in --export_dir.")


@_once
def define_embed_flags():
    """Flags of bin/embed."""
    _define_if_missing(
        flags.DEFINE_string, "input", None,
        "(Required.) Corpus to embed: TFRecord shards (a corpus directory with "
        "manifest.json, a shard glob or comma-separated globs) or audio files "
        "(a directory searched recursively, a glob, or a CSV with columns "
        "path,labels[,split]).")
    _define_if_missing(
        flags.DEFINE_string, "output", None,
        "(Required.) Output .npz path (sharded as NAME-0000i-of-0000n.npz with "
        "--num_output_shards > 1).")
    _define_if_missing(
        flags.DEFINE_string, "saved_model", None,
        "Export directory written by bin/export. Exactly one "
        "of --saved_model and --representation.")
    _define_if_missing(
        flags.DEFINE_enum, "representation", None, ["logmel"],
        "Instead of --saved_model: write the log-mel baseline "
        "(flattened 96 x 64 windows, float16) in the same "
        "format.")
    _define_if_missing(
        flags.DEFINE_integer, "embed_batch_size", 512,
        "Windows per inference call.", lower_bound=1)
    _define_if_missing(
        flags.DEFINE_integer, "num_output_shards", 1,
        "Output .npz shards (a segment never spans two).",
        lower_bound=1)


@_once
def define_evaluate_flags():
    """Flags of bin/evaluate."""
    _define_if_missing(
        flags.DEFINE_string, "train", None,
        "(Required.) Embeddings of the labelled training "
        "segments (for the classifiers and few-shot draws): "
        "the --output PATH given to bin/embed, an .npz file, shard "
        "glob or directory.")
    _define_if_missing(
        flags.DEFINE_string, "eval", None,
        "(Required.) Embeddings of the held-out evaluation "
        "segments (QbE and classifier scoring), given as for --train.")
    _define_if_missing(
        flags.DEFINE_string, "output_dir", None,
        "(Required.) Directory for results.json, the Markdown table, plots "
        "and projector files.")
    _define_if_missing(
        flags.DEFINE_string, "name", None,
        "Name of the representation in the report (default: "
        "from the embeddings file).")
    _define_if_missing(
        flags.DEFINE_integer, "eval_seed", 0,
        "Seed of the QbE samples, classifier "
        "initialisation and few-shot draws.")
    _define_if_missing(
        flags.DEFINE_integer, "qbe_num_pos", 100,
        "QbE: segments sampled per class that have it.",
        lower_bound=1)
    _define_if_missing(
        flags.DEFINE_integer, "qbe_num_neg", 100,
        "QbE: segments sampled per class that do not have it.",
        lower_bound=1)
    _define_if_missing(
        flags.DEFINE_integer, "qbe_min_count", 0,
        "QbE: 0 is the paper's exact protocol (a class with fewer than "
        "--qbe_num_pos positives or --qbe_num_neg negatives is skipped); N > 0 "
        "keeps a class with at least N of each and uses all it has (small "
        "corpora).", lower_bound=0)
    _define_if_missing(
        flags.DEFINE_integer, "classifier_epochs", 10,
        "Training epochs of the 1x512 and 2x512 classifiers.",
        lower_bound=1)
    _define_if_missing(
        flags.DEFINE_integer, "fewshot_epochs", 30,
        "Training epochs of each few-shot classifier.",
        lower_bound=1)
    _define_if_missing(
        flags.DEFINE_integer, "fewshot_per_class", 20,
        "Few-shot: labelled segments per class per draw.",
        lower_bound=1)
    _define_if_missing(
        flags.DEFINE_integer, "fewshot_draws", 3,
        "Few-shot: number of random draws averaged.",
        lower_bound=1)


def export_args_from_flags():
    """Keyword arguments of `export.export_run` from the parsed flags."""
    return {"model_dir": FLAGS.model_dir, "export_dir": FLAGS.export_dir,
            "overwrite": FLAGS.overwrite}


# ------------------------------------------------------- synthetic corpus
def _define_if_missing(define, name, *args, **kwargs):
    # --output_dir, --workers and --seed also belong to other binaries' groups;
    # a process (e.g. a test) may define several groups.
    if name not in FLAGS:
        define(name, *args, **kwargs)


@_once
def define_corpus_flags():
    """Flags of bin/make_corpus."""
    _define_if_missing(
        flags.DEFINE_string, "output_dir", None,
        "Directory to write the corpus to: audio/{train,eval}/*.wav, "
        "labels.csv, train.csv, eval.csv and corpus.json.")
    _define_if_missing(
        flags.DEFINE_integer, "num_train", 240, "Training recordings.",
        lower_bound=0)
    _define_if_missing(
        flags.DEFINE_integer, "num_eval", 120, "Evaluation recordings.",
        lower_bound=0)
    _define_if_missing(
        flags.DEFINE_integer, "seed", 0,
        "Corpus seed; the same seed writes identical files.",
        lower_bound=0)
    _define_if_missing(
        flags.DEFINE_float, "duration_s", 10.0,
        "Length of every recording (s).")
    _define_if_missing(
        flags.DEFINE_integer, "num_classes", 0,
        "Use only the first N sound classes of the synthetic vocabulary; 0 "
        "uses all of them.", lower_bound=0)
    _define_if_missing(
        flags.DEFINE_integer, "workers", 1,
        "Worker processes; 0 uses every core.", lower_bound=0)


def corpus_config_from_flags():
    """Keyword arguments of `synthetic.generate_corpus` from the parsed flags.

    Returns:
      dict of the validated `synthetic.CorpusConfig` fields.

    Raises:
      ValueError: on a missing --output_dir or inconsistent values.
    """
    # Imported here so that binaries which never build a corpus do not load
    # NumPy and soundfile just to define their flags.
    import dataclasses  # pylint: disable=g-import-not-at-top
    from triplet_audio.demo import synthetic  # pylint: disable=g-import-not-at-top
    if not FLAGS.output_dir:
        raise ValueError("--output_dir is required")
    config = synthetic.CorpusConfig(
        out_dir=FLAGS.output_dir, num_train=FLAGS.num_train,
        num_eval=FLAGS.num_eval, seed=FLAGS.seed, duration_s=FLAGS.duration_s,
        num_classes=FLAGS.num_classes or None, workers=FLAGS.workers)
    return dataclasses.asdict(config)


# --------------------------------------------------------------- samplers
@_once
def define_sampler_flags():
    """Flags of the triplet samplers and the input pipeline (bin/train)."""
    # Defaults come from the config dataclass, their one home. Imported here:
    # pipeline imports this module for SAMPLERS.
    import dataclasses  # pylint: disable=g-import-not-at-top
    from triplet_audio.sampling import pipeline  # pylint: disable=g-import-not-at-top
    default = {f.name: f.default
               for f in dataclasses.fields(pipeline.SamplerConfig)}
    joint = ",".join("%s=%g" % kv
                     for kv in pipeline.SamplerConfig(
                         sampler="joint").joint_weights.items())
    _define_if_missing(
        flags.DEFINE_enum, "sampler", None, SAMPLERS,
        "Triplet sampler (paper section 3.2): noise, "
        "translation, mixing, proximity, supervised (topline) or "
        "joint (mixture of the unsupervised ones).")
    _define_if_missing(
        flags.DEFINE_float, "noise_sigma", default["noise_sigma"],
        "Gaussian-noise sampler: std of eps in "
        "x * (1 + |eps|).", lower_bound=0.0)
    _define_if_missing(
        flags.DEFINE_integer, "translation_max_shift",
        default["translation_max_shift"],
        "Translation sampler: largest frequency shift S in "
        "mel bins.", lower_bound=0)
    _define_if_missing(
        flags.DEFINE_float, "mixing_alpha", default["mixing_alpha"],
        "Mixing sampler: alpha in x_a + alpha * E(x_a) / E(x_n) "
        "* x_n.", lower_bound=0.0)
    _define_if_missing(
        flags.DEFINE_float, "proximity_dt", default["proximity_dt"],
        "Proximity sampler: anchor and positive start less than "
        "this many seconds apart ('inf': anywhere in the "
        "recording).")
    _define_if_missing(
        flags.DEFINE_string, "joint_weights", joint,
        "Joint sampler: comma-separated sampler=weight; "
        "unnamed samplers get 0.")
    _define_if_missing(
        flags.DEFINE_integer, "shuffle_buffer", default["shuffle_buffer"],
        "Windows held by the shuffle buffer of each input "
        "pipeline (~25 KB each; joint splits them among its "
        "samplers); records are shuffled in a buffer of "
        "shuffle_buffer / 32 (at most 256).", lower_bound=1)
    _define_if_missing(
        flags.DEFINE_enum, "class_sampling", default["class_sampling"],
        pipeline.class_index.CLASS_SAMPLING,
        "Supervised sampler: choose each triplet's class uniformly over "
        "classes (the paper) or in proportion to its windows.")
    # --seed is shared with bin/make_corpus's group; a process (e.g. a test)
    # may define both.
    _define_if_missing(
        flags.DEFINE_integer, "seed", 0,
        "Global seed: data order, sampler randomness and "
        "model initialisation.")


def sampler_config_from_flags():
    """Builds the validated `pipeline.SamplerConfig` from the sampler flags.

    Raises:
      ValueError: naming the flag when a value is missing or invalid.
    """
    # Imported here: pipeline imports this module for SAMPLERS.
    from triplet_audio.sampling import pipeline  # pylint: disable=g-import-not-at-top
    if FLAGS.sampler is None:
        raise ValueError("--sampler: required (one of %s)" %
                         ", ".join(SAMPLERS))
    return pipeline.SamplerConfig(
        sampler=FLAGS.sampler,
        noise_sigma=FLAGS.noise_sigma,
        translation_max_shift=FLAGS.translation_max_shift,
        mixing_alpha=FLAGS.mixing_alpha,
        proximity_dt=FLAGS.proximity_dt,
        joint_weights=pipeline.parse_joint_weights(FLAGS.joint_weights),
        shuffle_buffer=FLAGS.shuffle_buffer,
        class_sampling=FLAGS.class_sampling)


def extract_config_from_flags():
    """Builds the validated extraction config from the extract flags.

    Returns:
      `extract.ExtractConfig`.

    Raises:
      ValueError: naming the offending flag (config fields are named after
        the flags).
    """
    # Imported here: every binary imports this module, and only extraction
    # should pay for TensorFlow and the audio libraries.
    from triplet_audio.features import extract  # pylint: disable=g-import-not-at-top
    return extract.ExtractConfig(
        input=FLAGS.input,
        output_dir=FLAGS.output_dir,
        num_shards=FLAGS.num_shards,
        workers=FLAGS.workers,
        strict=FLAGS.strict,
        pad_short=FLAGS.pad_short,
        extensions=FLAGS.extensions,
        runner=FLAGS.runner,
        beam_pipeline_options=tuple(FLAGS.beam_pipeline_options))


# ------------------------------------------------------- embed / evaluate
def embed_args_from_flags():
    """Keyword arguments of `embed.embed_corpus` from the parsed flags.

    Raises:
      ValueError: naming the flag when a required one is missing or
        --saved_model / --representation are both or neither given.
    """
    for name in ("input", "output"):
        if not getattr(FLAGS, name):
            raise ValueError("--%s is required" % name)
    if bool(FLAGS.saved_model) == bool(FLAGS.representation):
        raise ValueError("give exactly one of --saved_model=DIR and "
                         "--representation=logmel (got %s)" %
                         ("both" if FLAGS.saved_model else "neither"))
    return {"input": FLAGS.input, "output": FLAGS.output,
            "saved_model": FLAGS.saved_model or None,
            "representation": FLAGS.representation or None,
            "batch_size": FLAGS.embed_batch_size,
            "num_output_shards": FLAGS.num_output_shards}


def evaluate_args_from_flags():
    """Keyword arguments of `report.evaluate_to_dir` from the parsed flags.

    Returns:
      dict with train_path, eval_path, output_dir, name and config (a
      validated `metrics.EvaluationConfig`).

    Raises:
      ValueError: naming the flag when a required one is missing or a value
        is invalid.
    """
    for name in ("train", "eval", "output_dir"):
        if not getattr(FLAGS, name):
            raise ValueError("--%s is required" % name)
    # Imported here: evaluation loads TensorFlow, Keras and scikit-learn,
    # which --help and flag errors should not wait for.
    from triplet_audio.evaluation import metrics  # pylint: disable=g-import-not-at-top
    config = metrics.EvaluationConfig(
        seed=FLAGS.eval_seed,
        qbe_num_pos=FLAGS.qbe_num_pos,
        qbe_num_neg=FLAGS.qbe_num_neg,
        qbe_min_count=FLAGS.qbe_min_count or None,
        epochs=FLAGS.classifier_epochs,
        fewshot_epochs=FLAGS.fewshot_epochs,
        fewshot_per_class=FLAGS.fewshot_per_class,
        fewshot_draws=FLAGS.fewshot_draws)
    return {"train_path": FLAGS.train, "eval_path": FLAGS.eval,
            "output_dir": FLAGS.output_dir, "name": FLAGS.name,
            "config": config}


def train_config_from_flags():
    """Builds the validated `trainer.TrainConfig` from the parsed flags.

    Raises:
      ValueError: naming the flag when a value is missing or invalid.
    """
    from triplet_audio.training import trainer  # pylint: disable=g-import-not-at-top
    for name in ("train_data", "model_dir"):
        if not getattr(FLAGS, name):
            raise ValueError("--%s: required" % name)
    config = trainer.TrainConfig(
        train_data=FLAGS.train_data,
        model_dir=FLAGS.model_dir,
        sampler=sampler_config_from_flags(),
        model=FLAGS.model,
        embedding_size=FLAGS.embedding_size,
        batch_size=FLAGS.batch_size,
        margin=FLAGS.margin,
        distance=FLAGS.distance,
        optimizer=FLAGS.optimizer,
        learning_rate=FLAGS.learning_rate,
        lr_schedule=FLAGS.lr_schedule,
        warmup_steps=FLAGS.warmup_steps,
        weight_decay=FLAGS.weight_decay,
        steps=FLAGS.steps,
        checkpoint_every=FLAGS.checkpoint_every,
        keep_checkpoints=FLAGS.keep_checkpoints,
        log_every=FLAGS.log_every,
        mixed_precision=FLAGS.mixed_precision,
        jit_compile=FLAGS.jit_compile,
        strategy=FLAGS.strategy,
        tpu=FLAGS.tpu,
        mining=FLAGS.mining,
        cpu_replicas=FLAGS.cpu_replicas,
        seed=FLAGS.seed,
        skip_corrupt=FLAGS.skip_corrupt,
        **tf_data_service_args_from_flags())
    return config.validate()


# ------------------------------------------------------------------- demo
@_once
def define_demo_flags():
    """Flags of bin/demo (sizes and evaluation settings of the demo)."""
    # Defaults come from the config dataclass, their one home. demo is light
    # (no TensorFlow): it runs the other binaries as subprocesses.
    import dataclasses  # pylint: disable=g-import-not-at-top
    from triplet_audio.demo import runner  # pylint: disable=g-import-not-at-top
    default = {f.name: f.default for f in dataclasses.fields(runner.DemoConfig)
               if f.default is not dataclasses.MISSING}
    # Names shared with bin/make_corpus, bin/extract_features and
    # bin/evaluate mean the same there and are passed on unchanged; a process
    # (e.g. a test) may define several groups.
    _define_if_missing(
        flags.DEFINE_string, "output_dir", None,
        "(Required.) Run directory of the demo: corpus, features, runs, "
        "exports, embeddings, evaluations, logs and the final report.")
    _define_if_missing(
        flags.DEFINE_list, "samplers", list(default["samplers"]),
        "Training runs, comma-separated, of: %s. 'supervised' is the "
        "topline of the recovery columns; the log-mel baseline is always "
        "evaluated." % ", ".join(runner.ALL_RUNS))
    _define_if_missing(
        flags.DEFINE_string, "train_flagfile", default["train_flagfile"],
        "Flag file of every bin/train run (model, steps, batch, optimizer); "
        "relative paths are relative to the working directory.")
    _define_if_missing(
        flags.DEFINE_multi_string, "train_flag", list(default["train_flags"]),
        "Extra flag for every bin/train run, after --train_flagfile so it "
        "wins (repeatable), e.g. --train_flag=--steps=20000 "
        "--train_flag=--model=resnet50.")
    _define_if_missing(
        flags.DEFINE_integer, "num_train",
        default["num_train"], "Training recordings.",
        lower_bound=0)
    _define_if_missing(
        flags.DEFINE_integer, "num_eval", default["num_eval"],
        "Evaluation recordings.", lower_bound=0)
    _define_if_missing(
        flags.DEFINE_float, "duration_s",
        default["duration_s"],
        "Length of every recording (s).")
    _define_if_missing(
        flags.DEFINE_integer, "num_classes", default["num_classes"],
        "Use only the first N sound classes of the synthetic vocabulary; 0 "
        "uses all of them.", lower_bound=0)
    _define_if_missing(
        flags.DEFINE_integer, "seed", default["seed"],
        "Corpus seed (training seeds come from the training "
        "flag file).", lower_bound=0)
    _define_if_missing(
        flags.DEFINE_integer, "num_shards",
        default["num_shards"],
        "TFRecord shards of each extracted split.",
        lower_bound=1)
    _define_if_missing(
        flags.DEFINE_integer, "workers", default["workers"],
        "Worker processes of corpus generation and feature "
        "extraction; 0 uses every core.", lower_bound=0)
    _define_if_missing(
        flags.DEFINE_integer, "eval_seed",
        default["eval_seed"],
        "Seed of the QbE samples, classifier initialisation "
        "and few-shot draws.")
    _define_if_missing(
        flags.DEFINE_integer, "qbe_num_pos",
        default["qbe_num_pos"],
        "QbE: segments sampled per class that have it.",
        lower_bound=1)
    _define_if_missing(
        flags.DEFINE_integer, "qbe_num_neg",
        default["qbe_num_neg"],
        "QbE: segments sampled per class that do not have it.",
        lower_bound=1)
    _define_if_missing(
        flags.DEFINE_integer, "qbe_min_count", default["qbe_min_count"],
        "QbE: 0 is the paper's exact protocol; N > 0 keeps a class with at "
        "least N positives and negatives and uses all it has (small "
        "corpora).", lower_bound=0)
    _define_if_missing(
        flags.DEFINE_integer, "classifier_epochs",
        default["classifier_epochs"],
        "Training epochs of the 1x512 and 2x512 classifiers.",
        lower_bound=1)
    _define_if_missing(
        flags.DEFINE_integer, "fewshot_epochs",
        default["fewshot_epochs"],
        "Training epochs of each few-shot classifier.",
        lower_bound=1)
    _define_if_missing(
        flags.DEFINE_integer, "fewshot_per_class",
        default["fewshot_per_class"],
        "Few-shot: labelled segments per class per draw.",
        lower_bound=1)
    _define_if_missing(
        flags.DEFINE_integer, "fewshot_draws",
        default["fewshot_draws"],
        "Few-shot: number of random draws averaged.",
        lower_bound=1)
    _define_if_missing(
        flags.DEFINE_float, "progress_every", default["progress_every"],
        "Seconds between progress lines of a running stage.",
        lower_bound=1.0)
    _define_if_missing(
        flags.DEFINE_integer, "jobs", default["jobs"],
        "Stages run at the same time, each as soon as its inputs are "
        "complete; 2 keeps both cores of a small CPU busy while one stage "
        "waits on Python or start-up.", lower_bound=1)
    _define_if_missing(
        flags.DEFINE_boolean, "dry_run", default["dry_run"],
        "Only list the stages and their commands; run and "
        "write nothing.")


def demo_config_from_flags():
    """Builds the validated `runner.DemoConfig` from the parsed flags.

    Raises:
      ValueError: naming the flag when a value is missing or invalid.
    """
    from triplet_audio.demo import runner  # pylint: disable=g-import-not-at-top
    if not FLAGS.output_dir:
        raise ValueError("--output_dir is required")
    config = runner.DemoConfig(
        output_dir=FLAGS.output_dir,
        samplers=tuple(FLAGS.samplers),
        train_flagfile=FLAGS.train_flagfile,
        train_flags=tuple(FLAGS.train_flag),
        num_train=FLAGS.num_train,
        num_eval=FLAGS.num_eval,
        duration_s=FLAGS.duration_s,
        num_classes=FLAGS.num_classes,
        seed=FLAGS.seed,
        num_shards=FLAGS.num_shards,
        workers=FLAGS.workers,
        eval_seed=FLAGS.eval_seed,
        qbe_num_pos=FLAGS.qbe_num_pos,
        qbe_num_neg=FLAGS.qbe_num_neg,
        qbe_min_count=FLAGS.qbe_min_count,
        classifier_epochs=FLAGS.classifier_epochs,
        fewshot_epochs=FLAGS.fewshot_epochs,
        fewshot_per_class=FLAGS.fewshot_per_class,
        fewshot_draws=FLAGS.fewshot_draws,
        progress_every=FLAGS.progress_every,
        jobs=FLAGS.jobs,
        dry_run=FLAGS.dry_run)
    return config.validate()


# ------------------------------------------------------- triplet inspection
@_once
def define_inspect_flags():
    """Flags of bin/inspect_triplets (plus the sampler flags)."""
    _define_if_missing(
        flags.DEFINE_string, "train_data", None,
        "Corpus to sample from: directory, glob or "
        "comma-separated globs.")
    _define_if_missing(
        flags.DEFINE_string, "output", None,
        "PNG file to write.")
    _define_if_missing(
        flags.DEFINE_integer, "num_triplets", 6,
        "Triplets (rows) in the grid.",
        lower_bound=1)


def inspect_args_from_flags():
    """Keyword arguments of `inspect_triplets.inspect` from the flags."""
    for name in ("train_data", "output"):
        if not getattr(FLAGS, name):
            raise ValueError("--%s: required" % name)
    return {"file_pattern": FLAGS.train_data, "output": FLAGS.output,
            "sampler_config": sampler_config_from_flags(),
            "num_triplets": FLAGS.num_triplets, "seed": FLAGS.seed}


# ------------------------------------------------------- tf.data service
@_once
def define_data_service_flags():
    """Flags of bin/data_service (a tf.data service dispatcher or worker)."""
    _define_if_missing(
        flags.DEFINE_enum, "role", None, ["dispatcher", "worker", "both"],
        "(Required.) What this process serves: the dispatcher that trainers "
        "and workers connect to, a worker that runs input pipelines, or both "
        "(a dispatcher and one worker, for a single machine).")
    _define_if_missing(
        flags.DEFINE_integer, "port", 0,
        "Port of the dispatcher (--role=dispatcher or both) or of the worker "
        "(--role=worker); 0 picks a free port. The bound address is logged.",
        lower_bound=0, upper_bound=65535)
    _define_if_missing(
        flags.DEFINE_string, "dispatcher", None,
        "host:port of the dispatcher this worker registers with "
        "(--role=worker).")
    _define_if_missing(
        flags.DEFINE_integer, "worker_port", 0,
        "Port of the worker with --role=both; 0 picks a "
        "free port.", lower_bound=0, upper_bound=65535)
    _define_if_missing(
        flags.DEFINE_string, "worker_host", None,
        "Host name or address that trainers use to reach this worker; the "
        "dispatcher hands it to them. Default: this machine's host name "
        "(socket.gethostname()). Use localhost when everything runs on one "
        "machine.")
    _define_if_missing(
        flags.DEFINE_string, "work_dir", None,
        "Dispatcher state directory (a path every restart of the dispatcher "
        "sees; any file system TensorFlow reads). Required with "
        "--fault_tolerant.")
    _define_if_missing(
        flags.DEFINE_boolean, "fault_tolerant", False,
        "Journal the dispatcher's state (registered pipelines, jobs, handed "
        "out streams) to --work_dir before answering, so a restarted "
        "dispatcher resumes its jobs.")


@_once
def define_tf_data_service_flag():
    """Flags of a trainer reading its input from a tf.data service."""
    # The default's one home is the library; imported here so that binaries
    # without a trainer do not load TensorFlow to define their flags.
    from triplet_audio.sampling import data_service  # pylint: disable=g-import-not-at-top
    _define_if_missing(
        flags.DEFINE_string, "tf_data_service", None,
        "grpc://host:port of a tf.data service dispatcher (bin/data_service) "
        "whose workers run the input pipeline; default: run it in this "
        "process. The workers must read --train_data at the same path.")
    _define_if_missing(
        flags.DEFINE_integer, "tf_data_service_streams",
        data_service.DEFAULT_NUM_STREAMS,
        "With --tf_data_service: independent pipeline streams (one seed "
        "each) offered to the workers, so the most workers that contribute, "
        "restarted ones included. The pipeline is built this many times at "
        "start-up.", lower_bound=1)


def data_service_args_from_flags():
    """Keyword arguments of `data_service.serve` from the parsed flags.

    Raises:
      ValueError: naming the flag when a required one is missing or flags
        contradict each other.
    """
    if FLAGS.role is None:
        raise ValueError("--role: required (dispatcher, worker or both)")
    if FLAGS.role == "worker" and not FLAGS.dispatcher:
        raise ValueError("--dispatcher: required with --role=worker "
                         "(host:port of the dispatcher)")
    if FLAGS.role != "worker" and FLAGS.dispatcher:
        raise ValueError("--dispatcher: only with --role=worker (got "
                         "--role=%s)" % FLAGS.role)
    if FLAGS.fault_tolerant and not FLAGS.work_dir:
        raise ValueError("--work_dir: required with --fault_tolerant")
    worker_host = FLAGS.worker_host
    if worker_host is None and FLAGS.role != "dispatcher":
        import socket  # pylint: disable=g-import-not-at-top
        worker_host = socket.gethostname()
    return {"role": FLAGS.role, "port": FLAGS.port,
            "dispatcher_address": FLAGS.dispatcher,
            "worker_port": FLAGS.worker_port, "worker_host": worker_host,
            "work_dir": FLAGS.work_dir, "fault_tolerant": FLAGS.fault_tolerant}


def tf_data_service_args_from_flags():
    """The `trainer.TrainConfig` fields of the tf.data service flags.

    Returns:
      dict with tf_data_service (a validated "grpc://host:port", or None) and
      tf_data_service_streams.

    Raises:
      ValueError: naming --tf_data_service on a malformed address.
    """
    address = FLAGS.tf_data_service or None
    if address is not None:
        from triplet_audio.sampling import data_service  # pylint: disable=g-import-not-at-top
        address = data_service.parse_service_address(address)
    return {"tf_data_service": address,
            "tf_data_service_streams": FLAGS.tf_data_service_streams}
