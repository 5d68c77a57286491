"""Every command-line flag of every binary, defined once.

Binaries call the `define_*` functions they need, then hand `absl.flags.FLAGS`
to one library entry point. Flags are read one way only: `FLAGS.name` inside
the `*_config_from_flags` functions, which turn them into validated config
dataclasses. Library code never reads flags.

Flag names follow the command-line contract in ../shared/DESIGN.md.
"""

from absl import flags

from triplet_audio.config import corpus as corpus_config
from triplet_audio.config import demo as demo_config
from triplet_audio.config import evaluation as eval_config
from triplet_audio.config import extract as extract_config
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
    """Flags of bin/extract_features: `ExtractConfig`'s."""
    fields.define_flags(extract_config.ExtractConfig)


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
    # --window_hop_seconds, --tflite, --tflite_variants: ServingConfig's.
    from triplet_audio.config import serving as serving_config  # pylint: disable=g-import-not-at-top
    fields.define_flags(serving_config.ServingConfig)


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
    # The same flag as bin/extract_features' (ExtractConfig's field).
    fields.define_flags(extract_config.ExtractConfig, only=("input_format",))
    # The same flag as bin/export's (ServingConfig's field).
    from triplet_audio.config import serving as serving_config  # pylint: disable=g-import-not-at-top
    fields.define_flags(serving_config.ServingConfig,
                        only=("window_hop_seconds",))


@_once
def define_evaluate_flags():
    """Flags of bin/evaluate: the paths, and `EvaluationConfig`'s settings."""
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
    # --eval_seed, --qbe_*, --classifier_epochs, --fewshot_*: defaults, help
    # and bounds are the config's.
    fields.define_flags(eval_config.EvaluationConfig)


def export_args_from_flags():
    """Keyword arguments of `export.export_run` from the parsed flags.

    Raises:
      ValueError: naming the flag of an invalid hop or TFLite variant.
    """
    from triplet_audio.config import serving as serving_config  # pylint: disable=g-import-not-at-top
    config = fields.config_from_flags(serving_config.ServingConfig)
    return {"model_dir": FLAGS.model_dir, "export_dir": FLAGS.export_dir,
            "overwrite": FLAGS.overwrite,
            "window_hop_seconds": config.window_hop_seconds,
            "tflite_variants": config.written_tflite_variants}


# ------------------------------------------------------ shipped classifier
@_once
def define_classifier_flags():
    """Flags of bin/train_classifier: `ClassifierExportConfig`'s, the
    linear probe's settings (EvaluationConfig's) and --input_format."""
    from triplet_audio.config import classifier as classifier_config  # pylint: disable=g-import-not-at-top
    fields.define_flags(classifier_config.ClassifierExportConfig)
    fields.define_flags(eval_config.EvaluationConfig, only=(
        "seed", "probe_l2", "probe_max_iter", "probe_val_fraction"))
    fields.define_flags(extract_config.ExtractConfig, only=("input_format",))


def classifier_args_from_flags():
    """Keyword arguments of `classifier.train_and_export` from the flags.

    Raises:
      ValueError: naming the flag that is missing or invalid.
    """
    from triplet_audio.config import classifier as classifier_config  # pylint: disable=g-import-not-at-top
    return {"config": fields.config_from_flags(
                classifier_config.ClassifierExportConfig),
            "probe_config": eval_config.EvaluationConfig(
                seed=FLAGS.eval_seed, probe_l2=tuple(FLAGS.probe_l2),
                probe_max_iter=FLAGS.probe_max_iter,
                probe_val_fraction=FLAGS.probe_val_fraction),
            "input_format": FLAGS.input_format}


# ------------------------------------------------------- synthetic corpus
def _define_if_missing(define, name, *args, **kwargs):
    # --output_dir, --workers and --seed also belong to other binaries' groups;
    # a process (e.g. a test) may define several groups.
    if name not in FLAGS:
        define(name, *args, **kwargs)


@_once
def define_corpus_flags():
    """Flags of bin/make_corpus: `CorpusConfig`'s settings."""
    # --output_dir, --workers and --seed are shared with other groups; a
    # process (e.g. a test) may define several (the first definition wins).
    fields.define_flags(corpus_config.CorpusConfig)


def corpus_config_from_flags():
    """Keyword arguments of `synthetic.generate_corpus` from the parsed flags.

    Returns:
      dict of the validated `CorpusConfig` fields.

    Raises:
      ValueError: on a missing --output_dir or inconsistent values.
    """
    import dataclasses  # pylint: disable=g-import-not-at-top
    config = fields.config_from_flags(corpus_config.CorpusConfig)
    return dataclasses.asdict(config.require_out_dir())


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
    """Builds the validated `ExtractConfig` from the parsed flags.

    Raises:
      ValueError: naming the flag of an invalid value.
    """
    return fields.config_from_flags(extract_config.ExtractConfig)


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
            "num_output_shards": FLAGS.num_output_shards,
            "input_format": FLAGS.input_format,
            "window_hop_seconds": _serving_config().window_hop_seconds}


def _serving_config():
    # bin/embed's part of ServingConfig: the hop (the TFLite fields are
    # bin/export's).
    from triplet_audio.config import serving as serving_config  # pylint: disable=g-import-not-at-top
    return fields.config_from_flags(serving_config.ServingConfig,
                                    exclude=("tflite", "tflite_variants"))


def evaluate_args_from_flags():
    """Keyword arguments of `report.evaluate_to_dir` from the parsed flags.

    Returns:
      dict with train_path, eval_path, output_dir, name and config (a
      validated `EvaluationConfig`).

    Raises:
      ValueError: naming the flag when a required one is missing or a value
        is invalid.
    """
    config = fields.config_from_flags(eval_config.EvaluationConfig)
    # The linear probe alone can read one file holding the whole dataset.
    optional = ("eval",) if config.protocol == eval_config.LINEAR_PROBE else ()
    for name in ("train", "eval", "output_dir"):
        if not getattr(FLAGS, name) and name not in optional:
            raise ValueError("--%s is required" % name)
    return {"train_path": FLAGS.train, "eval_path": FLAGS.eval or None,
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
    """Flags of bin/demo: `DemoConfig`'s, its corpus and evaluation parts'
    included (the flags of bin/make_corpus and bin/evaluate, unchanged)."""
    # demo is light (no TensorFlow): it runs the other binaries as
    # subprocesses. Names shared with other groups mean the same there; a
    # process (e.g. a test) may define several groups.
    fields.define_flags(demo_config.DemoConfig,
                        exclude=demo_config.FLAG_EXCLUDE)
    # Repeatable, which fields does not define.
    _define_if_missing(
        flags.DEFINE_multi_string, "train_flag",
        list(demo_config.DemoConfig().train_flags),
        fields.help_of(demo_config.DemoConfig, "train_flags"))


def demo_config_from_flags():
    """Builds the validated `DemoConfig` from the parsed flags.

    Raises:
      ValueError: naming the flag when a value is missing or invalid.
    """
    if not FLAGS.output_dir:
        raise ValueError("--output_dir is required")
    config = fields.config_from_flags(
        demo_config.DemoConfig, exclude=demo_config.FLAG_EXCLUDE,
        train_flags=tuple(FLAGS.train_flag))
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


# ------------------------------------------------------------ sound search
@_once
def define_index_flags():
    """Flags of bin/index: `config.search.IndexConfig`'s."""
    from triplet_audio.config import search as search_config  # pylint: disable=g-import-not-at-top
    fields.define_flags(search_config.IndexConfig)


def index_config_from_flags():
    """Builds the validated `IndexConfig` from the parsed flags.

    Raises:
      ValueError: naming the flag that is missing or invalid.
    """
    from triplet_audio.config import search as search_config  # pylint: disable=g-import-not-at-top
    return fields.config_from_flags(
        search_config.IndexConfig).require_inputs()


@_once
def define_search_flags():
    """Flags of bin/search: `SearchConfig`'s, and --saved_model."""
    from triplet_audio.config import search as search_config  # pylint: disable=g-import-not-at-top
    fields.define_flags(search_config.SearchConfig)
    fields.define_flags(search_config.IndexConfig, only=("saved_model",))


def search_config_from_flags():
    """Builds the validated `SearchConfig` from the parsed flags.

    Raises:
      ValueError: naming the flag that is missing or invalid.
    """
    from triplet_audio.config import search as search_config  # pylint: disable=g-import-not-at-top
    return fields.config_from_flags(
        search_config.SearchConfig,
        saved_model=FLAGS.saved_model or None).require_query()
