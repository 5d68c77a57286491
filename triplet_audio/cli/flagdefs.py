"""Every command-line flag of every binary, defined once.

Binaries call the `define_*` functions they need, then hand `absl.flags.FLAGS`
to one library entry point. Flags are read one way only: `FLAGS.name` inside
the `*_config_from_flags` functions, which turn them into validated config
dataclasses. Library code never reads flags.

Flag names follow the command-line contract in ../shared/DESIGN.md.
"""

from absl import flags

from triplet_audio.features import audio_io
from triplet_audio.config import fields
from triplet_audio.config import options
from triplet_audio.config import sampling as sampling_config
from triplet_audio.config import service as service_config
from triplet_audio.config import training as train_config

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
@_once
def define_train_flags():
    """Flags of bin/train: `TrainConfig`'s, its sampler part included."""
    fields.define_flags(train_config.TrainConfig)


def _define_model_dir():
    # Shared by train and export; a process (e.g. a test) may define both.
    fields.define_flags(train_config.TrainConfig, only=("model_dir",))


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
    fields.define_flags(sampling_config.SamplerConfig)
    # --seed is shared with bin/make_corpus's group; a process (e.g. a test)
    # may define both.
    _define_if_missing(
        flags.DEFINE_integer, "seed", 0,
        "Global seed: data order, sampler randomness and "
        "model initialisation.")


def sampler_config_from_flags():
    """Builds the validated `SamplerConfig` from the sampler flags.

    Raises:
      ValueError: naming the flag when a value is missing or invalid.
    """
    return fields.config_from_flags(sampling_config.SamplerConfig)


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
    """Builds the validated `TrainConfig` from the parsed flags.

    Raises:
      ValueError: naming the flag when a value is missing or invalid.
    """
    return fields.config_from_flags(train_config.TrainConfig).validate()


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


_SERVICE_FIELDS = ("tf_data_service", "tf_data_service_streams")


@_once
def define_tf_data_service_flag():
    """Flags of a trainer reading its input from a tf.data service."""
    fields.define_flags(train_config.TrainConfig, only=_SERVICE_FIELDS)


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
    """The `TrainConfig` fields of the tf.data service flags.

    Returns:
      dict with tf_data_service (a validated "grpc://host:port", or None) and
      tf_data_service_streams.

    Raises:
      ValueError: naming --tf_data_service on a malformed address.
    """
    address = FLAGS.tf_data_service or None
    if address is not None:
        address = service_config.parse_service_address(address)
    return {"tf_data_service": address,
            "tf_data_service_streams": FLAGS.tf_data_service_streams}
