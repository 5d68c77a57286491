"""Every command-line flag of every binary, defined once.

Binaries call the `define_*` functions they need, then hand `absl.flags.FLAGS`
to one library entry point. Flags are read one way only: `FLAGS.name` inside
the `*_config_from_flags` functions, which turn them into validated config
dataclasses. Library code never reads flags.

Flag names follow the command-line contract in ../shared/DESIGN.md.
"""

from absl import flags

FLAGS = flags.FLAGS

SAMPLERS = ("noise", "translation", "mixing", "proximity", "supervised",
            "joint")
UNSUPERVISED_SAMPLERS = ("noise", "translation", "mixing", "proximity")


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
    flags.DEFINE_string(
        "input", None,
        "Audio to extract: a directory (searched recursively), a glob, or a CSV "
        "with columns path,labels[,split] (labels ';'-separated class names; "
        "relative paths are relative to the CSV).")
    flags.DEFINE_string("output_dir", None,
                        "Corpus directory to write shards and manifest.json to.")
    flags.DEFINE_integer("num_shards", 8, "Number of TFRecord shards.",
                         lower_bound=1)
    flags.DEFINE_integer("workers", 0,
                         "Worker processes; 0 uses every core.", lower_bound=0)
    flags.DEFINE_boolean(
        "strict", False,
        "Exit non-zero if any input file fails (default: only if none succeed).")
    flags.DEFINE_boolean(
        "pad_short", True,
        "Zero-pad clips shorter than one 0.96 s window to one window; "
        "--nopad_short drops them instead.")
    flags.DEFINE_string(
        "runner", "local",
        "'local' (multiprocessing on this machine) or an Apache Beam runner "
        "name (DirectRunner, DataflowRunner, ...).")
    flags.DEFINE_string(
        "extensions", "wav,flac,ogg,oga,mp3,aiff,aif,au,caf,w64,rf64",
        "Comma-separated file extensions picked up from a directory input.")


# --------------------------------------------------------------- training
MODELS = ("resnet50", "resnet18", "small")


@_once
def define_train_flags():
    """Flags of bin/train (the sampler flags come from define_sampler_flags)."""
    flags.DEFINE_string("train_data", None,
                        "Training corpus: a corpus directory, a shard glob or "
                        "comma-separated globs.")
    flags.DEFINE_string("model_dir", None,
                        "Run directory: checkpoints, config.json, summaries.")
    flags.DEFINE_enum("model", "resnet50", MODELS, "Embedding network.")
    flags.DEFINE_integer("embedding_size", 128, "Embedding dimension.",
                         lower_bound=1)
    flags.DEFINE_integer(
        "batch_size", 192,
        "Global batch size in windows (3 per triplet, so a multiple of 3, and "
        "of 3 x the number of replicas).", lower_bound=3)
    flags.DEFINE_float("margin", 0.2, "Triplet loss margin (delta).",
                       lower_bound=0.0)
    flags.DEFINE_enum("distance", "squared", ["squared", "euclidean"],
                      "Distance of the triplet loss.")
    flags.DEFINE_enum("optimizer", "adam", ["adam", "sgd", "adamw"],
                      "Optimizer.")
    flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate.",
                       lower_bound=0.0)
    flags.DEFINE_enum("lr_schedule", "cosine", ["constant", "cosine"],
                      "Learning-rate schedule after warm-up.")
    flags.DEFINE_integer("warmup_steps", 0, "Linear warm-up steps.",
                         lower_bound=0)
    flags.DEFINE_float("weight_decay", 0.0, "Weight decay (adamw only).",
                       lower_bound=0.0)
    flags.DEFINE_integer("steps", 10000, "Total training steps.",
                         lower_bound=1)
    flags.DEFINE_integer("checkpoint_every", 1000,
                         "Save a checkpoint every N steps (and at exit).",
                         lower_bound=1)
    flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept.",
                         lower_bound=1)
    flags.DEFINE_integer("log_every", 50,
                         "Console progress line / summaries every N steps.",
                         lower_bound=1)
    flags.DEFINE_enum("mixed_precision", "none", ["none", "bf16", "fp16"],
                      "Mixed-precision policy; embeddings and loss stay "
                      "float32.")
    flags.DEFINE_boolean("jit_compile", False,
                         "Compile the train step with XLA.")
    flags.DEFINE_enum(
        "strategy", "default", ["default", "mirrored", "multi_worker", "tpu"],
        "tf.distribute strategy: default (one device), mirrored (all local "
        "GPUs), multi_worker (cluster from TF_CONFIG), tpu (needs --tpu).")
    flags.DEFINE_string("tpu", None,
                        "TPU name or grpc:// address for --strategy=tpu.")
    flags.DEFINE_boolean("skip_corrupt", False,
                         "Skip corrupt shards/records (with a warning) instead "
                         "of stopping.")
